"""Building a run from its config and running it: the functions the CLI and notebooks call.

    from btc_quant.core.run import backtest
    result = backtest(["strategy=sma_cross", "data.start=2022-01-10"])
    result.metrics["sharpe"], result.equity.plot()
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .config import RunConfig, format_duration, load_run_config
from .data import SAMPLE, BarArrays, ms_to_iso, read_bars_file, timeframe_ms
from .engine import Engine, RunInfo, RunResult
from .errors import DataError
from .instruments import instrument_for
from .paths import data_dir
from .plugins import PluginManager, load_plugins
from .runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class LoadedBars:
    bars: BarArrays
    source: str
    notes: list[str] = field(default_factory=list)


def _ms(value) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def load_bars(config: RunConfig, runtime: Runtime) -> LoadedBars:
    """Bars for the run: ``data.file`` if set, else the store, else the bundled sample (with a note)."""
    start, end = _ms(config.data.start), _ms(config.data.end)
    what = f"{config.exchange.name} {config.symbol} {config.timeframe}"
    rng = f"{config.data.start or 'start'} .. {config.data.end or 'end'}"
    notes: list[str] = []
    if config.data.file is not None:
        bars = read_bars_file(config.data.file).between(start, end)
        source = str(config.data.file)
        if len(bars) == 0:
            raise DataError(f"{source} has no bars in {rng}")
    else:
        bars, source = None, ""
        if config.store.name in runtime.registry.names("store"):
            bars = runtime.store().read_bars(config.exchange.name, config.symbol, config.timeframe, start, end)
            source = f"store {config.store.name}"
        if bars is None or len(bars) == 0:
            if (config.timeframe, config.symbol.split(":")[0]) != (SAMPLE.timeframe, SAMPLE.symbol.split(":")[0]):
                raise DataError(
                    f"no {what} bars stored for {rng}",
                    hint=f"load some: quant data fetch exchange={config.exchange.name} symbol={config.symbol} "
                    f"timeframe={config.timeframe}, or quant data import FILE",
                )
            bars = read_bars_file(SAMPLE.path).between(start, end)
            if len(bars) == 0:
                raise DataError(
                    f"no {what} bars stored for {rng}, and the bundled sample "
                    f"({ms_to_iso(read_bars_file(SAMPLE.path).start_ms)} .. {ms_to_iso(read_bars_file(SAMPLE.path).end_ms)}) "
                    "does not cover it",
                    hint="load data with quant data fetch or quant data import",
                )
            source = f"bundled sample {SAMPLE.file}"
            notes.append(
                f"the store has no {what} bars for {rng}; using the bundled sample {SAMPLE.path.name} "
                f"({ms_to_iso(bars.start_ms)} .. {ms_to_iso(bars.end_ms)} UTC, {len(bars)} bars): {SAMPLE.provenance}"
            )
    max_gap = int(config.data.max_gap.total_seconds() * 1000)
    pieces = bars.stretches(max(max_gap, timeframe_ms(config.timeframe)))
    if len(pieces) > 1:
        listing = ", ".join(f"{ms_to_iso(bars.ts[a])}..{ms_to_iso(bars.ts[b - 1])}" for a, b in pieces[:4])
        more = f" and {len(pieces) - 4} more" if len(pieces) > 4 else ""
        raise DataError(
            f"{source}: the bars for {rng} are {len(pieces)} separate stretches ({listing}{more}); "
            f"a run never spans a gap longer than data.max_gap ({format_duration(config.data.max_gap)})",
            hint="pick one stretch with data.start/data.end",
        )
    return LoadedBars(bars, source, notes)


def build_runtime(config: RunConfig, plugins: PluginManager, mode: str = "backtest") -> Runtime:
    instrument = instrument_for(config.exchange.name, config.symbol, config.instrument)
    return Runtime(config=config, plugins=plugins, instrument=instrument, data_dir=data_dir(), mode=mode)


def build_engine(config: RunConfig, runtime: Runtime, *, mode: str = "backtest") -> Engine:
    """Strategy, broker and risk checks from the registry, wired into an :class:`Engine`."""
    registry = runtime.registry
    strategy_reg = registry.get("strategy", config.strategy.name, key="strategy")
    strategy = strategy_reg.factory(config.strategy.config)
    broker_reg = registry.get("broker", config.broker.name, key="broker")
    broker = broker_reg.factory(config.broker.config, runtime)
    checks = []
    for choice in config.risk.checks:
        reg = registry.get("risk_check", choice.name, key=f"risk.{choice.name}")
        checks.append((choice.name, reg.factory(choice.config)))
    info = RunInfo(
        run_id=uuid.uuid4().hex[:12],
        mode=mode,
        strategy=config.strategy.name,
        broker=config.broker.name,
        instrument=runtime.instrument,
        config=config,
    )
    return Engine(strategy, broker, plugins=runtime.plugins, instrument=runtime.instrument, risk_checks=checks, info=info)


def run_engine(engine: Engine, bars: BarArrays) -> RunResult:
    """Run a built engine's backtest over ``bars``. A strategy may offer ``compiled_backtest(engine,
    bars)``: when it returns a result (its compiled fast path applies), that is the run; when it
    returns None, the engine's event path runs (the reference)."""
    compiled = getattr(engine.strategy, "compiled_backtest", None)
    result = compiled(engine, bars) if compiled is not None else None
    return result if result is not None else engine.run_backtest(bars)


def backtest(
    config: RunConfig | Iterable[str] | None = None,
    *,
    plugins: PluginManager | None = None,
    bars: BarArrays | None = None,
    config_path: Path | str | None = None,
) -> RunResult:
    """Run a backtest. ``config`` is a :class:`RunConfig` or ``key=value`` strings."""
    plugins = plugins or load_plugins()
    if not isinstance(config, RunConfig):
        config = load_run_config(list(config or []), plugins.registry, config_path=config_path)
    runtime = build_runtime(config, plugins)
    notes: list[str] = []
    try:
        if bars is None:
            loaded = load_bars(config, runtime)
            bars, notes = loaded.bars, loaded.notes
        engine = build_engine(config, runtime)
        result = run_engine(engine, bars)
    finally:
        runtime.close()
    result.notes.extend(notes)
    return result

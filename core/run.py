"""Building a run from its config and running it: the functions the CLI and notebooks call.

from btc_quant.core.run import backtest
result = backtest(["strategy=sma_cross", "data.start=2022-01-10"])
result.metrics["sharpe"], result.equity.plot()
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .config import RunConfig, format_duration, load_run_config
from .data import SAMPLE, SAMPLE_MARK, BarArrays, check_timeframe, ms_to_iso, read_bars_file, step_ms, timeframe_ms
from .engine import Engine
from .errors import ConfigError, DataError, QuantError
from .instruments import instrument_for
from .paths import data_dir
from .plugins import PluginManager, load_plugins
from .results import RunInfo, RunResult
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
    """Bars for the run: ``data.file`` if set, else the store's klines, else klines built from the
    store's trades (``quant data import ... kind=trades``), else the bundled sample (with a note);
    with the mark price attached when mark-price klines cover them (:func:`attach_mark`)."""
    if config.data.price != "trade":
        raise ConfigError(
            f"data.price={config.data.price}: a run trades on trade klines; mark-price klines are used for "
            "liquidation by themselves (data.mark=auto)",
            hint="drop price=mark from the run's settings",
        )
    start, end = _ms(config.data.start), _ms(config.data.end)
    what = f"{config.exchange.name} {config.symbol} {config.timeframe}"
    rng = f"{config.data.start or 'start'} .. {config.data.end or 'end'}"
    notes: list[str] = []
    if config.data.file is not None:
        bars = read_bars_file(config.data.file).between(start, end)
        source = str(config.data.file)
        check_timeframe(bars.ts, config.timeframe, f"data.file {source}")
        if len(bars) == 0:
            raise DataError(f"{source} has no bars in {rng}")
    else:
        bars, source = None, ""
        if config.store.name in runtime.registry.names("store"):
            store = runtime.store()
            bars = store.read_bars(config.exchange.name, config.symbol, config.timeframe, start, end)
            source = f"store {config.store.name}"
            if len(bars) == 0:  # no klines: the klines of the stored trades, when there are any
                bars = store.trade_bars(config.exchange.name, config.symbol, config.timeframe, start, end)
                source = f"store {config.store.name} (bars built from its trades)"
                if len(bars):
                    notes.append(f"the store has no {what} klines for {rng}: {len(bars)} bars built from its trades")
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
    bars, note = attach_mark(config, runtime, bars)
    if note:
        notes.append(note)
    return LoadedBars(bars, source, notes)


def attach_mark(config: RunConfig, runtime: Runtime, bars: BarArrays) -> tuple[BarArrays, str | None]:
    """``bars`` with the mark price attached (``BarArrays.with_mark``), so that the sim triggers
    liquidation on it, and a note when a perpetual run triggers on the last price instead.

    Where the mark-price klines come from (``data.mark=auto``): ``data.mark_file`` when given (it
    must cover every bar: a file the user named is never ignored), else the store's mark klines of
    the run's market (the finest timeframe that covers the bars), else the bundled sample's (Binance
    BTCUSDT 1h, January 2022) when the run is on that market and span. ``data.mark=off``: none."""
    instrument = runtime.instrument
    if config.data.mark_file is not None and (config.data.mark == "off" or not instrument.is_perpetual):
        why = "data.mark=off" if config.data.mark == "off" else f"{instrument.symbol} is not a perpetual (no liquidation)"
        raise ConfigError(f"data.mark_file is set but not used: {why}", hint="drop one of the two settings")
    if config.data.mark == "off" or not instrument.is_perpetual or len(bars) == 0:
        return bars, None
    bar_ms = timeframe_ms(config.timeframe)
    if config.data.file is not None:  # a file's bars say their own step
        bar_ms = step_ms(bars) if len(bars) > 1 else bar_ms
    start, end = bars.start_ms, bars.end_ms + bar_ms
    if config.data.mark_file is not None:
        mark = read_bars_file(config.data.mark_file)
        try:
            return bars.with_mark(mark, bar_ms, step_ms(mark)), None
        except DataError as exc:
            raise DataError(
                f"data.mark_file {config.data.mark_file}: {exc}", hint="give mark klines covering the run, or leave data.mark_file unset"
            ) from None
    candidates: list[tuple[str, str, BarArrays]] = []
    if config.store.name in runtime.registry.names("store"):
        try:
            found = runtime.store().read_mark_bars(instrument.exchange, instrument.symbol, start - 86_400_000, end)
            candidates = [("stored", timeframe, mark) for timeframe, mark in found]
        except QuantError as exc:  # the bars may come from a file: a broken store must not stop the run
            log.warning("mark prices unavailable from the store (%s)", exc)
    if (instrument.exchange, instrument.symbol) == (SAMPLE_MARK.exchange, SAMPLE_MARK.symbol):
        candidates.append(("bundled", SAMPLE_MARK.timeframe, read_bars_file(SAMPLE_MARK.path)))
    why = f"no mark-price klines of {instrument.exchange} {instrument.symbol} are stored"
    for label, timeframe, mark in candidates:
        if len(mark) == 0:
            continue
        try:
            return bars.with_mark(mark, bar_ms, timeframe_ms(timeframe)), None
        except DataError as exc:
            why = f"{label} {timeframe} mark-price klines: {exc}"
    return bars, (f"liquidation triggers on the last price: {why} (quant data fetch ... price=mark, or data.mark_file=)")


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
    """Run a built engine's backtest over ``bars``: the strategy's compiled fast path when it
    offers one and the broker accepts it (:meth:`Strategy.compiled_backtest`, the declared
    protocol), else the engine's event path (the reference)."""
    result = engine.strategy.compiled_backtest(engine, bars)
    result = result if result is not None else engine.run_backtest(bars)
    return result.take_sources(engine.broker)


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
            with runtime.store_session():  # bars, trade bars, mark prices over one connection
                loaded = load_bars(config, runtime)
            bars, notes = loaded.bars, loaded.notes
        engine = build_engine(config, runtime)
        result = run_engine(engine, bars)
    finally:
        runtime.close()
    result.notes.extend(notes)
    return result

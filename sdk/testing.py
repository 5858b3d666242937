"""Helpers for testing strategies on a handful of bars, without a store or a CLI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..core.config import merge_layers, parse_assignments, resolve
from ..core.data import BarArrays
from ..core.model import Bar
from ..core.plugins import PluginManager, load_plugins
from ..core.results import RunResult
from ..core.run import build_engine, build_runtime, run_engine
from ..core.strategy import Strategy


def bars_from(rows: Iterable[Sequence[float]], *, start_ms: int = 1_600_000_000_000, step_ms: int = 60_000) -> BarArrays:
    """Bars from ``(open, high, low, close)`` or ``(open, high, low, close, volume)`` rows, one minute apart."""
    rows = [tuple(r) + (0.0,) * (5 - len(r)) for r in rows]
    columns: list[Sequence[float]] = list(zip(*rows)) if rows else [[]] * 5
    ts = start_ms + step_ms * np.arange(len(rows), dtype=np.int64)
    bars = BarArrays(ts, *(np.asarray(c, dtype=np.float64) for c in columns))
    bars.validate("bars_from")
    return bars


def assert_causal(strategy: Strategy, bars: BarArrays, cuts: Iterable[int] | None = None) -> None:
    """Fail if ``strategy.wake_bars`` lets a later bar change an earlier flag (look-ahead)."""
    full = np.asarray(strategy.wake_bars(bars), dtype=bool)
    n = len(bars)
    for cut in cuts or sorted({max(1, n // 7), n // 3, n // 2, n - 1}):
        part = np.asarray(strategy.wake_bars(bars[:cut]), dtype=bool)
        bad = np.flatnonzero(part != full[:cut])
        if len(bad):
            raise AssertionError(f"wake_bars is not causal: flag {bad[0]} changes when bars after {cut} are added")


def run_strategy(
    strategy: str | type[Strategy],
    bars: BarArrays | Sequence[Bar],
    *pairs: str,
    plugins: PluginManager | None = None,
    compiled: bool = False,
) -> RunResult:
    """Backtest a strategy (registered name or class) on given bars with ``key=value`` settings.

    The strategy object the run used is ``result.strategy_object``, so a test can look at its
    state after the run (a grid's open lots, an indicator's last value). ``compiled=True`` runs
    as ``quant run`` does (:func:`btc_quant.core.run.run_engine`): the strategy's compiled backtest
    when it has one that applies (``result.compiled``), else the event path; the default
    is always the event path.
    """
    plugins = plugins or load_plugins()
    if isinstance(strategy, type):
        name = getattr(strategy, "name", strategy.__name__.lower())
        if name not in plugins.registry.names("strategy"):
            plugins.registry.add("strategy", name, strategy, "sdk.testing")
        strategy = name
    # Only the given settings count: no quant.toml, no QUANT_* variables.
    config = resolve(merge_layers(parse_assignments([f"strategy={strategy}", *pairs])), plugins.registry)
    runtime = build_runtime(config, plugins)
    engine = build_engine(config, runtime)
    if not isinstance(bars, BarArrays):
        bars = BarArrays(
            np.array([b.ts_ms for b in bars], dtype=np.int64),
            *(np.array([getattr(b, f) for b in bars], dtype=np.float64) for f in ("open", "high", "low", "close", "volume")),
        )
    result = run_engine(engine, bars) if compiled else engine.run_backtest(bars)
    result.strategy_object = engine.strategy
    return result


__all__ = ["assert_causal", "bars_from", "run_strategy"]

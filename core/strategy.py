"""The strategy base class: a plain Python class with a typed config and ``on_*`` handlers.

The same class runs in a backtest, on paper and live, because the engine, not the strategy, owns
I/O. Handlers are synchronous, do no I/O and act only through the :class:`~btc_quant.core.engine.Context`
they are given::

    class MyStrategy(Strategy):
        class Config(StrategyConfig):
            period: int = Field(20, gt=1, description="lookback in bars")

        def on_bar(self, ctx, bar):
            ...

In a backtest the engine calls ``on_bar`` for every bar unless the class sets
``needs_every_bar = False`` and implements :meth:`Strategy.wake_bars`, which names the bars it
must see; bars between them are matched against resting orders in compiled code and never
reach Python. ``on_fill`` and ``on_order`` are always called when something happens.

**The compiled fast path** is declared here and on the broker: a strategy offers its decisions as
compiled functions with :meth:`Strategy.compiled_decisions` (a :class:`CompiledDecisions`); the
broker alone decides whether it can run them (:meth:`btc_quant.core.broker.Broker.compiled_refusal`,
one check returning the reason, which the run log shows) and runs them
(:meth:`~btc_quant.core.broker.Broker.run_compiled`); :meth:`Strategy.compiled_backtest` ties the
two together and is what ``quant run`` calls. The SDK bases ``SignalStrategy`` and ``PairGrid``
offer theirs, so a strategy written on them gets the compiled path with no simulator import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .config import QuantModel

if TYPE_CHECKING:  # pragma: no cover
    from .data import BarArrays
    from .engine import Context, Engine
    from .model import Bar, Fill, Order
    from .results import RunResult

log = logging.getLogger(__name__)

#: The decision loops a broker may know: ``signal`` (a :class:`~btc_quant.sdk.SignalStrategy`'s
#: values, traded at the next open), ``pairs`` (a :class:`~btc_quant.sdk.PairGrid`'s legs, each
#: fill arming the other leg) and ``kernel`` (the strategy's own compiled loop over the broker's
#: venue core, :attr:`CompiledDecisions.run`).
DECISION_KINDS = ("signal", "pairs", "kernel")


@dataclass(frozen=True)
class CompiledDecisions:
    """What a strategy offers a broker to run in compiled code (:meth:`Strategy.compiled_decisions`).

    ``kind`` names the decision loop (:data:`DECISION_KINDS`); ``why_not`` is the strategy's own
    reason it cannot be compiled in this run (an overridden handler, ...), None when it can;
    ``run(engine, bars)`` is the strategy's own compiled loop for ``kind="kernel"`` (it returns
    the RunResult, or None when it met a case it does not implement)."""

    kind: str
    why_not: str | None = None
    run: Callable[[Engine, BarArrays], RunResult | None] | None = None


class StrategyConfig(QuantModel):
    """Base of strategy configs: frozen pydantic model, unknown keys rejected."""


class Strategy:
    """Base class of every strategy. Override the handlers you need."""

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    #: False when :meth:`wake_bars` says which bars need ``on_bar`` (fast backtests).
    needs_every_bar: ClassVar[bool] = True

    def __init__(self, config: StrategyConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def wake_bars(self, bars: BarArrays) -> np.ndarray:
        """Backtest only: a boolean array, True at each bar whose ``on_bar`` must run.

        Called once before the run with all bars. It must be causal: element ``i`` may depend on
        bars ``0..i`` only (the engine's tests check this for the shipped strategies with
        :func:`btc_quant.sdk.testing.assert_causal`). The default wakes on every bar.
        """
        return np.ones(len(bars), dtype=bool)

    def on_start(self, ctx: Context) -> None:
        """Before the first bar. No bar is known yet; orders placed here rest from the first bar."""

    def on_bar(self, ctx: Context, bar: Bar) -> None:
        """After ``bar`` closed (``bar`` is ``ctx.bar``). Orders placed here act from the next bar."""

    def on_fill(self, ctx: Context, fill: Fill) -> None:
        """An order of this strategy (partly) filled; the position already includes it."""

    def on_order(self, ctx: Context, order: Order) -> None:
        """An order changed status: accepted, rejected (``order.reason`` says why), canceled, expired."""

    def on_stop(self, ctx: Context) -> None:
        """After the last bar, or when a live run is stopped."""

    def completed_round_trips(self) -> int | None:
        """Round trips completed in the run, for strategies that trade lot by lot (a grid: each
        entry and its take-profit is one trade, while the net position may never be flat). The
        run's ``trades`` metric then counts these (:func:`btc_quant.core.metrics.count_trades`).
        None (the default): ``trades`` counts the net position's flat-to-flat trades."""
        return None

    # --- the compiled fast path (backtests) ----------------------------------------------------
    def compiled_decisions(self, engine: Engine) -> CompiledDecisions | None:
        """Offer this strategy's decisions as compiled functions for a backtest in ``engine``, or
        None (the default: the event path runs). Whether they run is the broker's decision
        (:meth:`~btc_quant.core.broker.Broker.compiled_refusal`)."""
        return None

    def compiled_backtest(self, engine: Engine, bars: BarArrays) -> RunResult | None:
        """The whole backtest in the broker's compiled code when this strategy offers its
        decisions and the broker accepts them; None otherwise (the caller then runs the event
        path, the reference). The broker's reason for refusing is logged and kept on the engine
        (``engine.compiled_refusal``)."""
        offer = self.compiled_decisions(engine)
        if offer is None or len(bars) == 0:
            return None
        reason = engine.broker.compiled_refusal(engine, offer)
        engine.compiled_refusal = reason
        if reason is not None:
            log.info("%s: event path (%s)", engine.info.strategy, reason)
            return None
        return engine.broker.run_compiled(engine, bars, offer)

    def diagnostics(self) -> dict[str, Any]:
        """Strategy-specific results (DataFrames, Series, numbers) to keep with the run.

        Called once after ``on_stop``; the engine stores the dict as
        ``RunResult.diagnostics``, where reports and exporters find it.
        """
        return {}

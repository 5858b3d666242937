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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .config import QuantModel

if TYPE_CHECKING:  # pragma: no cover
    from .data import BarArrays
    from .engine import Context
    from .model import Bar, Fill, Order


class StrategyConfig(QuantModel):
    """Base of strategy configs: frozen pydantic model, unknown keys rejected."""


class Strategy:
    """Base class of every strategy. Override the handlers you need."""

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    #: False when :meth:`wake_bars` says which bars need ``on_bar`` (fast backtests).
    needs_every_bar: ClassVar[bool] = True

    def __init__(self, config: StrategyConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def wake_bars(self, bars: "BarArrays") -> np.ndarray:
        """Backtest only: a boolean array, True at each bar whose ``on_bar`` must run.

        Called once before the run with all bars. It must be causal: element ``i`` may depend on
        bars ``0..i`` only (the engine's tests check this for the shipped strategies with
        :func:`btc_quant.sdk.testing.assert_causal`). The default wakes on every bar.
        """
        return np.ones(len(bars), dtype=bool)

    def on_start(self, ctx: "Context") -> None:
        """Before the first bar. No bar is known yet; orders placed here rest from the first bar."""

    def on_bar(self, ctx: "Context", bar: "Bar") -> None:
        """After ``bar`` closed (``bar`` is ``ctx.bar``). Orders placed here act from the next bar."""

    def on_fill(self, ctx: "Context", fill: "Fill") -> None:
        """An order of this strategy (partly) filled; the position already includes it."""

    def on_order(self, ctx: "Context", order: "Order") -> None:
        """An order changed status: accepted, rejected (``order.reason`` says why), canceled, expired."""

    def on_stop(self, ctx: "Context") -> None:
        """After the last bar, or when a live run is stopped."""

    def diagnostics(self) -> dict[str, Any]:
        """Strategy-specific results (DataFrames, Series, numbers) to keep with the run.

        Called once after ``on_stop``; the engine stores the dict as
        ``RunResult.extra["diagnostics"]``, where reports and exporters find it.
        """
        return {}

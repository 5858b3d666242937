"""Signal strategies: decisions stated as one vectorised array, traded at the next open.

A :class:`SignalStrategy` says, for every bar, what to hold after it closed::

    class Cross(SignalStrategy):
        def signal(self, bars):
            fast, slow = sma(bars.close, 10), sma(bars.close, 30)
            up, down = crossed(fast, slow), crossed(slow, fast)
            return np.where(up, 0.95, np.where(down, 0.0, np.nan))

``signal(bars)[i]`` is the share of equity to hold from bar ``i``'s close: ``> 0`` long, ``< 0``
short, ``0`` flat, NaN no decision (the strategy is not woken). It must be causal (element ``i``
depends on bars ``0..i`` only; :func:`btc_quant.sdk.testing.assert_causal` checks ``wake_bars``,
which is ``~isnan(signal)``). At a decision, with no order open:

* flat and a non-zero value: a market order for ``abs(value) * equity / close`` (rounded down to
  the lot, like ``ctx.buy``), long or short by the sign;
* holding a position and a value of 0 or of the other sign: a reduce-only market order closing
  it (a new position is only opened from flat, at a later decision);
* otherwise nothing.

Market orders placed at a close fill at the next open (the sim's rule, Backtrader's default).
The class runs everywhere a strategy runs. In a backtest on the ``sim`` broker the whole run can
execute in one compiled loop (:mod:`btc_quant.plugins.brokers.sim.signals`) that follows the sim's
rules and gives the same fills, orders and equity; it applies when the strategy does nothing but
its signal (:meth:`SignalStrategy.why_not`), otherwise the event path runs. Live, where bars arrive
one at a time, :meth:`SignalStrategy.live_signal` gives the value at the newest bar (by default
``signal`` over the last :attr:`SignalStrategy.lookback` bars).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..core.compiled import njit
from ..core.errors import StrategyError
from ..core.strategy import CompiledDecisions, Strategy

if TYPE_CHECKING:  # pragma: no cover
    from ..core.data import BarArrays
    from ..core.engine import Context, Engine
    from ..core.model import Bar

log = logging.getLogger(__name__)


@njit(cache=True, nogil=True)
def signal_order(value, position, equity, close):  # pragma: no cover - compiled
    """The rule of a decision (module docstring), written once: the event path's :meth:`SignalStrategy.on_bar`
    and the sim's compiled signal loop both call it. Returns (side, quantity, reduce_only): side
    +1 buy, -1 sell, 0 no order; the quantity before rounding to the lot."""
    if value != 0 and position == 0:
        return (1.0 if value > 0 else -1.0), abs(value) * equity / close, False
    if position != 0 and (value == 0 or (value > 0) != (position > 0)):
        return (-1.0 if position > 0 else 1.0), abs(position), True
    return 0.0, 0.0, False


class SignalStrategy(Strategy):
    """A strategy whose decisions are :meth:`signal` (see the module docstring)."""

    needs_every_bar: ClassVar[bool] = False
    #: bars :meth:`live_signal` passes to :meth:`signal` when bars arrive one at a time
    lookback: ClassVar[int] = 500

    _known: tuple | None = None  # (ts, close, signal) of the bars wake_bars saw

    def signal(self, bars: BarArrays) -> np.ndarray:
        """Share of equity to hold from each bar's close (NaN: no decision). Causal."""
        raise NotImplementedError(f"{type(self).__name__} must implement signal(bars)")

    def wake_bars(self, bars: BarArrays) -> np.ndarray:
        values = np.asarray(self.signal(bars), dtype=np.float64)
        if len(values) != len(bars):
            raise StrategyError(f"{type(self).__name__}.signal returned {len(values)} values for {len(bars)} bars")
        self._known = (bars.ts, bars.close, values)
        return ~np.isnan(values)

    def live_signal(self, ctx: Context, bar: Bar) -> float:
        """The value at ``bar`` when it is not one ``wake_bars`` saw (live): :meth:`signal` over
        the last :attr:`lookback` closed bars."""
        values = self.signal(ctx.bars(self.lookback))
        return float(values[-1]) if len(values) else float("nan")

    def _value(self, ctx: Context, bar: Bar) -> float:
        if self._known is not None:
            ts, close, values = self._known
            i = int(ts.searchsorted(bar.ts_ms))
            if i < len(ts) and ts[i] == bar.ts_ms and close[i] == bar.close:
                return float(values[i])
        return self.live_signal(ctx, bar)

    # --- the event path -------------------------------------------------------------------------
    def on_bar(self, ctx: Context, bar: Bar) -> None:
        value = self._value(ctx, bar)
        if value != value or ctx.open_orders:
            return
        position = ctx.position.quantity
        equity = ctx.equity if position == 0 else 0.0  # the equity sizes entries only (from flat)
        side, quantity, reduce_only = signal_order(value, position, equity, bar.close)
        if side != 0:
            (ctx.buy if side > 0 else ctx.sell)(quantity, reduce_only=reduce_only)

    # --- the compiled backtest ---------------------------------------------------------------------
    _HANDLERS: ClassVar[tuple[str, ...]] = ("on_start", "on_bar", "on_fill", "on_order", "on_stop", "wake_bars", "_value")

    def why_not(self, engine: Engine) -> str | None:
        """Why the compiled backtest does not apply (None: it may; the broker has its own
        conditions): a handler of :class:`SignalStrategy` overridden, risk checks, or a plugin
        observing every order or fill (``quant_on_order`` / ``quant_on_fill``)."""
        for name in self._HANDLERS:
            if getattr(type(self), name) is not getattr(SignalStrategy, name):
                return f"{type(self).__name__} overrides {name}"
        if type(self).needs_every_bar:
            return "needs_every_bar is set"
        return engine.why_not_compiled()

    def compiled_decisions(self, engine: Engine) -> CompiledDecisions:
        """The signal loop: the broker trades :meth:`signal` in compiled code (the sim:
        :mod:`btc_quant.plugins.brokers.sim.signals`) when :meth:`why_not` and the broker allow."""
        return CompiledDecisions("signal", why_not=self.why_not(engine))


__all__ = ["SignalStrategy"]

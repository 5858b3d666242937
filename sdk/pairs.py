"""Order pairs: a resting entry whose fill places its take-profit, whose fill re-arms the entry.

What exchange grid bots and OTO ("one triggers the other") orders do, as a strategy base class::

    from btc_quant.sdk import OrderPair, PairGrid

    class Grid(PairGrid):
        def pairs(self, ctx):
            price = ctx.price
            return [OrderPair("buy", 0.01, price * (1 - 0.005 * k), price * (1 - 0.005 * k) * 1.005) for k in range(1, 41)]

The class runs everywhere a strategy runs: on paper and live it places and re-arms the legs from
``on_fill`` like any strategy (the code in this module). In a backtest on the ``sim`` broker the
whole run -- matching, re-arming, fees, margin, liquidation, funding -- can execute in one compiled
loop (:mod:`btc_quant.plugins.brokers.sim.pairs`) that follows the sim's rules and gives the same
fills, orders and equity; it applies when the strategy asks for nothing else (see
:meth:`PairGrid.why_not`), otherwise the event path runs.

Rules of a pair (both paths):

* ``on_start`` places every pair's entry, in the order :meth:`PairGrid.pairs` returns them;
  quantities and prices are rounded as ``ctx.buy`` / ``ctx.sell`` round them (quantity down to the
  lot, a buy's price down and a sell's up to the tick);
* when the entry is completely filled, its take-profit (the opposite side, same quantity) is
  placed; when the take-profit is completely filled, the entry is placed again;
* a leg that the broker rejects (margin), expires (a post-only leg that would cross) or cancels
  (liquidation, or a cancel by hand) ends its pair: nothing is placed for it any more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..core.compiled import njit
from ..core.errors import OrderError
from ..core.model import OrderStatus, Side
from ..core.strategy import CompiledDecisions, Strategy

if TYPE_CHECKING:  # pragma: no cover
    from ..core.data import BarArrays
    from ..core.engine import Context, Engine
    from ..core.model import Fill, Instrument

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrderPair:
    """One grid pair: an entry limit order and its take-profit on the other side."""

    side: Side | str  # the entry's side; the take-profit trades the other side
    quantity: float  # of each leg, in the base asset
    entry_price: float
    take_profit_price: float
    post_only: bool = True  # both legs (Binance GTX): a leg that would cross on arrival expires
    tag: str | None = None  # the legs' tags are f"{tag}:entry" and f"{tag}:tp" (default tag: "pair{k}")


@dataclass(frozen=True)
class PairLegs:
    """The pairs as the orders they become: arrays over pairs, rounded to the instrument's grid."""

    side: np.ndarray  # +1 the entry buys, -1 it sells
    quantity: np.ndarray
    entry_price: np.ndarray
    take_profit_price: np.ndarray
    post_only: np.ndarray  # bool
    entry_tag: list[str]
    take_profit_tag: list[str]

    def __len__(self) -> int:
        return len(self.quantity)


def pair_legs(pairs: list[OrderPair], instrument: Instrument) -> PairLegs:
    """Round and check ``pairs`` as ``ctx.buy`` / ``ctx.sell`` would; a bad pair is an OrderError naming it."""
    n = len(pairs)
    side, qty, entry, tp = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    post_only = np.empty(n, dtype=bool)
    entry_tags, tp_tags = [], []
    for k, pair in enumerate(pairs):
        buy = Side(pair.side) is Side.BUY
        q = instrument.round_qty(pair.quantity)
        e = instrument.round_price(pair.entry_price, "down" if buy else "up")
        t = instrument.round_price(pair.take_profit_price, "up" if buy else "down")
        tag = pair.tag if pair.tag is not None else f"pair{k}"
        if q <= 0:
            raise OrderError(f"pair {tag}: quantity {pair.quantity!r} rounds to 0 at lot size {instrument.lot_size}")
        for what, price in (("entry", e), ("take-profit", t)):
            if price <= 0:
                raise OrderError(f"pair {tag}: {what} price {price!r} is not positive")
            if price * q < instrument.min_notional:
                raise OrderError(f"pair {tag}: {what} {q} at {price:.2f} is below the minimum notional {instrument.min_notional:g}")
        side[k], qty[k], entry[k], tp[k], post_only[k] = (1.0 if buy else -1.0), q, e, t, pair.post_only
        entry_tags.append(f"{tag}:entry")
        tp_tags.append(f"{tag}:tp")
    return PairLegs(side, qty, entry, tp, post_only, entry_tags, tp_tags)


@njit(cache=True, nogil=True)
def pair_leg(side, entry_price, take_profit_price, take_profit):  # pragma: no cover - compiled
    """The order of a pair's leg, written once (the event path's :class:`PairGrid` and the sim's
    compiled pair loop both call it): (side +1 buy / -1 sell, limit price). The entry trades the
    pair's side at its entry price, the take-profit the other side at its price."""
    if take_profit:
        return -side, take_profit_price
    return side, entry_price


class PairGrid(Strategy):
    """A strategy made of :class:`OrderPair` s (see the module docstring). Override :meth:`pairs`.

    A subclass that also overrides ``on_bar``, ``on_fill``, ``on_order``, ``on_start``,
    ``on_stop`` or ``wake_bars`` still runs (the event path), but without the compiled backtest.
    """

    needs_every_bar: ClassVar[bool] = False

    def pairs(self, ctx: Context) -> list[OrderPair]:
        """The pairs to trade, called once before the first bar (``ctx.price`` is the first open)."""
        raise NotImplementedError(f"{type(self).__name__} must implement pairs(ctx)")

    def wake_bars(self, bars: BarArrays) -> np.ndarray:
        return np.zeros(len(bars), dtype=bool)  # the legs act through fills only

    # --- the event path (paper, live, and backtests the compiled loop does not take) ----------
    def on_start(self, ctx: Context) -> None:
        self.legs = pair_legs(list(self.pairs(ctx)), ctx.instrument)
        self._leg_of: dict[str, tuple[int, bool]] = {}  # client id -> (pair, is take-profit)
        for k in range(len(self.legs)):
            self._place(ctx, k, take_profit=False)

    def _place(self, ctx: Context, k: int, *, take_profit: bool) -> None:
        legs = self.legs
        side, price = pair_leg(float(legs.side[k]), float(legs.entry_price[k]), float(legs.take_profit_price[k]), take_profit)
        tag = legs.take_profit_tag[k] if take_profit else legs.entry_tag[k]
        place = ctx.buy if side > 0 else ctx.sell
        order = place(float(legs.quantity[k]), float(price), post_only=bool(legs.post_only[k]), tag=tag)
        self._leg_of[order.client_id] = (k, take_profit)

    def on_fill(self, ctx: Context, fill: Fill) -> None:
        leg = self._leg_of.get(fill.client_id)
        if leg is None:  # not a leg (a liquidation)
            return
        order = ctx.order(fill.client_id)
        if order is not None and order.status is OrderStatus.FILLED:
            del self._leg_of[fill.client_id]
            self._place(ctx, leg[0], take_profit=not leg[1])

    # --- the compiled backtest ---------------------------------------------------------------------
    _HANDLERS: ClassVar[tuple[str, ...]] = ("on_start", "on_bar", "on_fill", "on_order", "on_stop", "wake_bars")

    def why_not(self, engine: Engine) -> str | None:
        """Why the compiled backtest does not apply to this strategy in ``engine`` (None: it may;
        the broker has its own conditions). It needs the strategy to do nothing but its pairs: no
        handler of :class:`PairGrid` overridden, no risk checks, no plugin observing every order
        or fill (``quant_on_order`` / ``quant_on_fill``; run start/end hooks are called as usual)."""
        for name in self._HANDLERS:
            if getattr(type(self), name) is not getattr(PairGrid, name):
                return f"{type(self).__name__} overrides {name}"
        if type(self).needs_every_bar:
            return "needs_every_bar is set"
        return engine.why_not_compiled()

    def compiled_decisions(self, engine: Engine) -> CompiledDecisions:
        """The pair loop: the broker re-arms each pair's other leg in compiled code (the sim:
        :mod:`btc_quant.plugins.brokers.sim.pairs`) when :meth:`why_not` and the broker allow."""
        return CompiledDecisions("pairs", why_not=self.why_not(engine))


__all__ = ["OrderPair", "PairGrid", "PairLegs", "pair_legs"]

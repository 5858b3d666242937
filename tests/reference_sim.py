"""The event-path sim broker as it was before the venue core (pure Python rules over the
readable references :mod:`btc_quant.core.margin` and :class:`btc_quant.core.model.Account`),
kept for the tests only: ``tests/test_sim_fast_path.py`` checks that the core-driven
:class:`~btc_quant.plugins.brokers.sim.SimBroker` gives exactly its runs. Not production code:
nothing outside the tests imports it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from functools import lru_cache
from typing import ClassVar

import numpy as np
import pandas as pd

from btc_quant.core import margin as mm
from btc_quant.plugins.brokers.sim.broker import SimBroker, SimConfig
from btc_quant.plugins.brokers.sim.venue import bar_path, first_event_bar, liquidation_bounds, next_resting_fill, resting_bounds
from btc_quant.sdk import (
    Account,
    BarArrays,
    ExchangeError,
    Fill,
    FillEvent,
    MarginState,
    Order,
    OrderError,
    OrderEvent,
    OrderStatus,
    OrderType,
    Side,
    SimulatedBroker,
    Step,
)

log = logging.getLogger(__name__)
_EPS = 1e-12
FUNDING_PERIOD_MS = 8 * 3600 * 1000


_PRICE, _SIDE, _STATE, _SEQ = 0, 1, 2, 3


class RestingBook:
    """The sim's open orders as a numpy table, kept in step with its ``client_id -> Order`` dict,
    so that compiled code can find the next fill on a path segment and the best resting prices.

    Slots are reused; the queue order (oldest first, as the dict keeps it) is the ``seq`` column.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.rows = np.zeros((capacity, 4))
        self.ids: list[str | None] = [None] * capacity  # client id in each slot
        self._slot: dict[str, int] = {}
        self._free = list(range(capacity - 1, -1, -1))
        self._seq = 0.0
        self.size = 0  # rows[:size] holds every used slot

    def add(self, client_id: str, price: float | None, buy: bool, waiting: bool) -> None:
        """A new order at the back of the queue (an amended one is removed and added again)."""
        if not self._free:
            grown = np.zeros((2 * len(self.rows), 4))
            grown[: len(self.rows)] = self.rows
            self._free = list(range(len(grown) - 1, len(self.rows) - 1, -1))
            self.ids.extend([None] * (len(grown) - len(self.rows)))
            self.rows = grown
        slot = self._free.pop()
        self._slot[client_id] = slot
        self.ids[slot] = client_id
        self._seq += 1.0
        row = self.rows[slot]
        row[_PRICE] = np.nan if price is None else price
        row[_SIDE] = 1.0 if buy else -1.0
        row[_STATE] = 2.0 if waiting else 1.0
        row[_SEQ] = self._seq
        if slot >= self.size:
            self.size = slot + 1

    def remove(self, client_id: str) -> None:
        slot = self._slot.pop(client_id, None)
        if slot is not None:
            self.rows[slot, _STATE] = 0.0
            self.ids[slot] = None
            self._free.append(slot)

    def set_waiting(self, client_id: str, waiting: bool) -> None:
        slot = self._slot.get(client_id)
        if slot is not None:
            self.rows[slot, _STATE] = 2.0 if waiting else 1.0

    def clear(self) -> None:
        self.rows[:, _STATE] = 0.0
        self.ids = [None] * len(self.rows)
        self._slot.clear()
        self._free = list(range(len(self.rows) - 1, -1, -1))
        self.size = 0

    def __len__(self) -> int:
        return len(self._slot)


class OldSimBroker(SimulatedBroker):
    """The pre-core event-path sim (see the module docstring)."""

    Config: ClassVar[type[SimConfig]] = SimConfig
    #: finish a bar without walking the rest of its path when nothing can happen on it (``_quiet``)
    skip_quiet_bars: ClassVar[bool] = True

    def __init__(self, config: SimConfig, runtime) -> None:
        super().__init__(config, runtime)
        self.fill_model = runtime.registry.get("fill_model", config.fill_model, key="broker.fill_model").factory
        self.perpetual = self.instrument.is_perpetual
        self.brackets = self.instrument.margin_brackets or mm.NO_BRACKETS
        self._account = Account(config.initial_cash)
        self._position = self._account.position(self.instrument.symbol)
        self._orders: dict[str, Order] = {}  # open orders by client id, oldest first
        self._pending: set[str] = set()  # takers waiting for the next open
        # The open orders again, as arrays for the compiled scans, and the margin they hold:
        # buy and sell value of limit orders, buy and sell quantity of market orders (not reduce-only).
        # Both change only through _rest / _unrest / _refill.
        self._book = RestingBook()
        self._held = [0.0, 0.0, 0.0, 0.0]
        self._events: list = []
        self._fill_bars: list[int] = []
        self._cash_delta: list[tuple[int, float, float]] = []  # (bar, cash change, qty change)
        self._liq_marks: list[tuple[int, float]] = []  # (bar, liquidation price after an event)
        self._funding_rows: list[tuple[int, int, float, float, float, float]] = []
        self._trade_seq = 0
        self._i = 0  # bar being processed
        self._inside = False  # walking bar _i's path
        self._seg = 0  # path segment: 0 gap, 1 open->E1, 2 E1->E2, 3 E2->close
        self._path = (0.0,) * 5
        self._price = float("nan")
        self._now = 0
        self._alert: tuple[float, float] | None = None
        self._used: dict[str, float] = {}  # volume filled per order in the current bar
        self.mode = "cross" if self.perpetual else "spot"
        if self.perpetual:
            self.mode = config.margin_mode
        self.leverage = float(config.leverage) if self.perpetual else 1.0
        self._iso_margin = 0.0
        self._liq_cache: float | None | bool = False  # False = stale
        self.liquidations = 0
        self.insurance = 0.0
        # Set by load(); brokers fed bar by bar (paper) never call it and get no funding schedule.
        self._wake_index: np.ndarray | None = None
        self._funding: pd.DataFrame | None = None  # paper trading's (empty) schedule; a backtest keeps arrays
        self._fund_ts = self._fund_bar = np.empty(0, np.int64)
        self._fund_rate = np.empty(0)
        self._fk = 0
        self._liq_of: BarArrays | None = None  # the bars _liq_low/_liq_high were computed for
        self._liq_low = self._liq_high = np.empty(0)
        self.liquidation_price_source = "last"  # "mark" when the bars carry the mark price (load)
        self.funding_source = "off"  # where the funding rates come from (load)

    # --- data ----------------------------------------------------------------------------
    def load(self, bars: BarArrays) -> None:
        self.bars = bars
        self._price = float(bars.open[0])
        self._now = int(bars.ts[0])
        self._wake_index: np.ndarray | None = None
        self._fund_ts, self._fund_bar, self._fund_rate = self._funding_arrays(bars)
        self._fk = 0
        self._liq_bounds()

    def _liq_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per bar, how far a liquidation can be triggered (:func:`.sim_path.liquidation_bounds`)."""
        if self._liq_of is not self.bars:
            self._liq_low, self._liq_high, self.liquidation_price_source = liquidation_bounds(self.bars)
            self._liq_of = self.bars
        return self._liq_low, self._liq_high

    # choosing the funding rates is not a rule under test: the broker's own code
    _funding_schedule = SimBroker._funding_schedule
    _funding_arrays = SimBroker._funding_arrays
    _funding_history = SimBroker._funding_history

    # --- Broker API ------------------------------------------------------------------------
    def submit(self, order: Order) -> None:
        reason = self._refusal(order)
        if reason:
            self._events.append(OrderEvent(order.transition(OrderStatus.REJECTED, reason=reason, updated_ms=self._now)))
            return
        if order.post_only and self._crosses(order):
            self._expire_post_only(order)
            return
        accepted = order.transition(OrderStatus.NEW, updated_ms=self._now)
        taker = order.type is OrderType.MARKET or self._crosses(order)
        self._rest(accepted, waiting=taker and not self._inside)
        self._events.append(OrderEvent(accepted))
        if taker and self._inside:
            self._fill(accepted, self._price, maker=False)

    def amend(self, client_id: str, *, price: float | None = None, quantity: float | None = None) -> None:
        """Cancel-replace: new price and/or quantity, same client id, back of the queue."""
        order = self._orders.get(client_id)
        if order is None:
            raise OrderError(f"order {client_id}: not open, cannot amend")
        if order.type is not OrderType.LIMIT:
            raise OrderError(f"order {client_id}: only limit orders can be amended")
        new_qty = order.quantity if quantity is None else quantity
        if new_qty <= order.filled_qty + _EPS:
            raise OrderError(f"order {client_id}: amended quantity {new_qty} is not above the filled {order.filled_qty}")
        amended = replace(order, price=order.price if price is None else price, quantity=new_qty, updated_ms=self._now)
        self._unrest(client_id)  # re-inserted at the end: it lost its place
        if amended.post_only and self._crosses(amended):
            self._expire_post_only(amended)
            return
        taker = self._crosses(amended)
        self._rest(amended, waiting=taker and not self._inside)
        self._events.append(OrderEvent(amended))
        if taker and self._inside:
            self._fill(amended, self._price, maker=False)

    def cancel(self, client_id: str) -> None:
        order = self._unrest(client_id)
        if order is not None:
            self._events.append(OrderEvent(order.transition(OrderStatus.CANCELED, updated_ms=self._now)))

    def set_price_alert(self, low: float | None, high: float | None) -> None:
        if low is None and high is None:
            self._alert = None
        else:
            self._alert = (-np.inf if low is None else low, np.inf if high is None else high)

    def events(self) -> list:
        events, self._events = self._events, []
        return events

    def open_orders(self) -> list[Order]:
        return list(self._orders.values())

    def account(self) -> Account:
        return self._account

    def equity(self) -> float:
        # Account.equity for the one position the sim trades (the same sum, without the dict)
        pos = self._position
        return self._account.wallet_balance + (0 if pos.is_flat else pos.unrealized_pnl(self._price))

    @property
    def now_ms(self) -> int:
        return self._now

    @property
    def last_price(self) -> float:
        return self._price

    # --- margin ----------------------------------------------------------------------------
    def _perpetual_only(self, what: str) -> None:
        if not self.perpetual:
            raise ExchangeError(f"{self.instrument.symbol} is a spot market: no {what}")

    def set_leverage(self, leverage: float) -> None:
        """Binance POST /fapi/v1/leverage: 1 .. the bracket's maximum for the current position."""
        self._perpetual_only("leverage")
        notional = abs(self._position.quantity) * self._price
        cap = mm.max_leverage(notional, self.brackets)
        if not (1 <= leverage <= cap):
            raise ExchangeError(f"leverage {leverage:g} is outside 1..{cap:g} for a {notional:,.0f} USDT position")
        self.leverage = float(leverage)
        self._liq_cache = False

    def set_margin_mode(self, mode: str) -> None:
        """Binance POST /fapi/v1/marginType: only while flat and without open orders."""
        self._perpetual_only("margin modes")
        if mode not in ("cross", "isolated"):
            raise ExchangeError(f"margin mode must be cross or isolated, got {mode!r}")
        if mode != self.mode and (not self._position.is_flat or self._orders):
            raise ExchangeError("margin mode cannot change while a position or open orders exist (Binance -4047/-4048)")
        self.mode = mode
        self._liq_cache = False

    def adjust_margin(self, amount: float) -> None:
        """Binance POST /fapi/v1/positionMargin: move ``amount`` into (> 0) or out of the isolated position."""
        self._perpetual_only("isolated margin")
        if self.mode != "isolated":
            raise ExchangeError("adjust_margin needs margin_mode isolated")
        if self._position.is_flat:
            raise ExchangeError("no isolated position to adjust margin of")
        if amount > 0 and amount > self._available() + 1e-9:
            raise ExchangeError(f"cannot add {amount:.2f} margin: {self._available():.2f} available")
        initial = abs(self._position.quantity) * self._position.entry_price / self.leverage
        if amount < 0 and self._iso_margin + amount < initial - 1e-9:
            raise ExchangeError(f"cannot remove {-amount:.2f} margin: the position keeps at least its initial margin {initial:.2f}")
        self._iso_margin += amount
        self._changed()

    def margin(self) -> MarginState:
        pos = self._position
        notional = abs(pos.quantity) * self._price
        if self.mode == "isolated":
            held = self._iso_margin
        else:
            held = notional / self.leverage
        return MarginState(
            mode=self.mode,
            leverage=self.leverage,
            wallet_balance=self._account.wallet_balance,
            position_margin=held,
            maintenance_margin=mm.maintenance_margin(notional, self.brackets) if self.perpetual else 0.0,
            available_balance=max(self._available(), 0.0),
            liquidation_price=self.liquidation_price(),
        )

    def liquidation_price(self) -> float | None:
        """The venue's liquidation price of the current position (None: flat, spot, unreachable):
        Binance's formula, or the exchange's own (:func:`btc_quant.core.margin.liquidation_formula`)."""
        if self._liq_cache is False:
            pos = self._position
            if not self.perpetual or pos.is_flat:
                self._liq_cache = None
            else:
                isolated = self.mode == "isolated"
                wallet = self._iso_margin if isolated else self._account.wallet_balance
                formula = mm.liquidation_formula(self.instrument.exchange)
                self._liq_cache = formula(pos.quantity, pos.entry_price, wallet, self.brackets, isolated=isolated)
        return self._liq_cache

    def margin_ratio(self, mark: float) -> float:
        """Maintenance margin / margin balance at ``mark`` (Binance liquidates at >= 1)."""
        pos = self._position
        if not self.perpetual or pos.is_flat:
            return 0.0
        wallet = self._iso_margin if self.mode == "isolated" else self._account.wallet_balance
        return mm.margin_ratio(pos.quantity, pos.entry_price, mark, wallet, self.brackets)

    def _order_values(self, exclude: str | None = None) -> tuple[float, float]:
        """The value of the open buy and sell orders (not reduce-only; market orders at the price),
        the order ``exclude`` left out: from the running sums ``_held``."""
        limit_buys, limit_sells, market_buys, market_sells = self._held
        buys = limit_buys + market_buys * self._price
        sells = limit_sells + market_sells * self._price
        left_out = self._orders.get(exclude) if exclude is not None else None
        if left_out is not None and not left_out.reduce_only:
            value = left_out.remaining_qty * (left_out.price if left_out.price is not None else self._price)
            if left_out.side is Side.BUY:
                buys -= value
            else:
                sells -= value
        return buys, sells

    def _orders_margin(self, exclude: str | None = None) -> float:
        """Initial margin reserved by open orders: per side, the part that would grow the position
        (orders against the position up to its size need none); the larger side counts."""
        buys, sells = self._order_values(exclude)
        pos_value = abs(self._position.quantity) * self._price
        if self._position.quantity > 0:
            sells = max(0.0, sells - pos_value)
        elif self._position.quantity < 0:
            buys = max(0.0, buys - pos_value)
        return max(buys, sells) / self.leverage

    def _available(self, exclude: str | None = None) -> float:
        """Binance availableBalance: what new orders can use as initial margin."""
        pos = self._position
        wallet = self._account.wallet_balance
        if self.mode == "isolated":
            free = wallet - self._iso_margin
        else:
            free = wallet + pos.unrealized_pnl(self._price) - abs(pos.quantity) * self._price / self.leverage
        return free - self._orders_margin(exclude)

    def _refusal(self, order: Order) -> str | None:
        pos = self._position.quantity
        if order.reduce_only and (abs(pos) < _EPS or (pos > 0) == (order.side is Side.BUY)):
            return "reduce-only order would not reduce the position (Binance -2022)"
        if not order.reduce_only:
            # Binance MIN_NOTIONAL: -4164 "Order's notional must be no smaller than ... (unless
            # you choose reduce only)"; a market order is valued at the last price. The live
            # broker refuses the same orders before sending them.
            notional = order.quantity * (order.price if order.price is not None else self._price)
            if notional < self.instrument.min_notional - 1e-9:
                return f"notional {notional:.2f} is below the minimum {self.instrument.min_notional:g} (Binance -4164; reduce-only orders are exempt)"
        if not self.config.check_margin or order.reduce_only:
            return None
        against = abs(pos) if (pos > 0) != (order.side is Side.BUY) and abs(pos) > _EPS else 0.0
        opening = max(order.quantity - against, 0.0)
        if opening <= _EPS:
            return None
        price = order.price if order.price is not None else self._price
        if not self.perpetual and order.side is Side.SELL:
            return f"spot: cannot sell {order.quantity:g}, holding {max(pos, 0.0):g}"
        need = opening * price / self.leverage
        free = self._available()
        if need > free + 1e-9:
            return f"margin is insufficient: needs {need:,.2f}, available {free:,.2f} (Binance -2019)"
        return None

    # --- open orders: the dict, the compiled book and the margin they hold change together ---------
    def _rest(self, order: Order, waiting: bool = False) -> None:
        """Put an open order at the back of the queue; ``waiting``: a taker waiting for the next open."""
        self._orders[order.client_id] = order
        self._book.add(order.client_id, order.price, order.side is Side.BUY, waiting)
        if waiting:
            self._pending.add(order.client_id)
        self._hold(order, 1.0)

    def _unrest(self, client_id: str) -> Order | None:
        """Take an order off the book (filled, canceled, expired); None if it was not open."""
        order = self._orders.pop(client_id, None)
        if order is not None:
            self._book.remove(client_id)
            self._pending.discard(client_id)
            if self._orders:
                self._hold(order, -1.0)
            else:  # nothing rests: start the running totals afresh (no rounding carried over)
                self._held = [0.0, 0.0, 0.0, 0.0]
        return order

    def _refill(self, before: Order, after: Order) -> None:
        """An order partly filled: same place in the queue, less left to hold margin for."""
        self._orders[after.client_id] = after
        self._hold(before, -1.0)
        self._hold(after, 1.0)

    def _hold(self, order: Order, sign: float) -> None:
        if order.reduce_only:
            return
        side = 0 if order.side is Side.BUY else 1
        if order.price is None:
            self._held[2 + side] += sign * order.remaining_qty
        else:
            self._held[side] += sign * order.remaining_qty * order.price

    # --- simulation ----------------------------------------------------------------------------
    def _crosses(self, order: Order) -> bool:
        """Would the limit order trade at once against the current price?"""
        if order.price is None:
            return True
        return order.price >= self._price if order.side is Side.BUY else order.price <= self._price

    def _expire_post_only(self, order: Order) -> None:
        reason = f"post-only {order.side.value} at {order.price} would cross {self._price} (GTX)"
        self._events.append(OrderEvent(order.transition(OrderStatus.EXPIRED, reason=reason, updated_ms=self._now)))

    def _changed(self) -> None:
        self._liq_cache = False
        # between bars (a margin change from on_bar) _i already names the next bar: the change
        # holds from the close of the bar that just ended
        bar = self._i if self._inside else max(self._i - 1, 0)
        self._liq_marks.append((bar, self.liquidation_price() or math.nan))

    def _fill(self, order: Order, price: float, maker: bool, liquidation: bool = False) -> None:
        bar = self._i
        pos = self._position
        qty = order.remaining_qty
        if self.config.max_volume_share is not None and not liquidation:
            cap = self.config.max_volume_share * float(self.bars.volume[bar]) - self._used.get(order.client_id, 0.0)
            qty = min(qty, self.instrument.round_qty(max(cap, 0.0)))
            if qty <= _EPS:
                return
        if order.reduce_only:
            if pos.is_flat or (pos.quantity > 0) == (order.side is Side.BUY):
                self._unrest(order.client_id)
                gone = order.transition(OrderStatus.EXPIRED, reason="reduce-only: no position left to reduce", updated_ms=self._now)
                self._events.append(OrderEvent(gone))
                return
            qty = min(qty, abs(pos.quantity))
        notional = qty * price
        before = pos.quantity
        closing = min(qty, abs(before)) if abs(before) > _EPS and (before > 0) != (order.side is Side.BUY) else 0.0
        if liquidation:
            # Binance: the clearance fee is charged on the liquidated notional but never more than
            # the margin left at the fill; the account never goes below zero (insurance fund).
            realized = closing * (price - pos.entry_price) * (1.0 if before > 0 else -1.0)
            left = (self._iso_margin if self.mode == "isolated" else self._account.wallet_balance) + realized
            fee = min(notional * self.config.liquidation_fee_rate, max(left, 0.0))
        else:
            fee = notional * (self.instrument.maker_fee if maker else self.instrument.taker_fee)
            left = 0.0
        self._trade_seq += 1
        fill = Fill(
            trade_id=f"sim-{self._trade_seq}",
            client_id=order.client_id,
            symbol=order.symbol,
            side=order.side,
            price=price,
            quantity=qty,
            fee=fee,
            ts_ms=int(self.bars.ts[bar]),
            is_maker=maker,
            is_liquidation=liquidation,
            tag=order.tag,
        )
        if self.mode == "isolated":
            if closing > 0:
                self._iso_margin -= self._iso_margin * closing / abs(before)
            self._iso_margin += (qty - closing) * price / self.leverage
        self._account.apply(fill)
        signed = fill.signed_qty
        cash = -signed * price - fee
        if liquidation:
            # A loss beyond the margin (a gap past the bankruptcy price) is the insurance fund's.
            shortfall = max(-left, 0.0)
            if shortfall > 0:
                self._account.wallet_balance += shortfall
                self.insurance += shortfall
                cash += shortfall
            self._iso_margin = 0.0
        elif pos.is_flat:
            self._iso_margin = 0.0
        self._cash_delta.append((bar, cash, signed))
        self._fill_bars.append(bar)
        self._used[order.client_id] = self._used.get(order.client_id, 0.0) + qty
        filled = order.filled_qty + qty
        avg = (order.avg_fill_price * order.filled_qty + price * qty) / filled
        done = order.quantity - filled <= self.instrument.lot_size / 2
        status = OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED
        after = order.transition(status, filled_qty=order.quantity if done else filled, avg_fill_price=avg, updated_ms=fill.ts_ms)
        if done:
            self._unrest(order.client_id)
        else:
            self._refill(order, after)
        self._events.append(FillEvent(fill, after))
        self._changed()

    def _liquidate(self, price: float) -> None:
        """Close the whole position at ``price`` (Binance cancels the symbol's open orders first)."""
        for client_id in list(self._orders):
            order = self._unrest(client_id)
            self._events.append(OrderEvent(order.transition(OrderStatus.CANCELED, reason="liquidation", updated_ms=self._now)))
        pos = self._position
        side = Side.SELL if pos.quantity > 0 else Side.BUY
        self._trade_seq += 1
        order = Order(
            client_id=f"liquidation-{self._trade_seq}",
            symbol=self.instrument.symbol,
            side=side,
            type=OrderType.MARKET,
            quantity=abs(pos.quantity),
            status=OrderStatus.NEW,
            created_ms=self._now,
            updated_ms=self._now,
            tag="liquidation",
        )
        self._rest(order)
        self.liquidations += 1
        self._fill(order, price, maker=False, liquidation=True)

    def _fund(self, bar: int) -> None:
        """Book the funding payments due at ``bar``'s open (Binance: nominal value x funding rate)."""
        while self._fk < len(self._fund_bar) and self._fund_bar[self._fk] <= bar:
            ts, rate = int(self._fund_ts[self._fk]), float(self._fund_rate[self._fk])
            self._fk += 1
            qty = self._position.quantity
            if abs(qty) < _EPS:
                continue
            mark = float(self.bars.open[bar])
            amount = qty * mark * rate  # > 0: paid by the account
            self._account.apply_funding(self.instrument.symbol, amount)
            if self.mode == "isolated":  # Binance books an isolated position's funding on its margin
                self._iso_margin -= amount
            self._cash_delta.append((bar, -amount, 0.0))
            self._funding_rows.append((ts, bar, rate, mark, qty, amount))
            self._changed()

    def _next_event(self) -> tuple[float, str, Order | None] | None:
        """The first thing that happens on the rest of the current segment: (price, kind, order).

        A resting order the price is already beyond (the rest of a volume-capped order) trades at
        the current price; otherwise buys trade from the highest down on a falling segment and
        sells from the lowest up on a rising one, by the fill model."""
        a, b = self._price, self._path[self._seg + 1]
        book = self._book
        best: tuple[float, str, Order | None] | None = None
        if book.size:
            strict = self.fill_model.strict
            slot, at = next_resting_fill(book.rows, book.size, a, b, strict, _EPS)
            if slot >= 0 and self.config.max_volume_share is not None:
                skipped = []  # orders that used up their share of this bar's volume cannot trade
                while slot >= 0 and self._exhausted(self._orders[book.ids[slot]]):
                    skipped.append(slot)
                    book.rows[slot, 2] = 3.0
                    slot, at = next_resting_fill(book.rows, book.size, a, b, strict, _EPS)
                book.rows[skipped, 2] = 1.0
            if slot >= 0:
                best = (at, "fill", self._orders[book.ids[slot]])
        liq = self.liquidation_price()
        if liq is not None and self._liq_reachable(liq):
            long = self._position.quantity > 0
            if long and b < a and b <= liq <= a + _EPS and (best is None or abs(liq - a) < abs(best[0] - a)):
                best = (liq, "liquidation", None)
            elif not long and b > a and a - _EPS <= liq <= b and (best is None or abs(liq - a) < abs(best[0] - a)):
                best = (liq, "liquidation", None)
        return best

    def _liq_reachable(self, liq: float) -> bool:
        """Does the current bar trigger a liquidation at ``liq`` (mark and last price both reach it)?"""
        low, high = self._liq_bounds()
        return bool(low[self._i] <= liq) if self._position.quantity > 0 else bool(high[self._i] >= liq)

    def _exhausted(self, order: Order) -> bool:
        cap = self.config.max_volume_share * float(self.bars.volume[self._i])
        return self.instrument.round_qty(max(cap - self._used.get(order.client_id, 0.0), 0.0)) <= _EPS

    def _at_open(self) -> None:
        """The path reached the open: funding, then takers that waited for it."""
        i = self._i
        if self._fk < len(self._fund_bar):
            self._fund(i)
        if not self._pending:
            return
        for client_id in [c for c in self._orders if c in self._pending]:
            order = self._orders.get(client_id)
            if order is None:
                continue
            self._pending.discard(client_id)
            self._book.set_waiting(client_id, False)
            if order.type is OrderType.MARKET or self._crosses(order):
                self._fill(order, self._price, maker=False)

    def _walk(self) -> bool:
        """Walk the current bar's path until an event (left in the queue: True) or the close (False).

        Only events queued during this call count: a caller that does not drain the queue between
        calls (a paper broker fed bar by bar) still moves forward."""
        queued = len(self._events)
        bar_low, bar_high = float(self.bars.low[self._i]), float(self.bars.high[self._i])
        look = self.skip_quiet_bars and self._seg >= 1  # past the open: the rest of the path lies inside the bar's range
        while self._seg < 4:
            if look:
                look = False
                if self._quiet(bar_low, bar_high):
                    self._seg = 4  # nothing can happen on the rest of this bar
                    break
            event = self._next_event()
            if event is not None:
                price, kind, order = event
                if self._seg == 0:  # the gap between bars: trade inside the new bar's range
                    price = min(max(price, bar_low), bar_high)
                self._price = price
                if kind == "liquidation":
                    self._liquidate(price)
                else:
                    self._fill(order, price, maker=True)
                if len(self._events) > queued:
                    return True
                continue
            self._seg += 1
            self._price = self._path[self._seg] if self._seg < 4 else self._price
            if self._seg == 1:
                self._at_open()
                if len(self._events) > queued:
                    return True
                look = self.skip_quiet_bars
        return False

    def _quiet(self, low: float, high: float) -> bool:
        """Can nothing happen between ``low`` and ``high``? (No resting order the fill model lets
        trade there, no liquidation price there, no taker waiting.) The bar-level test of
        :func:`.sim_path.first_event_bar`, used to finish a bar without walking its segments."""
        if self._pending:
            return False
        liq = self.liquidation_price()
        if liq is not None and self._liq_reachable(liq):
            return False
        if not self._orders:
            return True
        buy_max, sell_min, market = self._resting_bounds()
        if market:
            return False
        if self.fill_model.strict:
            return not (low < buy_max or high > sell_min)
        return not (low <= buy_max or high >= sell_min)

    def _resting_bounds(self) -> tuple[float, float, bool]:
        """The highest resting buy, the lowest resting sell, and whether a market order waits."""
        return resting_bounds(self._book.rows, self._book.size) if self._orders else (-np.inf, np.inf, False)

    def _next_wake(self, start: int, wake: np.ndarray | None) -> int:
        if wake is None:
            return start
        if self._wake_index is None:
            self._wake_index = np.flatnonzero(wake)
        k = int(self._wake_index.searchsorted(start))
        return int(self._wake_index[k]) if k < len(self._wake_index) else len(self.bars)

    def _skip(self, start: int, wake: np.ndarray | None) -> int:
        """First bar at or after ``start`` on which something can happen (compiled scan)."""
        if self._pending:
            return start
        stop = self._next_wake(start, wake)
        if not self._position.is_flat and self._fk < len(self._fund_bar):
            stop = min(stop, int(self._fund_bar[self._fk]))
        if stop <= start:
            return start
        buy_max, sell_min, market = self._resting_bounds()
        if market:
            return start
        liq = self.liquidation_price()
        qty = self._position.quantity
        liq_long = liq if liq is not None and qty > 0 else -np.inf
        liq_short = liq if liq is not None and qty < 0 else np.inf
        alert_low, alert_high = self._alert if self._alert is not None else (-np.inf, np.inf)
        bars = self.bars
        liq_low, liq_high = self._liq_bounds()
        return int(
            first_event_bar(
                bars.low,
                bars.high,
                liq_low,
                liq_high,
                start,
                stop,
                buy_max,
                sell_min,
                self.fill_model.strict,
                liq_long,
                liq_short,
                alert_low,
                alert_high,
            )
        )

    def advance(self, wake: np.ndarray | None) -> Step:
        bars, n = self.bars, len(self.bars)
        while self._i < n:
            if not self._inside:
                j = self._skip(self._i, wake)
                if j >= n:
                    self._i = n
                    break
                self._i = i = j
                prev = float(bars.close[i - 1]) if i > 0 else float(bars.open[i])
                self._path = bar_path(
                    prev, float(bars.open[i]), float(bars.high[i]), float(bars.low[i]), float(bars.close[i]), self.config.path
                )
                self._now = int(bars.ts[i])
                self._price = prev
                self._seg = 0
                self._inside = True
                self._used.clear()
            i = self._i
            if self._walk():
                return Step(i, False)
            self._inside = False
            self._price = float(bars.close[i])
            self._i = i + 1
            alert = self._alert is not None and (bars.low[i] <= self._alert[0] or bars.high[i] >= self._alert[1])
            if alert:
                self._alert = None
            if wake is None or wake[i] or alert:
                return Step(i, True, alert)
        return Step(n, True)

    # --- results ----------------------------------------------------------------------------
    def equity_curve(self) -> np.ndarray:
        n = len(self.bars)
        cash = np.zeros(n)
        qty = np.zeros(n)
        if self._cash_delta:
            rows = np.asarray(self._cash_delta)
            np.add.at(cash, rows[:, 0].astype(np.int64), rows[:, 1])
            np.add.at(qty, rows[:, 0].astype(np.int64), rows[:, 2])
        # equity = wallet + qty * (close - entry) = (initial + sum of -qty*price - fee - funding) + qty * close
        return self.config.initial_cash + np.cumsum(cash) + np.cumsum(qty) * self.bars.close

    def fill_bar_indices(self) -> np.ndarray:
        return np.asarray(self._fill_bars, dtype=np.int64)

    def bar_series(self) -> dict[str, np.ndarray]:
        """Per-bar liquidation price (NaN when flat or unreachable) at each bar's close."""
        n = len(self.bars)
        liq = np.full(n, np.nan)
        if self._liq_marks:
            marks = np.asarray(self._liq_marks)
            bars = marks[:, 0].astype(np.int64)
            last = np.r_[bars[1:] != bars[:-1], True]  # the last mark of each bar holds at its close
            idx = np.zeros(n, dtype=np.int64) - 1
            idx[bars[last]] = np.flatnonzero(last)
            idx = np.maximum.accumulate(idx)
            have = idx >= 0
            liq[have] = marks[idx[have], 1]
        return {"liquidation_price": liq}

    def funding_payments(self) -> pd.DataFrame:
        """One row per funding payment: ts, bar, rate, mark, position, amount (> 0 = paid)."""
        if not self._funding_rows:  # most runs: a copy of the one empty frame built per process
            return _no_funding().copy()
        frame = pd.DataFrame(self._funding_rows, columns=["ts", "bar", "rate", "mark", "position", "amount"])
        frame["ts"] = pd.to_datetime(frame["ts"].astype("int64"), unit="ms", utc=True)
        return frame


@lru_cache(maxsize=1)
def _no_funding() -> pd.DataFrame:
    frame = pd.DataFrame([], columns=["ts", "bar", "rate", "mark", "position", "amount"])
    frame["ts"] = pd.to_datetime(frame["ts"].astype("int64"), unit="ms", utc=True)
    return frame

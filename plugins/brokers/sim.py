"""``sim``: the native simulated broker for backtests, and the ``through``/``touch`` fill models.

Execution rules:

* A market order fills at the open of the bar after the one on which it was placed, paying the
  taker fee (Backtrader's default, so the two give the same trades).
* A resting limit order fills when the bar's range reaches it by the fill model (``through``:
  low < price for a buy; ``touch``: low <= price), at its limit price, paying the maker fee; a bar
  that opens beyond the limit fills it at the limit as well (a resting order trades at its own
  price).
* A post-only order whose price would cross the last price when it arrives is expired without
  trading, as Binance's GTX time-in-force does.

Bars on which no order rests and which the strategy does not need are skipped without a Python
loop (``np.searchsorted`` over the wake flags).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from btc_quant.sdk import (
    THROUGH,
    TOUCH,
    Account,
    BarArrays,
    BrokerConfig,
    Fill,
    FillEvent,
    Order,
    OrderEvent,
    OrderStatus,
    OrderType,
    Side,
    SimulatedBroker,
    Step,
    hookimpl,
    registered,
)


class SimConfig(BrokerConfig):
    initial_cash: float = Field(10_000.0, gt=0, description="starting wallet balance in the quote currency (USDT)")
    fill_model: registered("fill_model") = Field("through", description="rule for resting limit orders: through (default) or touch")


class SimBroker(SimulatedBroker):
    """Native backtest broker: next-open market fills, fill-model limit fills, taker/maker fees."""

    Config: ClassVar[type[SimConfig]] = SimConfig

    def __init__(self, config: SimConfig, runtime) -> None:
        super().__init__(config, runtime)
        self.fill_model = runtime.registry.get("fill_model", config.fill_model, key="broker.fill_model").factory
        self._account = Account(config.initial_cash)
        self._orders: dict[str, Order] = {}  # open orders by client id, oldest first
        self._events: list = []
        self._fill_bars: list[int] = []
        self._cash_delta: list[tuple[int, float, float]] = []  # (bar, cash change, qty change)
        self._trade_seq = 0
        self._i = 0  # bar being processed
        self._stage = 0  # 0: bar not opened, 1: opened (market orders filled), 2: closed
        self._price = float("nan")
        self._now = 0
        self._alert: tuple[float, float] | None = None

    # --- data ----------------------------------------------------------------------------
    def load(self, bars: BarArrays) -> None:
        self.bars = bars
        self._price = float(bars.open[0])
        self._now = int(bars.ts[0])
        self._wake_index: np.ndarray | None = None

    # --- Broker API ------------------------------------------------------------------------
    def submit(self, order: Order) -> None:
        if order.post_only and order.price is not None:
            crosses = order.price >= self._price if order.side is Side.BUY else order.price <= self._price
            if crosses:
                self._events.append(
                    OrderEvent(order.transition(OrderStatus.EXPIRED, reason=f"post-only {order.side.value} at {order.price} would cross {self._price}", updated_ms=self._now))
                )
                return
        accepted = order.transition(OrderStatus.NEW, updated_ms=self._now)
        self._orders[order.client_id] = accepted
        self._events.append(OrderEvent(accepted))

    def cancel(self, client_id: str) -> None:
        order = self._orders.pop(client_id, None)
        if order is not None:
            self._events.append(OrderEvent(order.transition(OrderStatus.CANCELED, updated_ms=self._now)))

    def set_price_alert(self, low: float | None, high: float | None) -> None:
        if low is None and high is None:
            self._alert = None
        else:
            self._alert = (-np.inf if low is None else low, np.inf if high is None else high)

    def _alert_bar(self, start: int, stop: int) -> int:
        """First bar in [start, stop) that reaches the alert band, or stop."""
        if self._alert is None or start >= stop:
            return stop
        low, high = self._alert
        hit = np.flatnonzero((self.bars.low[start:stop] <= low) | (self.bars.high[start:stop] >= high))
        return start + int(hit[0]) if len(hit) else stop

    def events(self) -> list:
        events, self._events = self._events, []
        return events

    def open_orders(self) -> list[Order]:
        return list(self._orders.values())

    def account(self) -> Account:
        return self._account

    def equity(self) -> float:
        return self._account.equity({self.instrument.symbol: self._price})

    @property
    def now_ms(self) -> int:
        return self._now

    @property
    def last_price(self) -> float:
        return self._price

    # --- simulation ----------------------------------------------------------------------------
    def _fill(self, order: Order, price: float, bar: int, maker: bool) -> None:
        fee_rate = self.instrument.maker_fee if maker else self.instrument.taker_fee
        qty = order.remaining_qty
        self._trade_seq += 1
        fill = Fill(
            trade_id=f"sim-{self._trade_seq}",
            client_id=order.client_id,
            symbol=order.symbol,
            side=order.side,
            price=price,
            quantity=qty,
            fee=qty * price * fee_rate,
            ts_ms=int(self.bars.ts[bar]),
            is_maker=maker,
            tag=order.tag,
        )
        self._account.apply(fill)
        self._cash_delta.append((bar, -fill.signed_qty * price - fill.fee, fill.signed_qty))
        self._fill_bars.append(bar)
        done = order.transition(OrderStatus.FILLED, filled_qty=order.quantity, avg_fill_price=price, updated_ms=fill.ts_ms)
        del self._orders[order.client_id]
        self._events.append(FillEvent(fill, done))

    def _next_wake(self, start: int, wake: np.ndarray | None) -> int:
        if wake is None:
            return start
        if self._wake_index is None:
            self._wake_index = np.flatnonzero(wake)
        k = int(np.searchsorted(self._wake_index, start))
        return int(self._wake_index[k]) if k < len(self._wake_index) else len(self.bars)

    def advance(self, wake: np.ndarray | None) -> Step:
        bars, n = self.bars, len(self.bars)
        while self._i < n:
            i = self._i
            if self._stage == 0:
                if not self._orders:  # nothing can happen until the next wake or alert bar
                    j = self._alert_bar(i, self._next_wake(i, wake))
                    if j >= n:
                        self._i = n
                        break
                    i = self._i = j
                self._now = int(bars.ts[i])
                self._price = float(bars.open[i])
                self._stage = 1
                for order in [o for o in self._orders.values() if o.type is OrderType.MARKET]:
                    self._fill(order, self._price, i, maker=False)
                if self._events:
                    return Step(i, False)
            if self._stage == 1:
                low, high = float(bars.low[i]), float(bars.high[i])
                for order in [o for o in self._orders.values() if o.type is OrderType.LIMIT]:
                    if order.side is Side.BUY and self.fill_model.buy_fills(order.price, low):
                        self._fill(order, order.price, i, maker=True)
                    elif order.side is Side.SELL and self.fill_model.sell_fills(order.price, high):
                        self._fill(order, order.price, i, maker=True)
                self._price = float(bars.close[i])
                self._stage = 2
                if self._events:
                    return Step(i, False)
            self._stage = 0
            self._i = i + 1
            alert = self._alert is not None and (bars.low[i] <= self._alert[0] or bars.high[i] >= self._alert[1])
            if alert:
                self._alert = None
            if wake is None or wake[i] or alert:
                return Step(i, True, alert)
        return Step(n, True)

    def equity_curve(self) -> np.ndarray:
        n = len(self.bars)
        cash = np.zeros(n)
        qty = np.zeros(n)
        if self._cash_delta:
            rows = np.asarray(self._cash_delta)
            np.add.at(cash, rows[:, 0].astype(np.int64), rows[:, 1])
            np.add.at(qty, rows[:, 0].astype(np.int64), rows[:, 2])
        # equity = wallet + qty * (close - entry) = (initial + sum of -qty*price - fee) + qty * close
        return self.config.initial_cash + np.cumsum(cash) + np.cumsum(qty) * self.bars.close

    def fill_bar_indices(self) -> np.ndarray:
        return np.asarray(self._fill_bars, dtype=np.int64)


@hookimpl
def quant_register_brokers(register):
    register("sim", SimBroker)


@hookimpl
def quant_register_fill_models(register):
    register("through", THROUGH)
    register("touch", TOUCH)

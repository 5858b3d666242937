"""Standard pre-trade risk checks and kill switches.

Enable them in order with ``risk.checks=...`` and set each one's limits under ``risk.<name>``::

    quant run risk.checks=max_notional,price_band,max_drawdown risk.max_drawdown.limit=0.25 risk.max_drawdown.flatten=true

Pre-trade checks (refuse one order, with the rule and the numbers):
``max_notional``, ``max_open_orders``, ``max_leverage``, ``price_band``, ``max_order_rate``.
Kill switches (watch equity; once tripped, only reduce-only orders pass, optionally flatten):
``daily_loss``, ``max_drawdown``. Reduce-only orders are never refused by the pre-trade checks:
they can only lower exposure.
"""

from __future__ import annotations

from collections import deque

from btc_quant.sdk import Duration, Field, KillSwitch, RiskCheck, RiskCheckConfig, Side, hookimpl

DAY_MS = 86_400_000


def _position_after(order, state) -> float:
    return state.position.quantity + (order.quantity if order.side is Side.BUY else -order.quantity)


def _price(order, state) -> float:
    return order.price if order.price is not None else state.last_price


class MaxNotionalConfig(RiskCheckConfig):
    limit: float = Field(100_000.0, gt=0, description="largest absolute position notional allowed, in quote currency")


class MaxNotional(RiskCheck):
    """Refuse orders that would take the position notional above ``limit``."""

    Config = MaxNotionalConfig

    def check(self, order, state):
        if order.closes_only:
            return None
        notional = abs(_position_after(order, state)) * _price(order, state)
        if notional > self.config.limit:
            return f"position notional would be {notional:,.2f} > limit {self.config.limit:,.2f}"
        return None


class MaxOpenOrdersConfig(RiskCheckConfig):
    limit: int = Field(200, ge=1, description="most orders open at once (Binance USD-M allows 200 per symbol)")


class MaxOpenOrders(RiskCheck):
    """Refuse a new order when ``limit`` orders are already open."""

    Config = MaxOpenOrdersConfig

    def check(self, order, state):
        if not order.closes_only and len(state.open_orders) >= self.config.limit:
            return f"{len(state.open_orders)} orders open >= limit {self.config.limit}"
        return None


class MaxLeverageConfig(RiskCheckConfig):
    limit: float = Field(20.0, gt=0, description="largest position notional / equity allowed")


class MaxLeverage(RiskCheck):
    """Refuse orders that would take position notional / equity above ``limit``."""

    Config = MaxLeverageConfig

    def check(self, order, state):
        if order.closes_only:
            return None
        notional = abs(_position_after(order, state)) * _price(order, state)
        if state.equity <= 0:
            return f"equity is {state.equity:,.2f}; no new exposure allowed"
        leverage = notional / state.equity
        if leverage > self.config.limit:
            return f"effective leverage would be {leverage:.2f}x > limit {self.config.limit:g}x (notional {notional:,.2f}, equity {state.equity:,.2f})"
        return None


class PriceBandConfig(RiskCheckConfig):
    pct: float = Field(0.10, gt=0, lt=1, description="largest distance of a limit price from the last price, as a fraction")


class PriceBand(RiskCheck):
    """Refuse limit orders priced more than ``pct`` away from the last price (fat fingers)."""

    Config = PriceBandConfig

    def check(self, order, state):
        if order.price is None or not state.last_price > 0:
            return None
        distance = abs(order.price / state.last_price - 1.0)
        if distance > self.config.pct + 1e-12:  # at the band edge is inside
            return f"limit {order.price:,.2f} is {distance:.2%} from the last price {state.last_price:,.2f} > band {self.config.pct:.2%}"
        return None


class MaxOrderRateConfig(RiskCheckConfig):
    limit: int = Field(100, ge=1, description="most new orders within one window")
    window: Duration = Field("10s", description="length of the rolling window")


class MaxOrderRate(RiskCheck):
    """Refuse new orders beyond ``limit`` per rolling ``window`` (exchange rate limits, runaway loops)."""

    Config = MaxOrderRateConfig

    def __init__(self, config=None):
        super().__init__(config)
        self._times: deque[int] = deque()

    def check(self, order, state):
        window_ms = int(self.config.window.total_seconds() * 1000)
        while self._times and self._times[0] <= state.now_ms - window_ms:
            self._times.popleft()
        if len(self._times) >= self.config.limit and not order.closes_only:
            return f"{len(self._times)} orders in the last {self.config.window.total_seconds():g}s >= limit {self.config.limit}"
        self._times.append(state.now_ms)
        return None


class DailyLossConfig(RiskCheckConfig):
    limit: float = Field(0.05, gt=0, lt=1, description="loss since the start of the UTC day, as a fraction of that day's first equity")
    flatten: bool = Field(False, description="also cancel all orders and close the position when tripped")


class DailyLoss(RiskCheck):
    """Kill switch: halt when equity falls ``limit`` below its level at the start of the UTC day."""

    Config = DailyLossConfig

    def __init__(self, config=None):
        super().__init__(config)
        self._day = None
        self._start = 0.0

    def observe(self, state):
        day = state.now_ms // DAY_MS
        if day != self._day:
            self._day, self._start = day, state.equity
        if self._start > 0 and state.equity < self._start * (1.0 - self.config.limit):
            loss = 1.0 - state.equity / self._start
            return KillSwitch(
                f"daily loss {loss:.2%} > limit {self.config.limit:.2%} (equity {state.equity:,.2f}, day start {self._start:,.2f})",
                self.config.flatten,
            )
        return None


class MaxDrawdownConfig(RiskCheckConfig):
    limit: float = Field(0.20, gt=0, lt=1, description="fall of equity from its peak, as a fraction")
    flatten: bool = Field(False, description="also cancel all orders and close the position when tripped")


class MaxDrawdown(RiskCheck):
    """Kill switch: halt when equity falls ``limit`` below its running peak."""

    Config = MaxDrawdownConfig

    def __init__(self, config=None):
        super().__init__(config)
        self._peak = 0.0

    def observe(self, state):
        self._peak = max(self._peak, state.equity)
        if self._peak > 0 and state.equity < self._peak * (1.0 - self.config.limit):
            drawdown = 1.0 - state.equity / self._peak
            return KillSwitch(
                f"drawdown {drawdown:.2%} > limit {self.config.limit:.2%} (equity {state.equity:,.2f}, peak {self._peak:,.2f})",
                self.config.flatten,
            )
        return None


@hookimpl
def quant_register_risk_checks(register):
    register("max_notional", MaxNotional)
    register("max_open_orders", MaxOpenOrders)
    register("max_leverage", MaxLeverage)
    register("price_band", PriceBand)
    register("max_order_rate", MaxOrderRate)
    register("daily_loss", DailyLoss)
    register("max_drawdown", MaxDrawdown)

"""Standard pre-trade risk checks.

``max_notional``: refuses an order that would take the position's notional above a limit.
``max_open_orders``: refuses a new order when that many are already open.
"""

from __future__ import annotations

from btc_quant.sdk import Field, RiskCheck, RiskCheckConfig, Side, hookimpl


class MaxNotionalConfig(RiskCheckConfig):
    limit: float = Field(100_000.0, gt=0, description="largest absolute position notional allowed, in quote currency")


class MaxNotional(RiskCheck):
    """Refuse orders that would take the position notional above ``limit``."""

    Config = MaxNotionalConfig

    def check(self, order, state):
        if order.reduce_only:
            return None
        price = order.price if order.price is not None else state.last_price
        after = state.position.quantity + (order.quantity if order.side is Side.BUY else -order.quantity)
        notional = abs(after) * price
        if notional > self.config.limit:
            return f"position notional would be {notional:,.2f} > limit {self.config.limit:,.2f}"
        return None


class MaxOpenOrdersConfig(RiskCheckConfig):
    limit: int = Field(200, ge=1, description="most orders open at once (Binance USD-M allows 200 per symbol)")


class MaxOpenOrders(RiskCheck):
    """Refuse a new order when ``limit`` orders are already open."""

    Config = MaxOpenOrdersConfig

    def check(self, order, state):
        if len(state.open_orders) >= self.config.limit:
            return f"{len(state.open_orders)} orders open >= limit {self.config.limit}"
        return None


@hookimpl
def quant_register_risk_checks(register):
    register("max_notional", MaxNotional)
    register("max_open_orders", MaxOpenOrders)

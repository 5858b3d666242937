"""Standard risk checks: each refuses with its rule and numbers; kill switches halt and flatten."""

import numpy as np

from btc_quant.core.instruments import instrument_for
from btc_quant.core.model import Order, Position
from btc_quant.core.risk import RiskState
from btc_quant.plugins.risk import standard
from btc_quant.sdk import Strategy
from btc_quant.sdk.testing import run_strategy

PERP = instrument_for("binanceusdm", "BTC/USDT:USDT")


def state(position=0.0, equity=10_000.0, price=40_000.0, now_ms=0, open_orders=()):
    pos = Position(PERP.symbol, quantity=position, entry_price=price if position else 0.0)
    return RiskState(PERP, pos, equity, tuple(open_orders), price, now_ms)


def order(side="buy", qty=0.01, price=None, reduce_only=False, cid="c1"):
    return Order.create(PERP, cid, side, qty, price, reduce_only=reduce_only, check_notional=False)


def test_max_notional_counts_the_position_after_the_order():
    check = standard.MaxNotional(standard.MaxNotionalConfig(limit=10_000))
    assert check.check(order(qty=0.2), state(position=0.0)) is None  # 8,000
    assert check.check(order(qty=0.1), state(position=0.2)) == "position notional would be 12,000.00 > limit 10,000.00"
    assert check.check(order(side="sell", qty=0.3, reduce_only=True), state(position=0.3)) is None


def test_max_leverage_uses_equity():
    check = standard.MaxLeverage(standard.MaxLeverageConfig(limit=3))
    assert check.check(order(qty=0.7), state(equity=10_000)) is None  # 2.8x
    reason = check.check(order(qty=0.8), state(equity=10_000))
    assert reason.startswith("effective leverage would be 3.20x > limit 3x")


def test_price_band_refuses_fat_fingers_both_ways():
    check = standard.PriceBand(standard.PriceBandConfig(pct=0.05))
    assert check.check(order(price=38_000.0), state()) is None
    assert check.check(order(price=37_900.0), state()) == "limit 37,900.00 is 5.25% from the last price 40,000.00 > band 5.00%"
    assert "from the last price" in check.check(order(side="sell", price=42_100.0), state())
    assert check.check(order(), state()) is None  # market orders have no price


def test_max_open_orders():
    check = standard.MaxOpenOrders(standard.MaxOpenOrdersConfig(limit=2))
    resting = [order(price=39_000.0, cid="a"), order(price=39_100.0, cid="b")]
    assert check.check(order(price=39_200.0), state(open_orders=resting[:1])) is None
    assert check.check(order(price=39_200.0), state(open_orders=resting)) == "2 orders open >= limit 2"


def test_max_order_rate_is_a_rolling_window():
    check = standard.MaxOrderRate(standard.MaxOrderRateConfig(limit=3, window="10s"))
    results = [check.check(order(cid=f"o{t}"), state(now_ms=t)) for t in (0, 1_000, 2_000, 3_000, 10_500, 10_900)]
    assert results[:3] == [None, None, None]
    assert results[3] == "3 orders in the last 10s >= limit 3"  # refused orders do not count
    assert results[4] is None  # the order at 0 left the window
    assert results[5] == "3 orders in the last 10s >= limit 3"  # 1000, 2000, 10500 are inside


def test_drawdown_and_daily_loss_switches_trip_with_numbers():
    dd = standard.MaxDrawdown(standard.MaxDrawdownConfig(limit=0.1, flatten=True))
    assert dd.observe(state(equity=10_000)) is None
    assert dd.observe(state(equity=12_000)) is None
    switch = dd.observe(state(equity=10_700))
    assert switch.flatten and switch.reason == "drawdown 10.83% > limit 10.00% (equity 10,700.00, peak 12,000.00)"
    daily = standard.DailyLoss(standard.DailyLossConfig(limit=0.05))
    assert daily.observe(state(equity=10_000, now_ms=1_000)) is None
    assert daily.observe(state(equity=9_600, now_ms=2_000)) is None
    assert daily.observe(state(equity=9_400, now_ms=3_000)).reason.startswith("daily loss 6.00% > limit 5.00%")
    assert daily.observe(state(equity=9_400, now_ms=86_400_000 + 5)) is None  # a new day starts afresh


class AlwaysLong(Strategy):
    """Buys 0.2 BTC whenever flat and nothing is pending; records rejections."""

    def on_start(self, ctx):
        self.rejected = []

    def on_bar(self, ctx, bar):
        if ctx.position.is_flat and not ctx.open_orders and not self.rejected:
            ctx.buy(0.2)

    def on_order(self, ctx, order):
        if order.status.value == "rejected":
            self.rejected.append(order.reason)


def test_kill_switch_halts_new_orders_and_flattens(sample_bars):
    from conftest import registering

    from btc_quant.core.plugins import load_plugins

    box = {}

    class Spy(AlwaysLong):
        def on_start(self, ctx):
            super().on_start(ctx)
            box["s"] = self

    pm = load_plugins(env={"QUANT_LOAD_PLUGINS": "sim,risk"}, extra={"s": registering("quant_register_strategies", spy=Spy)})
    # Jan 2022: BTC fell from ~47k to ~35k; a 0.2 BTC long on 10k equity loses > 3% quickly
    result = run_strategy(
        "spy",
        sample_bars[:20_000],
        "risk.checks=max_drawdown",
        "risk.max_drawdown.limit=0.03",
        "risk.max_drawdown.flatten=true",
        plugins=pm,
    )
    fills = result.fills
    assert list(fills.side) == ["buy", "sell"]  # bought once, flattened once, never bought again
    assert fills.tag.iloc[-1] == "flatten"
    equity = result.equity.to_numpy()
    flat_bar = fills.bar.iloc[-1]
    peak = max(10_000.0, equity[:flat_bar].max())
    assert equity[flat_bar - 1] < peak * 0.97  # the drawdown existed before the flatten
    assert np.allclose(equity[flat_bar:], equity[flat_bar])  # flat afterwards: equity stops moving
    assert box["s"].rejected == [] or box["s"].rejected[0].startswith("kill switch engaged: max_drawdown: drawdown")

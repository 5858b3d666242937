"""The sim broker's execution rules: intrabar path, fill models, post-only, reduce-only, amend,
partial fills, margin checks, liquidation and funding, on hand-made bars whose outcome is
computed by hand (and on the bundled real sample where noted)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from conftest import registering

from btc_quant.core.plugins import load_plugins
from btc_quant.sdk import Order, Side, Store, Strategy
from btc_quant.sdk.testing import bars_from, run_strategy

_names = itertools.count()


def scripted(bar_actions=None, on_fill=None, on_start=None):
    """A strategy running ``bar_actions[i](ctx)`` after bar ``i`` closed and ``on_fill(ctx, fill)``
    on fills; returns (class, log) where log collects what the strategy was told."""
    log: list = []

    class Script(Strategy):
        name = f"script{next(_names)}"

        def on_start(self, ctx):
            self.index = -1
            if on_start:
                on_start(ctx)

        def on_bar(self, ctx, bar):
            self.index += 1
            action = (bar_actions or {}).get(self.index)
            if action:
                action(ctx)

        def on_fill(self, ctx, fill):
            log.append(("fill", fill.side.value, fill.price, fill.quantity, fill.is_maker, fill.is_liquidation, fill.tag))
            if on_fill:
                on_fill(ctx, fill)

        def on_order(self, ctx, order):
            log.append(("order", order.client_id, order.status.value, order.reason))

    return Script, log


def run(bars, script, *settings):
    return run_strategy(script, bars_from(bars), "instrument.min_notional=0", "broker.funding=off", *settings)


def fills_of(log):
    return [e[1:] for e in log if e[0] == "fill"]


def statuses(log):
    return [(e[1], e[2]) for e in log if e[0] == "order"]


# --- path and fill models -------------------------------------------------------------------

FLAT = (100.0, 100.0, 100.0, 100.0)


def test_nearest_extreme_comes_first_and_a_take_profit_fills_later_in_the_same_bar():
    # bar 1: open 100, low 97 (nearer), high 106, close 104 -> path 100, 97, 106, 104
    def place(ctx):
        ctx.buy(1, 98, tag="entry")
        ctx.sell(1, 103, tag="above")  # only a short entry; must fill after the buy

    def take_profit(ctx, fill):
        if fill.tag == "entry":
            ctx.sell(1, 99, tag="tp")  # placed at 98 on the way down: fills on the way up to 106

    script, log = scripted({0: place}, on_fill=take_profit)
    result = run([FLAT, (100, 106, 97, 104)], script)
    assert [(f[0], f[1], f[5]) for f in fills_of(log)] == [("buy", 98.0, "entry"), ("sell", 99.0, "tp"), ("sell", 103.0, "above")]
    assert all(f[3] for f in fills_of(log))  # all maker
    assert result.fills.bar.tolist() == [1, 1, 1]


def test_direction_path_goes_high_first_on_a_falling_bar():
    # bar 1 falls (close < open) with the low nearer the open: nearest -> low first, direction -> high first
    def place(ctx):
        ctx.buy(1, 98, tag="buy")
        ctx.sell(1, 104, tag="sell")

    bars = [FLAT, (100, 105, 97, 98)]
    nearest, log1 = scripted({0: place})
    run(bars, nearest)
    direction, log2 = scripted({0: place})
    run(bars, direction, "broker.path=direction")
    assert [f[5] for f in fills_of(log1)] == ["buy", "sell"]
    assert [f[5] for f in fills_of(log2)] == ["sell", "buy"]


@pytest.mark.parametrize("model, fills", [("through", 0), ("touch", 1)])
def test_a_limit_at_the_low_fills_only_with_touch(model, fills):
    script, log = scripted({0: lambda ctx: ctx.buy(1, 97)})
    run([FLAT, (100, 101, 97, 100)], script, f"broker.fill_model={model}")
    assert len(fills_of(log)) == fills


def test_market_order_fills_at_next_open_and_mid_bar_at_the_path_price():
    def react(ctx, fill):
        if fill.tag == "entry":
            ctx.sell(1, tag="exit")  # market, placed during bar 2 at the buy's price on the path

    script, log = scripted({0: lambda ctx: ctx.buy(1, tag="open"), 1: lambda ctx: ctx.buy(1, 95, tag="entry")}, on_fill=react)
    result = run([FLAT, (101, 102, 100, 101), (101, 103, 94, 99)], script)
    assert [(f[0], f[1], f[3], f[5]) for f in fills_of(log)] == [
        ("buy", 101.0, False, "open"),
        ("buy", 95.0, True, "entry"),
        ("sell", 95.0, False, "exit"),
    ]
    assert result.fills.fee.tolist() == pytest.approx([101 * 0.0005, 95 * 0.0002, 95 * 0.0005])


def test_a_resting_limit_jumped_over_by_a_gap_fills_at_its_price_clipped_into_the_bar():
    # close 100, next bar opens at 95 and never trades above 96: a buy at 98 fills at 96 (bar high)
    script, log = scripted({0: lambda ctx: ctx.buy(1, 98)})
    run([FLAT, (95, 96, 94, 95)], script)
    assert fills_of(log)[0][:2] == ("buy", 96.0)


def test_post_only_that_would_cross_expires_and_the_strategy_is_told():
    def place(ctx):
        ctx.buy(1, 100.5, post_only=True, client_id="gtx")  # above the last price 100
        ctx.buy(1, 99, post_only=True, client_id="ok")

    script, log = scripted({0: place})
    result = run([FLAT, (100, 100, 98, 99)], script)
    expired = [e for e in log if e[0] == "order" and e[1] == "gtx"]
    assert expired[0][2] == "expired" and "post-only" in expired[0][3]
    assert [f[:3] for f in fills_of(log)] == [("buy", 99.0, 1.0)]
    assert result.fills.is_maker.all()


def test_post_only_placed_mid_bar_is_checked_against_the_path_price():
    def react(ctx, fill):
        ctx.sell(1, 97.5, post_only=True, client_id="tp")  # price is 98 now: would cross

    script, log = scripted({0: lambda ctx: ctx.buy(1, 98)}, on_fill=react)
    run([FLAT, (100, 101, 96, 100)], script)
    assert ("tp", "expired") in statuses(log)


def test_reduce_only_is_refused_when_flat_and_cut_to_the_position():
    def first(ctx):
        ctx.sell(1, reduce_only=True, client_id="nothing")
        ctx.buy(1, client_id="long")

    def second(ctx):
        ctx.sell(3, 101, reduce_only=True, client_id="close")

    script, log = scripted({0: first, 1: second})
    result = run([FLAT, FLAT, (100, 102, 100, 101)], script)
    assert ("nothing", "rejected") in statuses(log)
    assert [f[:3] for f in fills_of(log)] == [("buy", 100.0, 1.0), ("sell", 101.0, 1.0)]
    assert result.position.iloc[-1] == 0


def test_amend_moves_the_order_and_it_can_only_fill_after_the_amend():
    def place(ctx):
        ctx.buy(1, 90, client_id="b")

    def move(ctx):
        ctx.amend("b", price=97)

    script, log = scripted({0: place, 1: move})
    run([FLAT, (100, 100, 96, 99), (99, 100, 96.5, 99)], script)
    # bar 1 reached 96 while the order was at 90: no fill; amended to 97, bar 2 trades through it
    assert [f[:2] for f in fills_of(log)] == [("buy", 97.0)]
    assert ("b", "new") in statuses(log)


def test_amending_a_post_only_order_across_the_market_expires_it():
    def place(ctx):
        ctx.sell(1, 105, post_only=True, client_id="s")

    script, log = scripted({0: place, 1: lambda ctx: ctx.amend("s", price=99)})
    result = run([FLAT, FLAT, FLAT], script)
    assert statuses(log)[-1] == ("s", "expired") and result.fills.empty


def test_volume_cap_gives_partial_fills_across_bars():
    script, log = scripted({0: lambda ctx: ctx.buy(1, 99, client_id="b")})
    bars = [(100, 100, 100, 100, 10), (100, 100, 98, 99, 4), (99, 99, 98, 98, 4), (98, 98, 97, 97, 10)]
    result = run(bars, script, "broker.max_volume_share=0.1")
    assert result.fills.quantity.tolist() == pytest.approx([0.4, 0.4, 0.2])
    assert result.orders.set_index("client_id").loc["b", "status"] == "filled"
    assert result.orders.set_index("client_id").loc["b", "filled_qty"] == pytest.approx(1.0)


# --- margin ---------------------------------------------------------------------------------


def test_an_order_beyond_the_available_margin_is_rejected():
    # 10,000 USDT at 20x buys at most 200,000 of notional: 2,100 BTC-units at 100 is 210,000
    script, log = scripted({0: lambda ctx: (ctx.buy(2100, client_id="big"), ctx.buy(1900, client_id="fits"))})
    run([FLAT, FLAT], script)
    assert ("big", "rejected") in statuses(log) and ("fits", "new") in statuses(log)
    reason = [e[3] for e in log if e[0] == "order" and e[1] == "big"][0]
    assert "margin is insufficient" in reason


def test_an_order_below_the_minimum_notional_is_refused_unless_it_is_reduce_only():
    """Binance -4164 "Order's notional must be no smaller than 100 (unless you choose reduce
    only)": the sim refuses what the live broker refuses before sending (orders that OrderSync
    makes skip ``ctx.buy``'s own check), and closes a small remainder reduce-only."""

    def first(ctx):
        ctx.buy(2, client_id="long")

    def second(ctx):
        ctx.submit(Order.create(ctx.instrument, "small", Side.BUY, 0.5, 99.0, check_notional=False))
        ctx.sell(0.5, reduce_only=True, client_id="close")

    script, log = scripted({0: first, 1: second})
    result = run_strategy(script, bars_from([FLAT] * 4), "instrument.min_notional=100", "broker.funding=off")
    assert ("small", "rejected") in statuses(log)
    reason = [e[3] for e in log if e[0] == "order" and e[1] == "small"][0]
    assert "below the minimum 100" in reason and "-4164" in reason
    assert [f[:3] for f in fills_of(log)] == [("buy", 100.0, 2.0), ("sell", 100.0, 0.5)]
    assert result.position.iloc[-1] == pytest.approx(1.5)


def test_spot_cannot_sell_what_it_does_not_hold():
    script, log = scripted({0: lambda ctx: ctx.sell(1, client_id="short")})
    run_strategy(script, bars_from([FLAT, FLAT]), "exchange=binance", "symbol=BTC/USDT", "instrument.min_notional=0")
    assert ("short", "rejected") in statuses(log)


PERP = [(40000, 40000, 40000, 40000)] * 2


def test_isolated_long_is_liquidated_at_binances_price_losing_exactly_its_margin():
    # 0.1 BTC at 40,000, 10x isolated: margin 400, bracket 1 (mmr 0.4%, cum 0)
    # LP = (WB + cum - Q*EP) / (Q*mmr - Q) = (400 - 4000) / (0.0004 - 0.1) = 3600 / 0.0996
    lp = 3600 / 0.0996
    seen = {}

    def enter(ctx):
        ctx.set_margin_mode("isolated")
        ctx.set_leverage(10)
        ctx.buy(0.1)
        ctx.sell(0.1, 45000, client_id="tp")

    def look(ctx, fill):
        if not fill.is_liquidation:
            seen["margin"] = ctx.margin

    script, log = scripted({0: enter}, on_fill=look)
    bars = PERP + [(40000, 40100, 39000, 39500), (39500, 39600, 35000, 36000), (36000, 37000, 35500, 36500)]
    result = run(bars, script)
    m = seen["margin"]
    assert m.mode == "isolated" and m.position_margin == pytest.approx(400) and m.liquidation_price == pytest.approx(lp)
    liq = result.fills[result.fills.is_liquidation]
    assert len(liq) == 1 and liq.price.iloc[0] == pytest.approx(lp) and liq.bar.iloc[0] == 3
    assert ("tp", "canceled") in statuses(log)
    # the whole loss is the isolated margin plus the entry's taker fee (0.1 * 40,000 * 0.05% = 2)
    assert result.metrics["final_equity"] == pytest.approx(10_000 - 400 - 2)
    assert result.metrics["liquidations"] == 1
    # clearance fee = the margin left at LP (less than 1.25% of the notional)
    assert liq.fee.iloc[0] == pytest.approx(400 + 0.1 * (lp - 40000))
    dist = result.liquidation_distance
    assert dist.iloc[2] == pytest.approx((39500 - lp) / 39500) and np.isnan(dist.iloc[3])


def test_cross_long_liquidation_takes_the_wallet_to_zero_and_not_below():
    # 2 BTC at 40,000 (notional 80,000: bracket 2, mmr 0.5%, cum 50), wallet 10,000 - 40 fee
    # LP = (9960 + 50 - 80000) / (2*0.005 - 2) = 69990 / 1.99
    lp = 69990 / 1.99
    script, log = scripted({0: lambda ctx: ctx.buy(2)})
    result = run(PERP + [(40000, 40000, 30000, 31000), (31000, 31000, 31000, 31000)], script)
    liq = result.fills[result.fills.is_liquidation]
    assert liq.price.iloc[0] == pytest.approx(lp)
    assert result.metrics["final_equity"] == pytest.approx(0.0, abs=1e-6)
    assert result.equity.min() >= -1e-6


def test_cross_short_liquidation_at_binances_price():
    # short 2 BTC at 40,000, wallet 9,960: LP = (9960 + 50 + 80000) / (2 * 1.005) = 90010 / 2.01
    script, log = scripted({0: lambda ctx: ctx.sell(2)})
    result = run(PERP + [(40000, 46000, 40000, 45000)], script)
    liq = result.fills[result.fills.is_liquidation]
    assert liq.side.iloc[0] == "buy" and liq.price.iloc[0] == pytest.approx(90010 / 2.01)


def test_adding_isolated_margin_moves_the_liquidation_price_away():
    seen = []

    def enter(ctx):
        ctx.set_margin_mode("isolated")
        ctx.set_leverage(10)
        ctx.buy(0.1)

    def top_up(ctx):
        seen.append(ctx.margin.liquidation_price)
        ctx.adjust_margin(400)
        seen.append(ctx.margin.liquidation_price)
        seen.append(ctx.margin.position_margin)

    script, log = scripted({0: enter, 2: top_up})
    result = run(PERP + [(40000, 40000, 40000, 40000)] * 2 + [(40000, 40000, 35000, 36000)], script)
    assert seen[0] == pytest.approx(3600 / 0.0996)
    assert seen[1] == pytest.approx((4000 - 800) / 0.0996)  # WB = 800 now
    assert seen[2] == pytest.approx(800)
    assert result.metrics["liquidations"] == 0  # 35,000 > the new LP 32,128.5


def test_margin_mode_cannot_change_with_a_position():
    from btc_quant.sdk import ExchangeError

    errors = []

    def switch(ctx):
        try:
            ctx.set_margin_mode("isolated")
        except ExchangeError as exc:
            errors.append(str(exc))

    script, _ = scripted({0: lambda ctx: ctx.buy(0.1), 1: switch})
    run(PERP + [PERP[0]], script)
    assert errors and "cannot change" in errors[0]


# --- funding --------------------------------------------------------------------------------

HOUR = 3_600_000


def funding_bars(hours=17):
    # hourly bars from 2024-01-01 00:00 UTC (a funding time), flat at 40,000
    return bars_from([(40000, 40000, 40000, 40000)] * hours, start_ms=1_704_067_200_000, step_ms=HOUR)


def test_constant_funding_every_eight_hours_on_the_position():
    script, _ = scripted({0: lambda ctx: ctx.buy(0.5)})
    result = run_strategy(
        script, funding_bars(), "instrument.min_notional=0", "timeframe=1h", "broker.funding=constant", "broker.funding_rate=0.0001"
    )
    paid = result.funding
    # the long is opened at bar 1 (01:00): funding at 08:00 and 16:00, 0.5 * 40,000 * 0.0001 = 2 each
    assert paid.ts.dt.hour.tolist() == [8, 16]
    assert paid.amount.tolist() == pytest.approx([2.0, 2.0])
    assert result.metrics["funding"] == pytest.approx(4.0)
    assert result.metrics["final_equity"] == pytest.approx(10_000 - 0.5 * 40000 * 0.0005 - 4.0)


class FundingStore(Store):
    """A store holding only funding history (a short sells -> receives when the rate is > 0)."""

    def __init__(self, config, runtime):
        pass

    def read_bars(self, *args, **kwargs):
        raise AssertionError("bars are given to the run")

    def read_funding(self, exchange, symbol, start_ms=None, end_ms=None):
        ts = np.array([1_704_096_000_000, 1_704_124_800_000], dtype=np.int64)  # 08:00, 16:00
        return pd.DataFrame({"ts": ts, "rate": [0.0003, -0.0001]})


def test_funding_rates_come_from_the_store_when_it_has_them():
    plugins = load_plugins(extra={"store": registering("quant_register_stores", fundstore=FundingStore)})
    script, _ = scripted({0: lambda ctx: ctx.sell(0.5)})
    result = run_strategy(script, funding_bars(), "instrument.min_notional=0", "timeframe=1h", "store=fundstore", plugins=plugins)
    paid = result.funding
    assert paid.rate.tolist() == [0.0003, -0.0001]
    assert paid.amount.tolist() == pytest.approx([-0.5 * 40000 * 0.0003, 0.5 * 40000 * 0.0001])


def test_sma_cross_on_real_bars_still_runs_and_pays_funding(sample_bars):
    result = run_strategy("sma_cross", sample_bars[:5000])
    assert result.metrics["trades"] > 10 and result.metrics["funding"] != 0
    assert result.metrics["liquidations"] == 0


def test_isolated_funding_is_taken_from_the_position_margin():
    seen = []

    def enter(ctx):
        ctx.set_margin_mode("isolated")
        ctx.set_leverage(10)
        ctx.buy(0.5)

    script, _ = scripted({0: enter, 10: lambda ctx: seen.append(ctx.margin.position_margin)})
    run_strategy(
        script, funding_bars(), "instrument.min_notional=0", "timeframe=1h", "broker.funding=constant", "broker.funding_rate=0.0001"
    )
    # margin 0.5 * 40,000 / 10 = 2,000, less the 08:00 payment of 2
    assert seen == [pytest.approx(2_000 - 2)]

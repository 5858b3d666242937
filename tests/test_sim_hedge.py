"""The event-path sim in hedge mode (``broker.position_mode=hedge``, Binance
``dualSidePosition=true``): a LONG and a SHORT position side by side on the venue core, orders
naming their ``position_side``, Binance's refusals, and cross-margin liquidation of both legs at
the one price Binance's hedge-mode formula gives."""

from __future__ import annotations

import numpy as np
import pytest
from test_sim_broker import FLAT, run, scripted

from btc_quant.core import margin as mm
from btc_quant.sdk import PositionSide

LONG, SHORT = PositionSide.LONG, PositionSide.SHORT
HEDGE = ("broker.position_mode=hedge",)


def test_hedge_mode_holds_a_long_and_a_short_at_once_each_with_its_own_entry():
    seen = {}

    def open_both(ctx):
        ctx.buy(1, None, position_side=LONG, tag="long")
        ctx.sell(0.5, None, position_side=SHORT, tag="short")

    def look(ctx):
        seen["long"] = ctx.position_of(LONG)
        seen["short"] = ctx.position_of(SHORT)
        seen["net"] = ctx.position
        seen["mode"] = ctx.position_mode

    script, log = scripted({0: open_both, 2: look})
    result = run([FLAT, (101, 101, 101, 101), (102, 102, 102, 102), FLAT], script, *HEDGE)
    long, short = seen["long"], seen["short"]
    assert seen["mode"] == "hedge"
    assert (long.quantity, long.entry_price, long.position_side) == (1.0, 101.0, LONG)
    assert (short.quantity, short.entry_price, short.position_side) == (-0.5, 101.0, SHORT)
    assert seen["net"].is_flat  # the one-way (BOTH) position is never used in hedge mode
    assert set(result.fills.tag) == {"long", "short"}


def test_sell_long_and_buy_short_close_their_own_side_without_reduce_only():
    seen = {}

    def open_both(ctx):
        ctx.buy(1, None, position_side=LONG)
        ctx.sell(1, None, position_side=SHORT)

    def close_long(ctx):
        ctx.sell(1, None, position_side=LONG, tag="close-long")

    def look(ctx):
        seen["long"] = ctx.position_of(LONG).quantity
        seen["short"] = ctx.position_of(SHORT).quantity
        seen["long_pnl"] = ctx.position_of(LONG).realized_pnl

    script, log = scripted({0: open_both, 1: close_long, 2: look})
    run([FLAT, FLAT, (110, 110, 110, 110), FLAT], script, *HEDGE)
    # opened at 100 (bar 1's open), closed at 110 (bar 2's open): the long realised +10; the short stays
    assert seen == {"long": 0.0, "short": -1.0, "long_pnl": pytest.approx(10.0)}


def test_closing_more_than_the_side_holds_is_refused_even_when_the_other_side_is_open():
    def open_short(ctx):
        ctx.sell(1, None, position_side=SHORT)

    def sell_long(ctx):
        ctx.sell(1, None, position_side=LONG, client_id="bad-close")  # no long to close

    script, log = scripted({0: open_short, 1: sell_long})
    run([FLAT, FLAT, FLAT], script, *HEDGE)
    assert ("bad-close", "rejected") in [(e[1], e[2]) for e in log if e[0] == "order"]


@pytest.mark.parametrize(
    ("mode", "kwargs", "code"),
    [
        ("hedge", {}, "-4061"),  # BOTH in hedge mode
        ("one_way", {"position_side": "LONG"}, "-4061"),  # LONG in one-way mode
        ("hedge", {"position_side": "SHORT", "reduce_only": True}, "-1106"),
    ],
)
def test_binance_refuses_the_wrong_position_side_and_reduce_only_in_hedge_mode(mode, kwargs, code):
    def place(ctx):
        ctx.sell(1, 105, client_id="odd", **kwargs)

    script, log = scripted({0: place})
    result = run([FLAT, FLAT], script, f"broker.position_mode={mode}")
    [(status, reason)] = [(e[2], e[3]) for e in log if e[0] == "order" and e[1] == "odd"]
    assert status == "rejected" and code in reason
    assert result.fills.empty


def test_cross_hedge_liquidation_closes_both_legs_at_binances_hedge_price():
    # long 1 at 100, short 0.5 at 100 on 10 USDT at 20x: net long 0.5; Binance's hedge-mode cross
    # formula puts one liquidation price on the account, reached as the price falls
    seen = {}

    def open_both(ctx):
        ctx.buy(1, None, position_side=LONG)
        ctx.sell(0.5, None, position_side=SHORT)

    def look(ctx):
        seen["lp_long"] = ctx._engine.broker.liquidation_price(LONG)
        seen["lp_short"] = ctx._engine.broker.liquidation_price(SHORT)
        seen["wallet"] = ctx.wallet_balance

    script, log = scripted({0: open_both, 1: look})
    result = run([FLAT, FLAT, FLAT, (100, 100, 70, 80)], script, *HEDGE, "broker.initial_cash=10", "broker.leverage=20")
    lp = seen["lp_long"]
    assert lp == seen["lp_short"]
    wallet = seen["wallet"]
    # at LP the margin balance equals the maintenance margin of both legs (margin ratio 100 %)
    brackets = result.info.instrument.margin_brackets
    maint = mm.maintenance_margin(1.0 * lp, brackets) + mm.maintenance_margin(0.5 * lp, brackets)
    assert wallet + 1.0 * (lp - 100) + 0.5 * (100 - lp) == pytest.approx(maint, rel=1e-9)
    assert 70 < lp < 100
    liq = result.fills[result.fills.is_liquidation]
    assert list(liq.price) == pytest.approx([lp, lp])  # both legs, at the one price
    assert result.metrics["liquidations"] == 2


def test_position_mode_cannot_change_with_a_position_open():
    errors = []

    def open_long(ctx):
        ctx.buy(1, None, position_side=LONG)

    def switch(ctx):
        try:
            ctx._engine.broker.set_position_mode("one_way")
        except Exception as exc:  # noqa: BLE001 - the message is the assertion
            errors.append(str(exc))

    script, _ = scripted({0: open_long, 1: switch})
    run([FLAT, FLAT, FLAT], script, *HEDGE)
    assert errors and "-4068" in errors[0]


def test_hedge_mode_on_a_spot_market_is_a_config_error():
    from btc_quant.sdk import ConfigError

    script, _ = scripted({})
    with pytest.raises(ConfigError, match="position_mode=hedge"):
        run([FLAT, FLAT], script, *HEDGE, "instrument.kind=spot")


def test_risk_checks_see_the_position_the_order_trades_in_hedge_mode():
    # max_notional 150 at price 100: a long of 1 is there; adding 1 LONG would make it 200 (refused),
    # while 1 SHORT opens a separate position of 100 (allowed)
    def open_long(ctx):
        ctx.buy(1, None, position_side=LONG)

    def add(ctx):
        ctx.buy(1, None, position_side=LONG, client_id="more-long")
        ctx.sell(1, None, position_side=SHORT, client_id="a-short")

    script, log = scripted({0: open_long, 1: add})
    run([FLAT, FLAT, FLAT, FLAT], script, *HEDGE, "risk.checks=max_notional", "risk.max_notional.limit=150")
    statuses = {e[1]: (e[2], e[3]) for e in log if e[0] == "order" and e[1] in ("more-long", "a-short")}
    assert statuses["more-long"][0] == "rejected" and "max_notional" in statuses["more-long"][1]
    assert statuses["a-short"][0] != "rejected"


def test_isolated_hedge_margin_is_added_to_the_side_named_and_moves_only_its_liquidation_price():
    seen = []

    def open_both(ctx):
        ctx.buy(1, None, position_side=LONG)
        ctx.sell(1, None, position_side=SHORT)

    def top_up(ctx):
        broker = ctx._engine.broker
        seen.append((broker.liquidation_price(LONG), broker.liquidation_price(SHORT)))
        ctx.adjust_margin(5, position_side=SHORT)
        seen.append((broker.liquidation_price(LONG), broker.liquidation_price(SHORT)))
        try:
            ctx.adjust_margin(5)  # no side named in hedge mode
        except Exception as exc:  # noqa: BLE001 - the message is the assertion
            seen.append(str(exc))

    script, _ = scripted({0: open_both, 1: top_up})
    run([FLAT, FLAT, FLAT], script, *HEDGE, "broker.margin_mode=isolated", "broker.leverage=10")
    (long_before, short_before), (long_after, short_after), refusal = seen
    assert long_after == long_before and short_after > short_before  # 5 more margin: the short survives higher
    # Binance isolated short: LP = (iso + |q|*EP) / (|q|*MMR + |q|), iso = 100/10 + 5
    assert short_after == pytest.approx((15 + 100) / (1 * 0.004 + 1), rel=1e-9)
    assert "-4061" in refusal


def test_the_per_bar_liquidation_price_follows_a_lone_short_in_hedge_mode():
    def open_short(ctx):
        ctx.sell(1, None, position_side=SHORT)

    script, _ = scripted({0: open_short})
    result = run([FLAT, FLAT, FLAT], script, *HEDGE, "broker.initial_cash=10", "broker.leverage=20")
    lp = result.liquidation_price.to_numpy()
    # cross short of 1 at 100 on a 10 USDT wallet less the taker fee: Binance LP = (WB + |q|*EP) / (|q|*MMR + |q|)
    wallet = 10 - 100 * result.info.instrument.taker_fee
    assert np.isnan(lp[0]) and lp[-1] == pytest.approx((wallet + 100) / (0.004 + 1), rel=1e-9)


def test_margin_of_each_side_is_its_own_isolated_margin_maintenance_and_liquidation_price():
    """``ctx.margin_of(LONG|SHORT)``: Binance positionRisk's row of that position side (its
    isolatedMargin, maintenance margin, liquidationPrice); ``ctx.margin`` stays the account's sum."""
    seen = {}

    def open_both(ctx):
        ctx.buy(1, None, position_side=LONG)
        ctx.sell(2, None, position_side=SHORT)

    def look(ctx):
        ctx.adjust_margin(5, position_side=SHORT)
        broker = ctx._engine.broker
        seen.update(
            long=ctx.margin_of(LONG),
            short=ctx.margin_of(SHORT),
            account=ctx.margin,
            lines=(broker.liquidation_price(LONG), broker.liquidation_price(SHORT)),
        )

    script, _ = scripted({0: open_both, 1: look})
    run([FLAT, FLAT, FLAT], script, *HEDGE, "broker.margin_mode=isolated", "broker.leverage=10")
    long, short, account = seen["long"], seen["short"], seen["account"]
    # opened at 100: initial margin |q| * EP / leverage, the short's plus the 5 added to it
    assert long.position_margin == pytest.approx(10.0) and short.position_margin == pytest.approx(25.0)
    assert account.position_margin == pytest.approx(35.0)
    # maintenance: |q| * mark * 0.4% (BTCUSDT's first bracket), each side its own
    assert long.maintenance_margin == pytest.approx(0.4) and short.maintenance_margin == pytest.approx(0.8)
    assert account.maintenance_margin == pytest.approx(1.2)
    assert (long.liquidation_price, short.liquidation_price) == seen["lines"]
    # Binance isolated: long LP = (|q|*EP - iso) / (|q| - |q|*MMR), short LP = (iso + |q|*EP) / (|q|*MMR + |q|)
    assert long.liquidation_price == pytest.approx((100 - 10) / (1 - 0.004), rel=1e-9)
    assert short.liquidation_price == pytest.approx((25 + 200) / (2 * 0.004 + 2), rel=1e-9)
    # the account's figures are shared by both sides
    assert long.available_balance == short.available_balance == account.available_balance
    assert long.leverage == short.leverage == 10.0 and long.mode == short.mode == "isolated"


def test_margin_of_a_side_in_one_way_mode_is_refused():
    seen = []

    def look(ctx):
        try:
            ctx.margin_of(LONG)
        except Exception as exc:  # noqa: BLE001 - the message is the assertion
            seen.append(str(exc))

    script, _ = scripted({0: look})
    run([FLAT, FLAT], script)
    assert len(seen) == 1 and "-4061" in seen[0]

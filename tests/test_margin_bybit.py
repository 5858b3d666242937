"""Bybit's liquidation rule (USDT perpetual) next to Binance's, and the sim using it for exchange=bybit."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from btc_quant.core import margin as mm
from btc_quant.core.instruments import instrument_for
from btc_quant.sdk import Strategy
from btc_quant.sdk.testing import bars_from, run_strategy

TIERS = instrument_for("bybit", "BTC/USDT:USDT").margin_brackets
_names = itertools.count()


def test_bybit_tiers_are_its_published_risk_limits():
    assert len(TIERS) == 20
    assert (TIERS[0].notional_cap, TIERS[0].max_leverage, TIERS[0].maintenance_rate, TIERS[0].maintenance_amount) == (
        2_000_000,
        100,
        0.005,
        0,
    )
    # deduction n = risk limit n-1 x (MMR n - MMR n-1) + deduction n-1 (Bybit "Margin Parameters")
    for lower, upper in zip(TIERS, TIERS[1:]):
        assert upper.maintenance_amount == pytest.approx(
            lower.maintenance_amount + lower.notional_cap * (upper.maintenance_rate - lower.maintenance_rate)
        )
    assert TIERS[-2].maintenance_amount == 1_107_000 and TIERS[-1].maintenance_rate == 0.045


def test_bybit_isolated_examples():
    # Bybit's example: 1 BTC long at 20,000 USDT, 50x, MMR 0.5 %, no extra margin:
    # IM = 400, MM = 100, LP = 20,000 - (400 - 100) = 19,700
    assert mm.bybit_liquidation_price(1.0, 20_000.0, 400.0, TIERS, isolated=True) == pytest.approx(19_700.0)
    assert mm.bybit_liquidation_price(-1.0, 20_000.0, 400.0, TIERS, isolated=True) == pytest.approx(20_300.0)
    # 100 extra margin added moves it by 100 / size
    assert mm.bybit_liquidation_price(2.0, 20_000.0, 800.0 + 100.0, TIERS, isolated=True) == pytest.approx(19_700.0 - 50.0)
    # a 6,000,000 USDT position sits in tier 8 (MMR 1 %, deduction 20,500): at 10x
    # IM = 600,000, MM = 60,000 - 20,500 = 39,500, LP = 20,000 - 560,500 / 300
    assert mm.bybit_liquidation_price(300.0, 20_000.0, 600_000.0, TIERS, isolated=True) == pytest.approx(20_000 - 560_500 / 300)
    # Binance's formula takes the maintenance margin at the liquidation price, Bybit's at entry
    assert mm.liquidation_price(1.0, 20_000.0, 400.0, TIERS) == pytest.approx((400 - 20_000) / (0.005 - 1))
    assert mm.liquidation_price(1.0, 20_000.0, 400.0, TIERS) != pytest.approx(19_700.0)


@settings(max_examples=200, deadline=None)
@given(
    qty=st.floats(0.001, 500).map(lambda q: round(q, 3)),
    side=st.sampled_from([1, -1]),
    entry=st.floats(1_000, 150_000),
    leverage=st.integers(1, 100),
    extra=st.floats(0, 1.0),
)
def test_bybit_isolated_lp_is_where_position_margin_meets_entry_maintenance(qty, side, entry, leverage, extra):
    size = qty
    margin = size * entry / leverage * (1 + extra)
    lp = mm.bybit_liquidation_price(side * size, entry, margin, TIERS, isolated=True)
    mm_entry = mm.maintenance_margin(size * entry, TIERS)
    if lp is None:
        assert side == 1 and margin - mm_entry >= size * entry  # a long that cannot be liquidated at a positive price
        return
    # at LP the position margin plus unrealised PnL equals the maintenance margin at entry value
    assert margin + side * size * (lp - entry) == pytest.approx(mm_entry, rel=1e-9, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    qty=st.floats(0.001, 400).map(lambda q: round(q, 3)),
    side=st.sampled_from([1, -1]),
    entry=st.floats(5_000, 120_000),
    wallet_share=st.floats(0.02, 0.9),
)
def test_bybit_cross_lp_is_where_equity_meets_maintenance_at_that_price(qty, side, entry, wallet_share):
    wallet = qty * entry * wallet_share
    lp = mm.bybit_liquidation_price(side * qty, entry, wallet, TIERS, isolated=False)
    if lp is None:
        return
    equity = wallet + side * qty * (lp - entry)
    assert equity == pytest.approx(mm.maintenance_margin(qty * lp, TIERS), rel=1e-6, abs=1e-4)


def test_the_formula_is_chosen_by_exchange():
    assert mm.liquidation_formula("bybit") is mm.bybit_liquidation_price
    assert mm.liquidation_formula("binanceusdm") is mm.liquidation_price
    assert mm.liquidation_formula("okx") is mm.liquidation_price


def _long_then_crash(isolated: bool):
    seen: dict = {}

    class Enter(Strategy):
        name = f"bybit_enter{next(_names)}"

        def on_start(self, ctx):
            self.n = 0

        def on_bar(self, ctx, bar):
            self.n += 1
            if self.n == 1:
                if isolated:
                    ctx.set_margin_mode("isolated")
                ctx.set_leverage(10)
                ctx.buy(0.1)

        def on_fill(self, ctx, fill):
            if not fill.is_liquidation:
                seen["margin"] = ctx.margin

    bars = [(40_000.0,) * 4] * 2 + [(40_000, 40_100, 39_000, 39_500), (39_500, 39_600, 35_000, 36_000), (36_000, 37_000, 35_500, 36_500)]
    return Enter, bars, seen


@pytest.mark.parametrize("exchange", ["bybit", "binanceusdm"])
def test_sim_liquidates_an_isolated_long_at_the_venues_price(exchange):
    strategy, bars, seen = _long_then_crash(isolated=True)
    result = run_strategy(
        strategy, bars_from(bars), f"exchange={exchange}", "symbol=BTC/USDT:USDT", "instrument.min_notional=0", "broker.funding=off"
    )
    inst = instrument_for(exchange, "BTC/USDT:USDT")
    # 0.1 BTC at 40,000 (the second bar's open), 10x isolated: position margin 400
    want = mm.liquidation_formula(exchange)(0.1, 40_000.0, 400.0, inst.margin_brackets, isolated=True)
    if exchange == "bybit":
        assert want == pytest.approx(40_000 - (400 - 4_000 * 0.005) / 0.1)  # = 36,200
    assert seen["margin"].liquidation_price == pytest.approx(want)
    liq = result.fills[result.fills.is_liquidation]
    assert len(liq) == 1 and liq.price.iloc[0] == pytest.approx(want)
    # the taker fee of the entry is the venue's (Bybit 0.055 %, Binance 0.05 %)
    entry = result.fills[~result.fills.is_liquidation]
    assert entry.fee.iloc[0] == pytest.approx(0.1 * 40_000 * inst.taker_fee)


def test_a_bybit_perpetual_backtest_runs_the_event_path_and_says_why():
    from btc_quant.core.plugins import load_plugins

    plugins = load_plugins()
    bars = bars_from([(40_000.0, 40_010.0, 39_990.0, 40_000.0)] * 30)
    result = run_strategy(
        "sma_cross", bars, "exchange=bybit", "symbol=BTC/USDT:USDT", "strategy.fast=3", "strategy.slow=8", plugins=plugins, compiled=True
    )
    assert not result.compiled
    binance = run_strategy(
        "sma_cross",
        bars,
        "exchange=binanceusdm",
        "symbol=BTC/USDT:USDT",
        "strategy.fast=3",
        "strategy.slow=8",
        plugins=plugins,
        compiled=True,
    )
    assert binance.compiled

"""Binance USD-M margin math against hand-computed cases (formula: Binance FAQ "How to Calculate
Liquidation Price of USDⓈ-M Futures Contracts"; brackets: GET /fapi/v1/leverageBracket BTCUSDT)."""

import math

import pytest

from btc_quant.core.instruments import instrument_for
from btc_quant.core.margin import (
    bracket_for,
    liquidation_price,
    load_brackets,
    maintenance_margin,
    margin_ratio,
)

BRACKETS = instrument_for("binanceusdm", "BTC/USDT:USDT").margin_brackets


def test_the_shipped_table_is_consistent():
    table = load_brackets()["BTC/USDT:USDT"]
    assert table == BRACKETS and len(table) == 7
    # cum makes the maintenance margin continuous: cum_n = cum_(n-1) + floor_n * (mmr_n - mmr_(n-1))
    for prev, b in zip(table, table[1:]):
        assert b.notional_floor == prev.notional_cap
        assert b.maintenance_amount == pytest.approx(
            prev.maintenance_amount + b.notional_floor * (b.maintenance_rate - prev.maintenance_rate)
        )
    assert math.isinf(table[-1].notional_cap)


def test_maintenance_margin_per_bracket():
    assert maintenance_margin(20_000, BRACKETS) == pytest.approx(20_000 * 0.004)
    assert maintenance_margin(200_000, BRACKETS) == pytest.approx(200_000 * 0.005 - 50)
    assert maintenance_margin(1_200_000, BRACKETS) == pytest.approx(1_200_000 * 0.0065 - 950)
    assert bracket_for(50_000, BRACKETS).maintenance_rate == 0.005  # floors are inclusive


@pytest.mark.parametrize(
    "case, quantity, entry, wallet, expected, bracket",
    [
        # bracket 1, isolated long 0.5 BTC at 40k, 10x: WB = 2,000
        ("isolated long b1", 0.5, 40_000, 2_000, (2_000 + 0 - 0.5 * 40_000) / (0.5 * 0.004 - 0.5), 1),
        # bracket 2, cross short 5 BTC at 40k, wallet 20,000
        ("cross short b2", -5, 40_000, 20_000, (20_000 + 50 + 5 * 40_000) / (5 * 0.005 + 5), 2),
        # bracket 3, isolated long 30 BTC at 40k, 20x: WB = 60,000
        ("isolated long b3", 30, 40_000, 60_000, (60_000 + 950 - 30 * 40_000) / (30 * 0.0065 - 30), 3),
        # bracket 4, cross long 100 BTC at 50k, wallet 500,000
        ("cross long b4", 100, 50_000, 500_000, (500_000 + 11_450 - 100 * 50_000) / (100 * 0.01 - 100), 4),
        # bracket 3, isolated short 20 BTC at 60k, 25x: WB = 48,000
        ("isolated short b3", -20, 60_000, 48_000, (48_000 + 950 + 20 * 60_000) / (20 * 0.0065 + 20), 3),
    ],
)
def test_liquidation_price_by_binances_formula(case, quantity, entry, wallet, expected, bracket):
    lp = liquidation_price(quantity, entry, wallet, BRACKETS)
    assert lp == pytest.approx(expected, rel=1e-12), case
    assert BRACKETS.index(bracket_for(abs(quantity) * lp, BRACKETS)) + 1 == bracket
    # at the liquidation price the margin ratio is exactly 100 %
    assert margin_ratio(quantity, entry, lp, wallet, BRACKETS) == pytest.approx(1.0, rel=1e-9)


def test_a_long_with_more_margin_than_notional_cannot_be_liquidated():
    assert liquidation_price(0.1, 40_000, 5_000, BRACKETS) is None
    assert liquidation_price(0.0, 40_000, 5_000, BRACKETS) is None

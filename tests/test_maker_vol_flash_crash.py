"""maker_vol through a SYNTHETIC flash crash: -30% in 10 minutes through the grid, recovery, chop.

The path below is made up (labelled synthetic everywhere it is used); it is not market data. It
exists to drive the saturation and liquidation paths on purpose, which real 1m data only does
by luck.
"""

from __future__ import annotations

import pytest

from btc_quant.sdk.testing import bars_from, run_strategy

# 60 USDT of margin a level: every level's order is over the exchange minimum (none merged), so the chop
# under top fills level after level
PERP = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT", "broker.initial_cash=20000", "strategy.order_pct=0.003")
L2 = 39_740.5  # level 2 of the ladder set by the first bar's high (42,000): top 39,900


def synthetic_flash_crash():
    """SYNTHETIC: flat at 40k, -30% in 10 one-minute bars, back to 40k in an hour, then a chop
    that dips through level 2 on every bar without reaching level 1 (so take-profits pile up)."""
    rows = [(40_000.0, 42_000.0, 39_950.0, 40_000.0)] + [(40_000.0, 40_040.0, 39_960.0, 40_000.0)] * 30
    price = 40_000.0
    for k in range(10):
        low = 40_000.0 * (1 - 0.03 * (k + 1))
        rows.append((price, price, low, low))
        price = low
    for k in range(60):
        high = 28_000.0 + 12_000.0 * (k + 1) / 60
        rows.append((price, high, price, high))
        price = high
    for _ in range(40):
        rows.append((price, max(price, 39_790.0), 39_700.0, 39_760.0))
        price = 39_760.0
    return bars_from(rows)


@pytest.fixture(scope="module")
def default_run():
    return run_strategy("maker_vol", synthetic_flash_crash(), *PERP)


def test_crash_fills_down_the_grid_and_recovery_takes_profit(default_run):
    diag = default_run.diagnostics
    buys = default_run.fills[default_run.fills.side == "buy"]
    assert buys.price.min() < 29_000  # the grid was filled down to near the low (28,000)
    assert diag["summary"]["round_trips"] > 100  # the recovery sold them back level by level
    assert diag["summary"]["liq_line_breaches"] == 0
    assert diag["samples"].distance_to_liquidation.min() > 0.2  # bottom (21,000) was never near


def test_chop_under_the_top_saturates_and_closes_the_highest_take_profit(default_run):
    diag = default_run.diagnostics
    saturations = diag["saturations"]
    assert diag["summary"]["saturation_closes"] >= 1 and len(saturations) >= 1
    market_sells = default_run.fills[(default_run.fills.side == "sell") & ~default_run.fills.is_maker]
    assert len(market_sells) == len(saturations)  # saturation closes are the only market orders
    # the lot closed is always the one whose take-profit was highest: at top
    assert saturations.take_profit.eq(39_900.0).all()
    assert saturations.entry.round(1).eq(L2).sum() >= len(saturations) - 1  # shifted up there from level 1
    assert diag["pnl_attribution"]["saturation_loss"] == pytest.approx(saturations.pnl.sum())


def test_crash_below_bottom_crosses_the_liquidation_line():
    """With bottom at 75% of the high (31,500) the -30% fall goes below it: the design failed. A
    broker that liquidates (Binance's formula) closes the position at the line and the strategy
    books it as a liquidation loss; a broker that does not shows the price beyond the lots'
    liquidation price. Either way, while the price was above bottom the line stayed below it."""
    result = run_strategy("maker_vol", synthetic_flash_crash(), *PERP, "strategy.bottom_ratio=0.75")
    diag = result.diagnostics
    samples = diag["samples"]
    assert diag["summary"]["liq_line_breaches"] == 0 and diag["summary"]["liquidations_above_bottom"] == 0
    safe = samples[samples.price > 0.75 * 42_000]  # the position's line while the price was above bottom
    assert len(safe.broker_liquidation_price.dropna()) > 10
    assert (safe.broker_liquidation_price.dropna() <= 0.75 * 42_000 + 1e-6).all()
    if result.metrics.get("liquidations"):
        assert diag["summary"]["liquidations"] >= 1 and diag["pnl_attribution"]["liquidation_loss"] < -1000
    else:
        assert samples.distance_to_liquidation.min() < 0
    attribution = diag["pnl_attribution"]
    explained = sum(v for k, v in attribution.items() if k != "open_lots")
    assert explained == pytest.approx(result.equity.iloc[-1] - result.initial_equity, abs=1e-6)

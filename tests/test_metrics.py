"""Metrics cross-checked against independent computations: a hand-computed small case and a real
run recomputed with plain numpy/statistics (not the code under test)."""

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from btc_quant.core.metrics import compute_metrics, trades_frame
from btc_quant.sdk.testing import run_strategy

DAY = pd.Timedelta(days=1)


def test_hand_computed_equity_curve():
    index = pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC")
    equity = pd.Series([100.0, 110.0, 99.0, 121.0, 110.0], index=index)
    empty = trades_frame(pd.DataFrame(columns=["ts", "side", "price", "quantity", "fee", "is_liquidation"]))
    m = compute_metrics(equity, pd.DataFrame({"fee": [], "is_liquidation": []}), empty, initial_equity=100.0)
    r = [110 / 100 - 1, 99 / 110 - 1, 121 / 99 - 1, 110 / 121 - 1]
    assert m["total_return"] == pytest.approx(0.10)
    assert m["max_drawdown"] == pytest.approx(0.10)  # 110 -> 99
    assert m["max_drawdown_days"] == pytest.approx(2.0)  # peak on day 1, regained on day 3
    assert m["sharpe"] == pytest.approx(statistics.mean(r) / statistics.stdev(r) * math.sqrt(365))
    downside = math.sqrt(sum(min(x, 0) ** 2 for x in r) / len(r))
    assert m["sortino"] == pytest.approx(statistics.mean(r) / downside * math.sqrt(365))
    cagr = 1.10 ** (365.25 / 4) - 1
    assert m["cagr"] == pytest.approx(cagr)
    assert m["calmar"] == pytest.approx(cagr / 0.10)


def test_cagr_of_a_short_winning_run_is_none_instead_of_an_overflow():
    # 50 % in two hours annualises to 1.5 ** 4383: beyond a float; the run still gets its metrics
    index = pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC")
    equity = pd.Series([100.0, 120.0, 150.0], index=index)
    empty = trades_frame(pd.DataFrame(columns=["ts", "side", "price", "quantity", "fee", "is_liquidation"]))
    m = compute_metrics(equity, pd.DataFrame({"fee": [], "is_liquidation": []}), empty, initial_equity=100.0)
    assert m["total_return"] == pytest.approx(0.50)
    assert m["cagr"] is None and m["calmar"] is None
    # a short losing run annualises towards -100 %, which a float holds
    m = compute_metrics(equity[::-1].set_axis(index), pd.DataFrame({"fee": [], "is_liquidation": []}), empty, initial_equity=150.0)
    assert m["cagr"] == pytest.approx((100 / 150) ** (365.25 * 12) - 1)


def test_metrics_of_a_real_run_match_an_independent_recomputation(sample_bars):
    result = run_strategy("sma_cross", sample_bars)
    m, fills, equity = result.metrics, result.fills, result.equity
    values = equity.to_numpy()
    ts = sample_bars.ts
    # daily closes: the last equity of each UTC day
    day = ts // 86_400_000
    last = np.flatnonzero(np.r_[day[1:] != day[:-1], True])
    daily = values[last]
    r = daily[1:] / daily[:-1] - 1
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(365), rel=1e-9)
    assert m["sortino"] == pytest.approx(r.mean() / math.sqrt(np.mean(np.minimum(r, 0) ** 2)) * math.sqrt(365), rel=1e-9)
    peak = np.maximum.accumulate(values)
    assert m["max_drawdown"] == pytest.approx(np.max(1 - values / peak), rel=1e-12)
    span_days = (ts[-1] - ts[0]) / 86_400_000
    assert m["cagr"] == pytest.approx((values[-1] / 10_000) ** (365.25 / span_days) - 1, rel=1e-9)
    # sma_cross: every buy is closed by the next sell (whole position): pair them
    buys, sells = fills[fills.side == "buy"].reset_index(), fills[fills.side == "sell"].reset_index()
    n = len(sells)
    pnl = sells.quantity * sells.price - buys.quantity[:n] * buys.price[:n] - sells.fee - buys.fee[:n]
    assert m["trades"] == n
    assert m["win_rate"] == pytest.approx((pnl > 0).mean())
    assert m["profit_factor"] == pytest.approx(pnl[pnl > 0].sum() / -pnl[pnl <= 0].sum())
    assert m["fees"] == pytest.approx(fills.fee.sum())
    held = np.zeros(len(sample_bars), dtype=bool)
    for b, s in zip(buys.bar, list(sells.bar) + [len(sample_bars)] * (len(buys) - n)):
        held[b:s] = True
    assert m["exposure"] == pytest.approx(held.mean())
    assert m["funding"] == pytest.approx(result.funding.amount.sum()) and m["liquidations"] == 0

"""Indicators on real bars: vectorised forms against pandas, incremental forms against vectorised."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from btc_quant.sdk import indicators as ind


@pytest.fixture(scope="module")
def real(sample_bars):
    return sample_bars[:5000]  # Jan 2022 BTCUSDT perpetual 1m


def seeded_ewm(values: pd.Series, period: int, alpha: float) -> pd.Series:
    """pandas: first value = mean of the first ``period`` inputs, then ewm(adjust=False) (TA-Lib's seeding)."""
    s = values.copy().astype(float)
    s.iloc[period - 1] = values.iloc[:period].mean()
    out = s.iloc[period - 1 :].ewm(alpha=alpha, adjust=False).mean()
    return out.reindex(values.index)


@pytest.mark.parametrize("period", [1, 5, 20])
def test_sma_matches_pandas(real, period):
    expect = pd.Series(real.close).rolling(period).mean().to_numpy()
    np.testing.assert_allclose(ind.sma(real.close, period), expect, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("period", [3, 20, 50])
def test_ema_matches_pandas(real, period):
    expect = seeded_ewm(pd.Series(real.close), period, 2 / (period + 1)).to_numpy()
    np.testing.assert_allclose(ind.ema(real.close, period), expect, rtol=1e-10, equal_nan=True)


@pytest.mark.parametrize("period", [7, 14])
def test_rsi_matches_pandas_wilder(real, period):
    close = pd.Series(real.close)
    delta = close.diff()
    gain, loss = delta.clip(lower=0), (-delta).clip(lower=0)
    avg_gain = seeded_ewm(gain.iloc[1:].reset_index(drop=True), period, 1 / period)
    avg_loss = seeded_ewm(loss.iloc[1:].reset_index(drop=True), period, 1 / period)
    expect = np.r_[np.nan, (100 - 100 / (1 + avg_gain / avg_loss)).to_numpy()]
    got = ind.rsi(real.close, period)
    assert np.isnan(got[:period]).all() and not np.isnan(got[period:]).any()
    np.testing.assert_allclose(got, expect, rtol=1e-9, equal_nan=True)


def test_atr_matches_pandas_wilder(real):
    high, low, close = (pd.Series(a) for a in (real.high, real.low, real.close))
    prev = close.shift()
    tr = pd.concat([high - low, (high - prev).abs(), (low - prev).abs()], axis=1).max(axis=1)
    expect = seeded_ewm(tr, 14, 1 / 14).to_numpy()
    np.testing.assert_allclose(ind.atr(real.high, real.low, real.close, 14), expect, rtol=1e-10, equal_nan=True)


@pytest.mark.parametrize("period", [1, 60, 1440])
def test_rolling_extremes_match_pandas(real, period):
    np.testing.assert_array_equal(ind.rolling_high(real.high, period), pd.Series(real.high).rolling(period).max().to_numpy())
    np.testing.assert_array_equal(ind.rolling_low(real.low, period), pd.Series(real.low).rolling(period).min().to_numpy())


def test_incremental_forms_give_the_vectorised_numbers(real):
    bars = real[:1500]
    cases = [
        (ind.SMA(20), lambda b: b.close, ind.sma(bars.close, 20)),
        (ind.EMA(20), lambda b: b.close, ind.ema(bars.close, 20)),
        (ind.RSI(14), lambda b: b.close, ind.rsi(bars.close, 14)),
        (ind.RollingHigh(60), lambda b: b.high, ind.rolling_high(bars.high, 60)),
        (ind.RollingLow(60), lambda b: b.low, ind.rolling_low(bars.low, 60)),
    ]
    for inc, pick, expect in cases:
        got = np.array([inc.update(pick(bars.bar(i))) for i in range(len(bars))])
        np.testing.assert_allclose(got, expect, rtol=1e-12, equal_nan=True, err_msg=type(inc).__name__)
    atr = ind.ATR(14)
    got = np.array([atr.update(bars.high[i], bars.low[i], bars.close[i]) for i in range(len(bars))])
    np.testing.assert_allclose(got, ind.atr(bars.high, bars.low, bars.close, 14), rtol=1e-12, equal_nan=True)


def test_window_indicators_do_not_depend_on_history_start(real):
    whole = ind.rolling_high(real.high, 100)
    part = ind.rolling_high(real.high[3000:], 100)
    np.testing.assert_array_equal(whole[3099:], part[99:])


@pytest.mark.parametrize("fn", [ind.ema, ind.rsi, ind.rolling_high, ind.rolling_low, ind.sma])
def test_bad_period_is_refused(fn):
    with pytest.raises(ValueError, match="period"):
        fn(np.ones(5), 0)

"""The compiled per-bar passes of every result (core/bar_series, the sim's equity and liquidation
marks) give the very floats of the numpy chains they replaced, written out here as references."""

import numpy as np
import pandas as pd
import pytest

from btc_quant.core import bar_series
from btc_quant.core.metrics import _daily_returns, columns_frame, compute_metrics, max_drawdown_duration


def _walk(seed: int, n: int = 5000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 10_000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.002, n)))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_position_is_the_running_sum_of_each_bars_fills_zeroed_near_flat(seed):
    rng = np.random.default_rng(seed)
    n, k = 3000, 800
    bars = np.sort(rng.integers(0, n, k))
    signed = rng.choice([0.001, -0.001, 0.003, -0.002], k) * rng.integers(1, 4, k)
    delta = np.zeros(n)
    np.add.at(delta, bars, signed)
    want = np.cumsum(delta)
    want[np.abs(want) < 1e-12] = 0.0
    got = np.zeros(n)
    bar_series.position_per_bar(bars, signed, got)
    assert np.array_equal(got, want)
    assert (got == 0.0).any()  # flat again somewhere: the zeroing was exercised


@pytest.mark.parametrize("hedge", [False, True])
def test_liquidation_distance_and_shown_line_as_the_numpy_formulas(hedge):
    rng = np.random.default_rng(7)
    n = 4000
    close = _walk(4, n)
    position = np.where(rng.random(n) < 0.3, 0.0, rng.choice([-1.0, 1.0], n))
    liq = np.where(rng.random(n) < 0.4, np.nan, close * 0.8)
    short = np.where(rng.random(n) < 0.4, np.nan, close * 1.2)
    short[::7] = liq[::7]  # cross margin: both lines the account's one price
    side = np.sign(position)
    with np.errstate(invalid="ignore"):
        one_way = np.where(side != 0, side * (close - liq) / close, np.nan)
        if hedge:
            want = np.where(liq == short, one_way, np.fmin((close - liq) / close, (short - close) / close))
            want_shown = np.where(np.isnan(liq), short, liq)
        else:
            want, want_shown = one_way, liq
    shown, got = np.empty(n), np.empty(n)
    bar_series.liquidation_distance(position, close, liq, short if hedge else liq, hedge, shown, got)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(shown, want_shown, equal_nan=True)


@pytest.mark.parametrize("seed", [5, 6])
def test_drawdown_and_its_duration_as_numpy_computes_them(seed):
    values = _walk(seed)
    times = pd.date_range("2024-01-01", periods=len(values), freq="min", tz="UTC")
    equity = pd.Series(values, index=times)
    peak = np.maximum.accumulate(values)
    deepest = float((1.0 - values / peak).max())
    peaks = np.flatnonzero(values >= peak)
    gaps = np.diff(peaks) > 1
    spans = times.asi8[peaks[1:]][gaps] - times.asi8[peaks[:-1]][gaps]
    longest = int(spans.max()) if len(spans) else 0
    if peaks[-1] < len(values) - 1:
        longest = max(longest, int(times.asi8[-1] - times.asi8[peaks[-1]]))
    got_deepest, got_longest, nan_seen = bar_series.drawdown_extremes(values, times.asi8)
    assert (got_deepest, got_longest, nan_seen) == (deepest, longest, False)
    assert max_drawdown_duration(equity) == pd.Timedelta(longest, unit=times.unit)
    assert compute_metrics(equity, pd.DataFrame({"fee": [], "is_liquidation": []}), pd.DataFrame({"pnl": []}), initial_equity=10_000.0)[
        "max_drawdown"
    ] == pytest.approx(deepest, abs=0)


def test_daily_returns_from_the_last_point_of_each_utc_day_as_resampling_gives():
    values = _walk(8, 6 * 1440 + 77)
    index = pd.date_range("2024-01-01 05:13", periods=len(values), freq="min", tz="UTC")
    equity = pd.Series(values, index=index)
    want = equity.resample("1D").last().dropna().pct_change().dropna().to_numpy()
    assert np.array_equal(_daily_returns(equity).to_numpy(), want)
    ends = np.empty(len(values), dtype=np.int64)
    per_day = pd.Timedelta(days=1) // pd.Timedelta(1, unit=index.unit)
    assert bar_series.day_ends(index.asi8, per_day, ends) == 7  # the first and last days are partial
    assert bar_series.day_ends(index.asi8[::-1].copy(), per_day, ends) == -1  # days out of order


def test_columns_frame_is_the_frame_pandas_builds_from_the_same_columns():
    n = 6
    block = np.arange(3.0 * n).reshape(n, 3)
    columns = {
        "ts": pd.to_datetime(np.arange(n), unit="ms", utc=True).array,
        "name": pd.Series(["a", "b", "c", "d", "e", "f"]).array,
        "price": block[:, 0],
        "quantity": block[:, 1],
        "count": np.arange(n, dtype=np.int64),
        "maker": block[:, 2] > 5,
        "reason": np.full(n, None, dtype=object),
    }
    got, want = columns_frame(columns), pd.DataFrame(columns)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert list(got.dtypes) == list(want.dtypes)
    assert not np.shares_memory(got["price"].to_numpy(), block)  # copied, as pd.DataFrame copies
    assert columns_frame({}).shape == pd.DataFrame({}).shape
    again = columns_frame(columns)
    again.columns.name = "renamed"  # the labels are built once per set of names: each frame its own view
    assert got.columns.name is None and columns_frame(columns).columns.name is None

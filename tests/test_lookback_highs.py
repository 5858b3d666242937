"""The recent high of maker_vol's recompute (``lookback_highs``): the window walk used on ordered
bars gives the very values of the deque walk over every bar, and unordered or gappy input takes
the deque walk."""

import numpy as np
import pytest

from btc_quant.plugins.strategies.maker_vol_grid import _deque_highs, _window_highs, lookback_highs


@pytest.mark.parametrize("seed", range(6))
def test_window_walk_gives_the_deque_walks_highs(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        n = int(rng.integers(1, 2000))
        ts = np.cumsum(rng.choice([60_000, 60_000, 120_000, 0], n)).astype(np.int64)  # gaps and repeated times
        high = np.round(rng.normal(100.0, 5.0, n), int(rng.integers(0, 3)))  # rounded: ties
        at = np.flatnonzero(rng.random(n) < rng.choice([0.01, 0.2, 1.0]))
        n_bars, lookback_ms = int(rng.integers(1, 400)), int(rng.integers(1, 400)) * 60_000
        want = _deque_highs(ts, high, at, n_bars, lookback_ms)
        assert np.array_equal(_window_highs(ts, high, at, n_bars, lookback_ms), want)
        assert np.array_equal(lookback_highs(ts, high, at, n_bars, lookback_ms), want)


def test_unordered_times_or_a_missing_high_take_the_deque_walk():
    ts = np.array([0, 60_000, 30_000, 90_000, 120_000], dtype=np.int64)
    high = np.array([5.0, 3.0, 4.0, 1.0, 2.0])
    at = np.array([2, 4], dtype=np.int64)
    assert np.array_equal(lookback_highs(ts, high, at, 10, 100_000), _deque_highs(ts, high, at, 10, 100_000))
    gappy = np.array([5.0, np.nan, 4.0, 1.0, 2.0])
    ordered = np.arange(5, dtype=np.int64) * 60_000
    got = lookback_highs(ordered, gappy, at, 10, 1_000_000)
    assert np.array_equal(got, _deque_highs(ordered, gappy, at, 10, 1_000_000), equal_nan=True)

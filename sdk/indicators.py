"""Indicators over numpy arrays.

Every function here is causal (element ``i`` uses inputs ``0..i`` only) and gives the same value
for element ``i`` whether it is given the whole history or just a window ending at ``i`` that is
long enough: each window is summed in the same order, with no running total carried from the
start of the array. So a backtest that computes an indicator once over all bars and a live run
that recomputes it on recent bars see identical numbers. Values before an indicator has enough
input are NaN.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _sma(values, period):
    out = np.full(values.shape[0], np.nan)
    for i in range(period - 1, values.shape[0]):
        total = 0.0
        for k in range(i - period + 1, i + 1):
            total += values[k]
        out[i] = total / period
    return out


def sma(values: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average of the last ``period`` values."""
    if period < 1:
        raise ValueError(f"sma period must be >= 1, got {period}")
    return _sma(np.ascontiguousarray(values, dtype=np.float64), int(period))


def crossed(fast: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """True where ``fast > slow`` differs from the bar before (and at the first bar both exist)."""
    valid = ~(np.isnan(fast) | np.isnan(slow))
    above = (fast > slow) & valid
    before = np.r_[False, above[:-1]]
    first = valid & ~np.r_[False, valid[:-1]]
    return (above != before) & valid | (first & above)

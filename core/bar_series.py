"""The per-bar series every backtest result derives from its fills and liquidation lines, compiled:
one pass over the bars each instead of a chain of numpy operations (each of which walks all the
bars again). Called by :func:`btc_quant.core.results.assemble_result` (every path)."""

from __future__ import annotations

import numpy as np

from .compiled import njit


@njit(cache=True, nogil=True)
def position_per_bar(fill_bar, signed_qty, out):  # pragma: no cover - compiled
    """Net position at each bar's close into ``out`` (zeros, one per bar): each bar's fills summed
    in order, then the running sum, shown as 0 within 1e-12 of flat (the running sum itself is
    kept, as ``np.cumsum`` followed by zeroing would)."""
    for f in range(len(fill_bar)):
        out[fill_bar[f]] += signed_qty[f]
    position = 0.0
    for i in range(len(out)):
        position += out[i]
        out[i] = 0.0 if abs(position) < 1e-12 else position


@njit(cache=True, nogil=True)
def liquidation_distance(position, close, liq, liq_short, hedge, shown, out):  # pragma: no cover - compiled
    """How far each close is from the liquidation price, as a fraction of the close, positive while
    safe (``out``), and the price shown per bar (``shown``).

    One position (``hedge`` False, ``liq_short`` unused): its side is the sign of the net position,
    NaN while flat. Hedge mode: when both lines are the account's one price (cross margin) as one
    position; else (isolated) each position its own price and the nearer one counts (numpy's
    ``fmin``: a NaN line is ignored). The shown price is the LONG's while it is open, else the
    SHORT's."""
    for i in range(len(close)):
        c, long_line = close[i], liq[i]
        shown[i] = long_line
        side = np.sign(position[i])
        if not hedge or long_line == liq_short[i]:
            out[i] = side * (c - long_line) / c if side != 0 else np.nan
        else:
            below, above = (c - long_line) / c, (liq_short[i] - c) / c
            out[i] = below if below <= above or np.isnan(above) else above
            if np.isnan(long_line):
                shown[i] = liq_short[i]


@njit(cache=True, nogil=True, error_model="numpy")
def drawdown_extremes(values, times):  # pragma: no cover - compiled
    """One pass over an equity curve: the deepest fall from its running peak, as a fraction (NaN
    when no point has one), the longest time (in ``times``' unit) from a peak to the point that
    regained it, or to the end if never regained, and whether a value is NaN. The running peak is
    numpy's ``maximum.accumulate`` (NaN from a NaN on); a point at or above it is a peak point."""
    n = len(values)
    deepest, peak = np.nan, np.nan
    longest, spans, last, nan_seen = 0, 0, -1, False  # spans: how many peak-to-peak spans so far
    for i in range(n):
        v = values[i]
        nan_seen = nan_seen or np.isnan(v)
        peak = v if i == 0 else (np.nan if np.isnan(peak) or np.isnan(v) else max(peak, v))
        fall = 1.0 - v / peak
        if not np.isnan(fall) and (np.isnan(deepest) or fall > deepest):
            deepest = fall
        if v >= peak:
            if last >= 0 and i - last > 1:  # underwater between two peak points
                span = times[i] - times[last]
                longest = span if spans == 0 else max(longest, span)
                spans += 1
            last = i
    if 0 <= last < n - 1:  # still underwater at the end
        longest = max(longest, times[n - 1] - times[last])
    return deepest, longest, nan_seen


@njit(cache=True, nogil=True)
def day_ends(times, per_day, out):  # pragma: no cover - compiled
    """The index of the last point of each day (day number ``times // per_day``) into ``out``;
    returns how many, or -1 when the days are not in order. Divides only when the day changes:
    the next point is in the same day when it lies in [start, end) of this one."""
    n, k = len(times), 0
    if n == 0:
        return 0
    start = (times[0] // per_day) * per_day
    for i in range(n - 1):
        following = times[i + 1]
        if following < start:  # an earlier day
            return -1
        if following >= start + per_day:  # a later day: this point ends its day
            out[k] = i
            k += 1
            start = (following // per_day) * per_day
    out[k] = n - 1
    return k + 1

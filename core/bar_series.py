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

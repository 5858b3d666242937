"""Round trips of the net position, compiled: the one rule every path's ``trades`` comes from."""

from __future__ import annotations

import numpy as np

from .compiled import njit


@njit(cache=True, nogil=True)
def flat_to_flat(signs, price, qty, fee):  # pragma: no cover - compiled
    """The walk over the fills in time order behind :func:`btc_quant.core.metrics.trades_frame`:
    one row per flat-to-flat round trip of the net position (start fill, end fill, long, max
    quantity, buy value, bought, sell value, sold, fees). A fill that flips the position is split:
    its closing part ends the trade, the rest opens the next one; each part carries its share of
    the fill's fee."""
    rows = np.empty((len(qty) + 1, 9))
    k = 0
    pos = 0.0
    entry_cost = exit_value = fees = max_qty = bought = sold = 0.0
    start = 0
    long_ = True
    for i in range(len(qty)):
        sign = signs[i]
        if abs(pos) < 1e-12:
            start, long_ = i, sign > 0
            entry_cost = exit_value = fees = max_qty = bought = sold = 0.0
        remaining = qty[i]
        while remaining > 1e-12:
            if abs(pos) > 1e-12 and np.sign(pos) != sign:
                part = min(remaining, abs(pos))
            else:
                part = remaining
            share = part / qty[i]
            if sign > 0:
                bought += part
                entry_cost += part * price[i]
            else:
                sold += part
                exit_value += part * price[i]
            fees += fee[i] * share
            pos += sign * part
            max_qty = max(max_qty, abs(pos))
            remaining -= part
            if abs(pos) < 1e-9:
                pos = 0.0
                rows[k, 0] = start
                rows[k, 1] = i
                rows[k, 2] = 1.0 if long_ else 0.0
                rows[k, 3] = max_qty
                rows[k, 4] = entry_cost
                rows[k, 5] = bought
                rows[k, 6] = exit_value
                rows[k, 7] = sold
                rows[k, 8] = fees
                k += 1
                if remaining > 1e-12:
                    start, long_ = i, sign > 0
                    entry_cost = exit_value = fees = max_qty = bought = sold = 0.0
    return rows[:k]

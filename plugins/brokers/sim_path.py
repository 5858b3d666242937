"""The intrabar price path of the ``sim`` broker and its compiled bar scan.

A bar is walked as five points: the previous bar's close (P0), open (P1), a first extreme (P2),
the other extreme (P3) and the close (P4). Segment 0 (P0 -> P1) is the gap between bars, where
only orders already resting can trade. Which extreme comes first:

* ``nearest`` (default, DESIGN.md): the extreme nearer the open; on a tie, the low first for a bar
  that closes at or above its open (O -> L -> H -> C), the high first otherwise.
* ``direction``: O -> L -> H -> C for a bar closing at or above its open, O -> H -> L -> C for a
  falling bar.

:func:`first_event_bar` is the hot loop: between events the broker only needs the first bar
whose range reaches the best resting buy or sell, the liquidation price or the price alert.
"""

from __future__ import annotations

import numpy as np
from numba import njit

PATHS = ("nearest", "direction")


def bar_path(prev_close: float, o: float, h: float, low: float, c: float, mode: str = "nearest") -> tuple[float, float, float, float, float]:
    """The five path points of a bar (see the module docstring)."""
    low_first = c >= o
    if mode == "nearest":
        down, up = o - low, h - o
        if down != up:
            low_first = down < up
    if low_first:
        return (prev_close, o, low, h, c)
    return (prev_close, o, h, low, c)


@njit(cache=True, nogil=True)
def fill_bar_path(path, prev_close, o, h, low, c, nearest):  # pragma: no cover - compiled
    """:func:`bar_path` into ``path`` (5 floats), for the compiled loops; ``nearest``: the mode."""
    low_first = c >= o
    if nearest:
        down, up = o - low, h - o
        if down != up:
            low_first = down < up
    path[0] = prev_close
    path[1] = o
    path[2] = low if low_first else h
    path[3] = h if low_first else low
    path[4] = c


@njit(cache=True, nogil=True)
def first_event_bar(low, high, start, stop, buy_max, sell_min, strict, liq_long, liq_short, alert_low, alert_high):  # pragma: no cover - compiled
    """First bar in ``[start, stop)`` on which something can happen, else ``stop``.

    Something can happen when the low reaches the highest resting buy (``<`` with the strict
    ``through`` model, ``<=`` with ``touch``), the high reaches the lowest resting sell, the low
    reaches a long's liquidation price or the high a short's, or the bar leaves the alert band.
    Pass -inf / +inf for whatever does not exist.
    """
    for j in range(start, stop):
        lo = low[j]
        hi = high[j]
        if strict:
            if lo < buy_max or hi > sell_min:
                return j
        elif lo <= buy_max or hi >= sell_min:
            return j
        if lo <= liq_long or hi >= liq_short or lo <= alert_low or hi >= alert_high:
            return j
    return stop


# --- resting orders as arrays ------------------------------------------------------------------
# Row layout of RestingBook.rows: price (NaN for a market order), side (+1 buy, -1 sell),
# state (0 free slot, 1 resting, 2 waiting for the next open: not matched on the path), and
# the order's place in the queue (a sequence number: lower = older).
_PRICE, _SIDE, _STATE, _SEQ = 0, 1, 2, 3


class RestingBook:
    """The sim's open orders as a numpy table, kept in step with its ``client_id -> Order`` dict,
    so that compiled code can find the next fill on a path segment and the best resting prices.

    Slots are reused; the queue order (oldest first, as the dict keeps it) is the ``seq`` column.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.rows = np.zeros((capacity, 4))
        self.ids: list[str | None] = [None] * capacity  # client id in each slot
        self._slot: dict[str, int] = {}
        self._free = list(range(capacity - 1, -1, -1))
        self._seq = 0.0
        self.size = 0  # rows[:size] holds every used slot

    def add(self, client_id: str, price: float | None, buy: bool, waiting: bool) -> None:
        """A new order at the back of the queue (an amended one is removed and added again)."""
        if not self._free:
            grown = np.zeros((2 * len(self.rows), 4))
            grown[: len(self.rows)] = self.rows
            self._free = list(range(len(grown) - 1, len(self.rows) - 1, -1))
            self.ids.extend([None] * (len(grown) - len(self.rows)))
            self.rows = grown
        slot = self._free.pop()
        self._slot[client_id] = slot
        self.ids[slot] = client_id
        self._seq += 1.0
        row = self.rows[slot]
        row[_PRICE] = np.nan if price is None else price
        row[_SIDE] = 1.0 if buy else -1.0
        row[_STATE] = 2.0 if waiting else 1.0
        row[_SEQ] = self._seq
        if slot >= self.size:
            self.size = slot + 1

    def remove(self, client_id: str) -> None:
        slot = self._slot.pop(client_id, None)
        if slot is not None:
            self.rows[slot, _STATE] = 0.0
            self.ids[slot] = None
            self._free.append(slot)

    def set_waiting(self, client_id: str, waiting: bool) -> None:
        slot = self._slot.get(client_id)
        if slot is not None:
            self.rows[slot, _STATE] = 2.0 if waiting else 1.0

    def clear(self) -> None:
        self.rows[:, _STATE] = 0.0
        self.ids = [None] * len(self.rows)
        self._slot.clear()
        self._free = list(range(len(self.rows) - 1, -1, -1))
        self.size = 0

    def __len__(self) -> int:
        return len(self._slot)


@njit(cache=True, nogil=True)
def next_resting_fill(rows, size, a, b, strict, eps):  # pragma: no cover - compiled
    """The resting order that trades first on the path segment ``a -> b``: (slot, price) or (-1, 0).

    A resting order the price is already beyond (the rest of a volume-capped order) trades at
    ``a``; otherwise buys trade at their price on a falling segment that reaches them by the fill
    model (``b < price`` strict, ``b <= price`` touch) and sells on a rising one. The nearest
    price to ``a`` wins; between equally near orders, the oldest.
    """
    best = -1
    best_at = 0.0
    best_d = np.inf
    best_seq = np.inf
    for k in range(size):
        if rows[k, 2] != 1.0:
            continue
        p = rows[k, 0]
        if p != p:  # market order
            continue
        if rows[k, 1] > 0:
            if p > a + eps:
                at = a
            elif b < a and ((b < p) if strict else (b <= p)):
                at = p
            else:
                continue
        else:
            if p < a - eps:
                at = a
            elif b > a and ((b > p) if strict else (b >= p)):
                at = p
            else:
                continue
        d = abs(at - a)
        if d < best_d or (d == best_d and rows[k, 3] < best_seq):
            best, best_at, best_d, best_seq = k, at, d, rows[k, 3]
    return best, best_at


@njit(cache=True, nogil=True)
def resting_bounds(rows, size):  # pragma: no cover - compiled
    """(highest buy price, lowest sell price, any market order) over every open order."""
    buy_max = -np.inf
    sell_min = np.inf
    market = False
    for k in range(size):
        if rows[k, 2] == 0.0:
            continue
        p = rows[k, 0]
        if p != p:
            market = True
        elif rows[k, 1] > 0:
            if p > buy_max:
                buy_max = p
        elif p < sell_min:
            sell_min = p
    return buy_max, sell_min, market


@njit(cache=True, nogil=True)
def liquidation_price(qty, entry, wallet, BB):  # pragma: no cover - compiled
    """:func:`btc_quant.core.margin.liquidation_price` (Binance USDⓈ-M, formula and source in that
    module's docstring) for one position and no other contracts, NaN where it gives None.
    ``wallet``: the cross wallet balance, or the position's isolated margin. ``BB`` rows: notional
    floor, notional cap, maintenance rate, maintenance amount (cum) of each bracket."""
    if abs(qty) < 1e-12:
        return np.nan
    side = 1.0 if qty > 0 else -1.0
    size = abs(qty)
    best = np.nan
    best_miss = np.inf
    found = False
    for k in range(BB.shape[0]):
        denominator = size * BB[k, 2] - side * size
        if denominator == 0:
            continue
        price = (wallet + BB[k, 3] - side * size * entry) / denominator
        notional = size * price
        miss = max(BB[k, 0] - notional, notional - BB[k, 1], 0.0)
        if miss == 0.0 and notional < BB[k, 1]:
            return price if price > 0 else np.nan
        if miss < best_miss:  # float rounding can put the price exactly on a cap: keep the nearest
            best = price
            best_miss = miss
            found = True
    if found and best > 0:
        return best
    return np.nan


@njit(cache=True, nogil=True)
def position_after_fill(qty, entry, signed_fill, price):  # pragma: no cover - compiled
    """:meth:`btc_quant.core.model.Position.apply` for the compiled loops: the position's new
    signed quantity and entry price after a fill of ``signed_fill`` at ``price``, and the PnL it
    realised. Adding keeps the average entry; reducing keeps it; flipping starts at ``price``."""
    if abs(qty) < 1e-12 or (qty > 0) == (signed_fill > 0):
        new_qty = qty + signed_fill
        return new_qty, (entry * abs(qty) + price * abs(signed_fill)) / abs(new_qty), 0.0
    closing = min(abs(signed_fill), abs(qty))
    realized = closing * (price - entry) * (1.0 if qty > 0 else -1.0)
    remainder = abs(signed_fill) - closing
    new_qty = qty + signed_fill
    if abs(new_qty) < 1e-12:
        return 0.0, 0.0, realized
    return new_qty, (price if remainder > 0 else entry), realized

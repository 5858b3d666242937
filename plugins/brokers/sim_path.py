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


def warm_up() -> None:
    """Compile :func:`first_event_bar` (cached on disk after the first process)."""
    a = np.ones(2)
    first_event_bar(a, a, 0, 2, -np.inf, np.inf, True, -np.inf, np.inf, -np.inf, np.inf)

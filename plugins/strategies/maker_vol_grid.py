"""The rules of ``maker_vol`` (see ``STRATEGY_MAKER_VOL.md``), written once: numbers and arrays in,
numbers out, no I/O.

Each rule is a compiled function over the strategy's state as arrays, and both paths call the same
function: the event path (:class:`~.maker_vol.MakerVol`, for paper, live and event backtests,
through :class:`GridBook`) and the compiled backtest (:mod:`.maker_vol_kernel`, on its own arrays
of the same layout). The state: ``L``, one row per lot (``L_*`` columns); ``LOTS``, the open lots'
ids; ``B``, the book's totals (``B_*``); ``TPAT``, level -> id of the lot whose take-profit it holds
(0 = free); the ladder's prices and the entry sizes per level. The rules: the ladder and the
lookback range (recompute of top/bottom), sizing and leverage (:func:`level_sizes`,
:func:`lot_leverage`, :func:`required_margin`), take-profit placement with no shared level and
saturation (:func:`place_take_profit`), their move when the ladder moves
(:func:`relay_take_profits`), the desired set and cash pauses (:func:`desired_levels`), the lot book
on fills (``book_*``), keeping the liquidation line (:func:`line_funding`, :func:`restore_closes`)
and the wake-up band (:func:`arming_price`, :func:`arming_band`).

One :class:`Ladder` is a geometric grid for one direction. Index 0 is the *top* (where entries
start: for a long grid the highest buy, for a short grid the lowest sell) and indexes grow toward
the *bottom* (the liquidation line: lower for a long grid, higher for a short one). ``direction``
is +1 for long and -1 for short; everything short is the mirror image of long through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from btc_quant.core.compiled import njit

from ..brokers.sim.venue import PS_BOTH, PS_LONG, PS_SHORT, bracket_index, liquidation_price, maintenance_margin


def order_leverage(price: float, bottom: float, mmr: float, direction: int = 1) -> float:
    """Leverage that puts an isolated position entered at ``price`` into liquidation at ``bottom``.

    Long: margin = loss at bottom + maintenance on the entry notional = q(p - b) + mmr q p, so
    L = notional / margin = 1 / (1 + mmr - b/p) (the spec's formula). Binance charges maintenance
    on the notional at the liquidation price (q b < q p for a long), so the exchange's liquidation
    price of the lot (:func:`book_liquidation_price`) lies at or just below bottom.

    Short (direction -1), the mirror image: the notional at bottom is the larger one (b > p), so
    maintenance is taken there to stay on the safe side: margin = q(b - p) + mmr q b,
    L = 1 / ((1 + mmr) b/p - 1); the exchange's liquidation price is then exactly bottom.
    """
    if direction > 0:
        denominator = 1.0 + mmr - bottom / price
    else:
        denominator = (1.0 + mmr) * bottom / price - 1.0
    if denominator <= 0 or direction * (price - bottom) <= 0:
        raise ValueError(f"price {price} is at or beyond bottom {bottom}: no leverage liquidates there")
    return 1.0 / denominator


# --- sizing and the liquidation line: compiled, called by the event path (MakerVol) and by the
# compiled backtest (maker_vol_kernel) alike. ``BB`` is a bracket table with rows (notional floor,
# notional cap, maintenance rate, maintenance amount, maximum leverage), as the sim's.


@njit(cache=True, nogil=True)
def lookback_highs(ts, high, at, n_bars, lookback_ms):  # pragma: no cover - compiled
    """For each bar in ``at`` (ascending): the highest high of the last ``n_bars`` bars up to it
    whose ``ts`` lies within ``lookback_ms`` of its own (the spec's "recent high").

    Bars in time order without a missing high (every real run): :func:`_window_highs`, which
    reads each bar about twice; otherwise the general walk of :func:`_deque_highs`."""
    ordered = lookback_ms > 0 and n_bars >= 1 and len(high) == len(ts)
    missing = False
    earlier = 0  # bars whose time is before the previous bar's
    for j in range(len(ts) if ordered else 0):
        missing |= np.isnan(high[j])
        earlier += j > 0 and ts[j] < ts[j - 1]
    ordered = ordered and not missing and earlier == 0
    for k in range(len(at)):
        if not ordered:
            break
        ordered = 0 <= at[k] < len(ts) and (k == 0 or at[k] > at[k - 1])
    return _window_highs(ts, high, at, n_bars, lookback_ms) if ordered else _deque_highs(ts, high, at, n_bars, lookback_ms)


@njit(cache=True, nogil=True)
def _deque_highs(ts, high, at, n_bars, lookback_ms):  # pragma: no cover - compiled
    """:func:`lookback_highs` by a monotonic deque over every bar."""
    out = np.empty(len(at))
    dq = np.empty(len(ts), dtype=np.int64)
    head = 0
    tail = 0
    k = 0
    for i in range(len(ts)):
        while tail > head and high[dq[tail - 1]] <= high[i]:
            tail -= 1
        dq[tail] = i
        tail += 1
        if k < len(at) and at[k] == i:
            left = max(0, i + 1 - n_bars)
            while head < tail and (dq[head] < left or not (ts[dq[head]] > ts[i] - lookback_ms)):
                head += 1
            out[k] = high[dq[head]]
            k += 1
    return out


@njit(cache=True, nogil=True)
def _window_highs(ts, high, at, n_bars, lookback_ms):  # pragma: no cover - compiled
    """:func:`lookback_highs` for bars in time order with no NaN high and ``at`` strictly rising.
    Each window ends at its bar ``at[k]`` and starts at the first bar ``p`` inside both limits, so
    it is the tail of the segment ``(at[s - 1], at[s]]`` holding ``p`` (the segment's maxima from
    each bar to its end, ``tail_high``, one backward pass) and the whole segments ``s + 1 .. k``
    (their highs through a monotonic deque of segments, both ends moving forward only): the same
    bars as the walk over every bar, so the same highest high."""
    m = len(at)
    out = np.empty(m)
    if m == 0:
        return out
    first = np.empty(m, dtype=np.int64)  # each segment's first bar
    tail_high = np.empty(at[m - 1] + 1)
    for k in range(m - 1, -1, -1):
        first[k] = at[k - 1] + 1 if k > 0 else 0
        best = high[at[k]]
        for j in range(at[k], first[k] - 1, -1):
            best = max(best, high[j])
            tail_high[j] = best
    dq = np.empty(m, dtype=np.int64)  # segments, their highs falling from head to tail
    head = tail = 0
    p = s = 0
    for k in range(m):
        i = at[k]
        while tail > head and tail_high[first[dq[tail - 1]]] <= tail_high[first[k]]:
            tail -= 1
        dq[tail] = k
        tail += 1
        p = max(p, i + 1 - n_bars)  # the window's first bar: within n_bars ...
        while not (ts[p] > ts[i] - lookback_ms):  # ... and within lookback_ms
            p += 1
        while at[s] < p:
            s += 1
        while head < tail and dq[head] <= s:
            head += 1
        best = tail_high[p]
        if head < tail:
            best = max(best, tail_high[first[dq[head]]])
        out[k] = best
    return out


def lookback_range(ts, high, low, at, n_bars: int, lookback_ms: int, side: str = "both") -> tuple[np.ndarray, np.ndarray]:
    """The highest high and the lowest low of the lookback window ending at each bar in ``at``
    (:func:`lookback_highs`): what top and bottom are recomputed from, in both paths. ``side``:
    the grids they serve; a long grid reads only the high and a short one only the low, so with
    ``side="long"`` (``"short"``) the lows (highs) are not computed and come back as zeros."""
    ts = np.asarray(ts, dtype=np.int64)
    at = np.asarray(at, dtype=np.int64)
    highs = lookback_highs(ts, np.asarray(high, dtype=np.float64), at, n_bars, lookback_ms) if side != "short" else np.zeros(len(at))
    lows = -lookback_highs(ts, -np.asarray(low, dtype=np.float64), at, n_bars, lookback_ms) if side != "long" else np.zeros(len(at))
    return highs, lows


def bracket_table(brackets, default_mmr: float) -> np.ndarray:
    """The ``BB`` table of an instrument's maintenance brackets (one open-ended row of
    ``default_mmr`` and leverage 125 when it has none)."""
    if not brackets:
        return np.array([(0.0, math.inf, default_mmr, 0.0, 125.0)], dtype=np.float64)
    return np.array(
        [(b.notional_floor, b.notional_cap, b.maintenance_rate, b.maintenance_amount, b.max_leverage) for b in brackets], dtype=np.float64
    )


@njit(cache=True, nogil=True)
def levels_at_or_beyond(prices, off, length, x, d):  # pragma: no cover - compiled
    """Number of ladder levels (``prices[off:off + length]``, from top) at or beyond ``x`` toward
    top -- long (prices descending): at or above it; short (ascending): at or below it. It is the
    index of the first level strictly adverse of ``x``."""
    lo, hi = 0, length
    while lo < hi:
        mid = (lo + hi) // 2
        if d * prices[off + mid] >= d * x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def tp_level(prices, off, length, entry, tp_pct, d):  # pragma: no cover - compiled
    """The take-profit level of a lot entered at ``entry``: the first level at or beyond ``entry x
    (1 + d x tp_pct)``, i.e. the adverse-most such level; 0 (top) when even top is not that far."""
    return max(levels_at_or_beyond(prices, off, length, entry * (1.0 + d * tp_pct), d) - 1, 0)


@njit(cache=True, nogil=True)
def first_entry_level(prices, tp_pct, d):  # pragma: no cover - compiled
    """The first level whose take-profit level lies beyond it (top itself has no room)."""
    n = prices.shape[0]
    for level in range(n):
        if tp_level(prices, 0, n, prices[level], tp_pct, d) < level:
            return level
    return n


@njit(cache=True, nogil=True)
def _leverage_for(price, bottom, direction, mmr):  # pragma: no cover - compiled
    if direction > 0:
        return 1.0 / (1.0 + mmr - bottom / price)
    return 1.0 / ((1.0 + mmr) * bottom / price - 1.0)


@njit(cache=True, nogil=True)
def lot_leverage(price, bottom, direction, notional, BB):  # pragma: no cover - compiled
    """:func:`order_leverage` with the maintenance rate of the bracket that holds the order's
    ``notional``, capped at that bracket's maximum leverage (a capped order holds more margin than
    its loss at bottom: its own line lies beyond bottom, on the safe side). 1 for a price at or
    beyond bottom (an order of an older ladder that filled there: funded in full)."""
    if direction * (price - bottom) <= 0:
        return 1.0
    k = bracket_index(notional, BB)
    return min(_leverage_for(price, bottom, direction, BB[k, 2]), BB[k, 4])


@njit(cache=True, nogil=True)
def level_sizes(prices, bottom, direction, margin, BB, lot, qscale, min_notional, QTY, LEV):  # pragma: no cover - compiled
    """Quantity and leverage of the entry at each level of ``prices`` (spec: margin = ``margin``
    each, leverage :func:`lot_leverage`), written into ``QTY`` / ``LEV``; returns the number of
    levels *merged*.

    An order whose notional would be under the exchange minimum is not raised to it: the level
    takes the margin of as many levels as the minimum needs (itself and the next ones toward
    bottom, which then hold no entry: quantity 0) -- the same capital over the same stretch of
    the ladder, in fewer, larger orders."""
    return level_sizes_from(prices, 0, prices.shape[0], bottom, direction, margin, BB, lot, qscale, min_notional, QTY, LEV)[1]


@njit(cache=True, nogil=True)
def level_sizes_from(
    prices, start, stop, bottom, direction, margin, BB, lot, qscale, min_notional, QTY, LEV
):  # pragma: no cover - compiled
    """:func:`level_sizes` from level ``start`` (0, or where an earlier call over the same ladder
    and margin stopped) until every level before ``stop`` has its size: the levels are sized in
    order, and a merge decides the levels after it, so a ladder sized in pieces gets the sizes it
    gets in one go. Returns (the level to go on from, levels merged by this call)."""
    n = prices.shape[0]
    merged = 0
    i = start
    while i < stop:
        p = prices[i]
        lev = lot_leverage(p, bottom, direction, margin * _leverage_for(p, bottom, direction, BB[0, 2]), BB)
        k = 1
        qty = math.floor(margin * lev / p / lot + 1e-9) * lot
        while qty * p < min_notional - 1e-9 or qty <= 0:
            k += 1
            qty = math.floor(k * margin * lev / p / lot + 1e-9) * lot
        QTY[i] = np.rint(qty * qscale) / qscale
        LEV[i] = lev
        for j in range(i + 1, min(i + k, n)):
            QTY[j] = 0.0
            LEV[j] = lev
            merged += 1
        i += k
    return i, merged


@njit(cache=True, nogil=True)
def entry_sizes(prices, first, bottom, direction, margin, BB, lot, qscale, min_notional, QTY, MARGIN):  # pragma: no cover - compiled
    """Quantity and margin of the entry at each level from ``first`` of a ladder whose entry prices
    (rounded to the tick) are ``prices`` (from level 0): :func:`level_sizes`, written into
    ``QTY[level]`` / ``MARGIN[level]`` (0 at a merged level: it holds no entry); returns the number
    of levels merged. Allocates nothing (the compiled backtest's loop runs without numba's
    reference counting): each level's leverage is held in ``MARGIN`` until its margin replaces it."""
    n = prices.shape[0]
    return entry_sizes_from(prices, first, n, bottom, direction, margin, BB, lot, qscale, min_notional, QTY, MARGIN)[1]


@njit(cache=True, nogil=True)
def entry_sizes_from(
    prices, start, stop, bottom, direction, margin, BB, lot, qscale, min_notional, QTY, MARGIN
):  # pragma: no cover - compiled
    """:func:`entry_sizes` from level ``start`` (the first entry level, or where an earlier call
    stopped) until every level before ``stop`` has its size (:func:`level_sizes_from`): the
    compiled backtest sizes a ladder as far as its entries reach, which is seldom far below the
    price in an hour. Returns (the level to go on from, levels merged by this call)."""
    n = prices.shape[0]
    at, merged = level_sizes_from(prices, start, stop, bottom, direction, margin, BB, lot, qscale, min_notional, QTY, MARGIN)
    for level in range(start, min(at, n)):
        q = QTY[level]
        MARGIN[level] = q * prices[level] / MARGIN[level] if q > 0 else 0.0
    return at, merged


@njit(cache=True, nogil=True)
def required_margin(qty, entry, bottom, direction, BB):  # pragma: no cover - compiled
    """Isolated margin a position of ``qty`` (> 0) at ``entry`` must hold for its liquidation
    price to lie at or beyond ``bottom`` (long: at or below it).

    Binance liquidates an isolated position when its margin balance (isolated margin + unrealised
    PnL) falls to its maintenance margin (USD-M "Liquidation Price Calculation", and the formula in
    :mod:`btc_quant.core.margin`); at the price ``bottom`` that is margin + side x qty x (bottom -
    entry) = maintenance margin of the notional qty x bottom, so the margin is
    side x qty x (entry - bottom) + maintenance_margin(qty x bottom)."""
    return direction * qty * (entry - bottom) + maintenance_margin(qty * bottom, BB)


@njit(cache=True, nogil=True)
def book_liquidation_price(qty, cost, margin, direction, BB):  # pragma: no cover - compiled
    """Liquidation price of lots of total ``qty`` (> 0), entry value ``cost`` and margin ``margin``
    held as one isolated position of ``direction``: the venue's Binance formula
    (:func:`~btc_quant.plugins.brokers.sim.venue.liquidation_price`, the one implementation);
    NaN when there is none."""
    if qty <= 0:
        return np.nan
    return liquidation_price(direction * qty, cost / qty, margin, BB)


@njit(cache=True, nogil=True)
def position_leverage(max_lot_leverage, notional, BB):  # pragma: no cover - compiled
    """The leverage setting of the position: what its most leveraged lot needs (rounded up, as
    exchanges take whole numbers), capped at the bracket maximum for its ``notional``."""
    return min(float(math.ceil(max_lot_leverage)), BB[bracket_index(notional, BB), 4])


@njit(cache=True, nogil=True)
def restore_share(required, held, available, qty, entry, price, direction, fee_rate):  # pragma: no cover - compiled
    """Share of the position (0..1) to close at market when its margin ``held`` plus the
    ``available`` balance cannot reach ``required``: closing a share f releases f x ``held`` of
    isolated margin and realises f x the unrealised PnL (less the taker fee), which added back to
    the rest funds it when (1 - f)(required - held) <= available + f (held + upnl - fee), i.e.
    f = (required - held - available) / (required + upnl - fee)."""
    short = required - held - available
    if short <= 0:
        return 0.0
    room = required + direction * qty * (price - entry) - qty * price * fee_rate
    if room <= short:
        return 1.0
    return short / room


# --- the lot book: compiled, over arrays, called by GridBook (the event path) and by the compiled
# backtest on its own copies. ``L`` holds one row per lot id (ids start at 1, never reused), ``LOTS``
# the ids of the open lots in the order they opened, ``B`` the book's totals over them, ``TPAT`` its
# take-profit levels (level -> lot id, 0 = free).
L_LEVEL, L_ENTRY, L_QTY, L_MARGIN, L_LEV, L_TP, L_CLOSING, L_FREED = range(8)
NL = 8  # L_CLOSING: 0 open, else a market close is under way (the kernel numbers its retries there)
B_NLOTS, B_QTY, B_MARGIN, B_COST, B_NEXT = range(5)  # open lots, their quantity, margin, quantity x entry; the last id
B_NTP = 5  # the levels holding a take-profit (TPAT != 0), kept by the three rules that write TPAT
NB = 6


@njit(cache=True, nogil=True)
def _book_add(B, qty, cost, margin):  # pragma: no cover - compiled
    B[B_QTY] += qty
    B[B_COST] += cost
    B[B_MARGIN] += margin
    if B[B_NLOTS] == 0:  # no drift of float totals across an empty book
        B[B_QTY] = 0.0
        B[B_COST] = 0.0
        B[B_MARGIN] = 0.0


@njit(cache=True, nogil=True)
def book_open_lot(B, L, LOTS, level, entry, qty, margin, leverage):  # pragma: no cover - compiled
    """A filled entry at ``level``: a new lot (no take-profit yet). Returns its id, or -1 when
    ``L`` or ``LOTS`` has no room for it (nothing is changed)."""
    lot = int(B[B_NEXT]) + 1
    n = int(B[B_NLOTS])
    if lot >= L.shape[0] or n >= LOTS.shape[0]:
        return -1
    B[B_NEXT] = lot
    L[lot, L_LEVEL] = level
    L[lot, L_ENTRY] = entry
    L[lot, L_QTY] = qty
    L[lot, L_MARGIN] = margin
    L[lot, L_LEV] = leverage
    L[lot, L_TP] = -1
    L[lot, L_CLOSING] = 0
    L[lot, L_FREED] = np.nan
    LOTS[n] = lot
    B[B_NLOTS] = n + 1
    _book_add(B, qty, qty * entry, margin)
    return lot


@njit(cache=True, nogil=True)
def book_reduce_lot(B, L, lot, quantity):  # pragma: no cover - compiled
    """Part of ``lot`` closed (a partial take-profit or close): it and its margin shrink pro rata."""
    q = L[lot, L_QTY]
    share = min(quantity / q, 1.0)
    _book_add(B, -q * share, -q * share * L[lot, L_ENTRY], -L[lot, L_MARGIN] * share)
    L[lot, L_MARGIN] *= 1.0 - share
    L[lot, L_QTY] = np.rint(q * (1.0 - share) * 1e12) / 1e12


@njit(cache=True, nogil=True)
def book_withdraw_tp(B, L, TPAT, lot):  # pragma: no cover - compiled
    """Take ``lot``'s take-profit off its level (the lot is closed another way)."""
    tp = int(L[lot, L_TP])
    if tp >= 0 and TPAT[tp] == lot:
        TPAT[tp] = 0
        B[B_NTP] -= 1
    L[lot, L_TP] = -1


@njit(cache=True, nogil=True)
def book_close_lot(B, L, LOTS, TPAT, lot):  # pragma: no cover - compiled
    """``lot`` is closed: it leaves the open lots, its take-profit level and the totals."""
    n = int(B[B_NLOTS])
    j = 0
    for k in range(n):
        if LOTS[k] != lot:
            LOTS[j] = LOTS[k]
            j += 1
    B[B_NLOTS] = j
    book_withdraw_tp(B, L, TPAT, lot)
    q = L[lot, L_QTY]
    _book_add(B, -q, -q * L[lot, L_ENTRY], -L[lot, L_MARGIN])


@njit(cache=True, nogil=True)
def book_is_open(B, LOTS, lot):  # pragma: no cover - compiled
    for k in range(int(B[B_NLOTS])):
        if LOTS[k] == lot:
            return True
    return False


@njit(cache=True, nogil=True)
def restore_closes(B, L, LOTS, TPAT, quantity, OUT):  # pragma: no cover - compiled
    """The lots to close at market so that ``quantity`` of the position closes to restore its
    liquidation line (:func:`restore_share`), less what closes already under way take: the most
    leveraged first (the oldest on a tie). Their take-profits are withdrawn and they are marked
    closing; their ids go to ``OUT``. Returns how many."""
    n = int(B[B_NLOTS])
    todo = quantity
    for k in range(n):
        if L[LOTS[k], L_CLOSING] != 0:
            todo -= L[LOTS[k], L_QTY]
    count = 0
    while todo > 0:
        best = -1
        for k in range(n):
            lot = LOTS[k]
            if L[lot, L_CLOSING] != 0:
                continue
            if best < 0 or L[lot, L_LEV] > L[best, L_LEV] or (L[lot, L_LEV] == L[best, L_LEV] and lot < best):
                best = lot
        if best < 0:
            break
        book_withdraw_tp(B, L, TPAT, best)
        L[best, L_CLOSING] = 1
        OUT[count] = best
        count += 1
        todo -= L[best, L_QTY]
    return count


@njit(cache=True, nogil=True)
def book_max_leverage(B, L, LOTS):  # pragma: no cover - compiled
    """The leverage of the most leveraged open lot (-inf when none)."""
    top = -np.inf
    for k in range(int(B[B_NLOTS])):
        top = max(top, L[LOTS[k], L_LEV])
    return top


@njit(cache=True, nogil=True)
def book_open_entry(B, L, LOTS, level, price, qty, bottom, d, BB):  # pragma: no cover - compiled
    """A filled entry of ``qty`` at ``price`` opens a lot with the leverage :func:`lot_leverage`
    gives it and the margin notional / leverage. Returns its id, or -1 when there is no room."""
    leverage = lot_leverage(price, bottom, d, qty * price, BB)
    return book_open_lot(B, L, LOTS, level, price, qty, qty * price / leverage, leverage)


@njit(cache=True, nogil=True)
def book_take_profit_fill(B, L, LOTS, TPAT, lot, qty, price, d):  # pragma: no cover - compiled
    """``qty`` of ``lot``'s take-profit filled at ``price``: the lot shrinks (a partial fill) or
    closes. Returns (its gross profit d x (price - entry) x qty, closed)."""
    gross = d * (price - L[lot, L_ENTRY]) * qty
    if qty < L[lot, L_QTY] - 1e-12:
        book_reduce_lot(B, L, lot, qty)
        return gross, False
    book_close_lot(B, L, LOTS, TPAT, lot)
    return gross, True


@njit(cache=True, nogil=True)
def book_close_fill(B, L, LOTS, TPAT, lot, qty, price, d, done, min_qty):  # pragma: no cover - compiled
    """``qty`` of a market close of ``lot`` filled at ``price``: when its order is ``done`` the lot
    closes, else it shrinks by ``qty`` and closes when less than ``min_qty`` is left (a lot that is
    no longer open is left alone). Returns the PnL d x (price - entry) x qty."""
    pnl = d * (price - L[lot, L_ENTRY]) * qty
    if book_is_open(B, LOTS, lot):
        if done:
            book_close_lot(B, L, LOTS, TPAT, lot)
        else:
            book_reduce_lot(B, L, lot, qty)
            if L[lot, L_QTY] < min_qty:
                book_close_lot(B, L, LOTS, TPAT, lot)
    return pnl


@njit(cache=True, nogil=True)
def book_liquidate(B, L, LOTS, TPAT, price, d):  # pragma: no cover - compiled
    """The position was liquidated at ``price``: every lot leaves the book. Returns their PnL."""
    pnl = 0.0
    while B[B_NLOTS] > 0:
        lot = LOTS[0]
        pnl += d * (price - L[lot, L_ENTRY]) * L[lot, L_QTY]
        book_close_lot(B, L, LOTS, TPAT, lot)
    return pnl


@njit(cache=True, nogil=True)
def beyond_line(price, line, bottom, d):  # pragma: no cover - compiled
    """Is ``price`` on the safe side of ``bottom`` while ``line`` (a liquidation price) lies beyond
    it (long: above bottom, by more than a millionth)? The breach the strategy must never show."""
    return d * (price - bottom) > 0 and d * (line - bottom) > 1e-6 * bottom


@njit(cache=True, nogil=True)
def liquidated_above_bottom(price, bottom, d):  # pragma: no cover - compiled
    """A liquidation at ``price`` on the safe side of ``bottom`` (the spec promises none)."""
    return d * (price - bottom) > 1e-9 * bottom


LINE_OK, LINE_ADD, LINE_REFUSED, LINE_CLOSE = 0, 1, 2, 3


@njit(cache=True, nogil=True)
def line_funding(required, held, available, qty, entry, price, bottom, d, fee_rate, wake):  # pragma: no cover - compiled
    """What keeps a position (``qty`` > 0 at ``entry``, isolated margin ``held``) liquidated at
    ``bottom`` (spec "动态杠杆"; ``required``: :func:`required_margin`). Returns (action, amount):
    LINE_OK, nothing to do; LINE_ADD, add ``amount`` of margin from the ``available`` balance;
    LINE_REFUSED, the balance cannot fund it and nothing more is done (not at a wake-up, or the
    price at or beyond bottom); LINE_CLOSE, it cannot, and ``amount`` of the position is to close
    at market (:func:`restore_share`; :func:`restore_closes` picks the lots)."""
    need = required - held
    if need <= 1e-6:
        return LINE_OK, 0.0
    if need <= available + 1e-9:
        return LINE_ADD, need
    if not wake or d * (price - bottom) <= 0:
        return LINE_REFUSED, 0.0
    return LINE_CLOSE, restore_share(required, held, available, qty, entry, price, d, fee_rate) * qty


# --- take-profit levels: compiled, over ``TPAT`` (level -> id of the lot whose take-profit it holds,
# 0 = free; lot ids start at 1), called by GridBook (the event path) and by the compiled backtest.


@njit(cache=True, nogil=True)
def free_tp_level(TPAT, start, stop=0):  # pragma: no cover - compiled
    """First level from ``start`` toward top (down to ``stop``) that holds no take-profit; -1 when none."""
    for level in range(start, stop - 1, -1):
        if TPAT[level] == 0:
            return level
    return -1


@njit(cache=True, nogil=True)
def place_take_profit(B, L, TPAT, prices, off, length, tp_pct, d, lot):  # pragma: no cover - compiled
    """Give ``lot`` its take-profit level: the first free level from its target (:func:`tp_level`
    of its entry) toward top. When none is free (*saturation*) the take-profit nearest top is taken
    off its level, its lot marked closing (to close at market, ``L_FREED`` the price it gave up),
    and the new one placed by the same rule (on the freed level or a nearer free one). Returns the
    lot to close, 0 when none."""
    book_withdraw_tp(B, L, TPAT, lot)
    target = tp_level(prices, off, length, L[lot, L_ENTRY], tp_pct, d)
    level = free_tp_level(TPAT, target)
    victim = 0
    if level < 0:
        for lv in range(length):
            if TPAT[lv] != 0:
                victim = TPAT[lv]
                book_withdraw_tp(B, L, TPAT, victim)
                L[victim, L_FREED] = prices[off + lv]
                L[victim, L_CLOSING] = 1
                break
        level = free_tp_level(TPAT, target)
    TPAT[level] = lot
    B[B_NTP] += 1
    L[lot, L_TP] = level
    return victim


@njit(cache=True, nogil=True)
def relay_take_profits(B, L, TPAT, prices, off, length, new_prices, noff, nlen, tp_pct, d, LOTS_OUT):  # pragma: no cover - compiled
    """Move the take-profits in ``TPAT`` from the ladder ``prices[off:off + length]`` to the new one
    ``new_prices[noff:noff + nlen]`` (top/bottom recomputed; ``TPAT`` holds ``max(length, nlen)``
    levels).

    Nearest-top take-profits go first and keep the top-most levels. Each goes to the adverse-most
    new level at or beyond its old price or its own target, whichever is further from the entry
    (one capped by an earlier lower top goes back up when top rises again); beyond the new top it
    is capped at top; conflicts shift toward top; one that finds no free level from top back to its
    own target gets none and its lot is marked closing (a market close: saturation). Returns how
    many were moved, their lots in ``LOTS_OUT``, nearest top first."""
    nrel = 0
    held = int(B[B_NTP])
    for lv in range(length):
        if nrel == held:  # the rest hold none (the take-profits sit near top: seldom a long read)
            break
        if TPAT[lv] != 0:
            LOTS_OUT[nrel] = TPAT[lv]
            nrel += 1
            TPAT[lv] = 0
    B[B_NTP] -= nrel
    for k in range(nrel):
        lot = LOTS_OUT[k]
        target = tp_level(new_prices, noff, nlen, L[lot, L_ENTRY], tp_pct, d)
        start = min(tp_level(new_prices, noff, nlen, prices[off + int(L[lot, L_TP])], 0.0, d), target)
        level = free_tp_level(TPAT, start)
        if level < 0:  # capped at top and taken: any free level from top to its own target
            for lv in range(0, target + 1):
                if TPAT[lv] == 0:
                    level = lv
                    break
        L[lot, L_TP] = level
        if level >= 0:
            TPAT[level] = lot
            B[B_NTP] += 1
        else:
            L[lot, L_CLOSING] = 1
    return nrel


@njit(cache=True, nogil=True)
def levels_holding(TPAT, start, stop):  # pragma: no cover - compiled
    """How many levels of ``start:stop`` hold a take-profit (``TPAT`` != 0). Read at every wake-up:
    the loop runs over the slice's elements, which compiles to vector compares (an indexed loop
    does not), about twice as fast over a ladder of hundreds of levels."""
    count = 0
    for lot in TPAT[start:stop]:
        count += lot != 0
    return count


@njit(cache=True, nogil=True)
def desired_levels(
    B, L, TPAT, prices, off, length, first, QTY, MARGIN, sized, price, d, n, free, TP_OUT, ENTRY_OUT
):  # pragma: no cover - compiled
    """One grid's desired set at ``price`` (spec: "virtual -> real mapping", "资金不足" pause): the
    ``n`` take-profit levels nearest the price on its favourable side, less those of lots being
    closed at market (``TP_OUT``, top-most first),
    and the ``n`` entry levels nearest it on the adverse side, from ``first``, that hold no
    take-profit and have a size (``QTY`` > 0), as long as the ``free`` margin funds each one's
    ``MARGIN`` (``ENTRY_OUT``, nearest first; the first it cannot fund pauses the entries).
    Returns (take-profits, entries, virtual orders: armed entry levels and open lots, paused,
    free margin left, -1); or, when it reaches a level at or after ``sized`` (the levels before
    it have their sizes: :func:`entry_sizes_from`), that level last: the caller sizes it and asks
    again."""
    kk = levels_at_or_beyond(prices, off, length, price, d)
    ntp = 0
    level = min(kk, length) - 1
    seen = 0
    while level >= 0 and seen < n:
        if TPAT[level] != 0:
            seen += 1
            if L[TPAT[level], L_CLOSING] == 0:
                TP_OUT[ntp] = level
                ntp += 1
        level -= 1
    for k in range(ntp // 2):
        TP_OUT[k], TP_OUT[ntp - 1 - k] = TP_OUT[ntp - 1 - k], TP_OUT[k]
    start = max(kk, first)
    # the levels from start on that hold a take-profit: all of them (B_NTP) less those before start
    # (the price is seldom far below top: few levels to read)
    armed = length - start + int(B[B_NLOTS]) - (int(B[B_NTP]) - levels_holding(TPAT, 0, min(start, length)))
    placed = 0
    paused = False
    for level in range(start, length):
        if placed >= n:
            break
        if level >= sized:
            return ntp, placed, armed, paused, free, level
        if TPAT[level] != 0 or QTY[level] <= 0:  # holds a take-profit, or merged into a level nearer top
            continue
        if MARGIN[level] > free:
            paused = True
            break
        free -= MARGIN[level]
        ENTRY_OUT[placed] = level
        placed += 1
    return ntp, placed, armed, paused, free, -1


@njit(cache=True, nogil=True)
def arming_price(prices, off, length, price, d):  # pragma: no cover - compiled
    """The wake-up condition of a grid: the level nearest ``price`` on its favourable side, which
    the price must pass (toward top) to arm a new entry level; NaN when the price is beyond top."""
    k = levels_at_or_beyond(prices, off, length, price, d)
    return prices[off + k - 1] if k > 0 else np.nan


@njit(cache=True, nogil=True)
def arming_band(low, high, level_price, d):  # pragma: no cover - compiled
    """The price band to wake outside of, widened by one grid's :func:`arming_price` (NaN: no
    bound): a long grid's wakes the strategy above it (the nearest such level of all long grids),
    a short grid's below it."""
    if level_price != level_price:
        return low, high
    if d > 0:
        return low, (level_price if high != high else min(high, level_price))
    return (level_price if low != low else max(low, level_price)), high


@njit(cache=True, nogil=True)
def next_recompute_ms(now_ms, period_ms):  # pragma: no cover - compiled
    """When top and bottom are next recomputed: the start of the next ``recompute`` period."""
    return (now_ms // period_ms + 1) * period_ms


@njit(cache=True, nogil=True)
def position_holds(held, quantity, lot_size):  # pragma: no cover - compiled
    """Does a position holding ``held`` (on a grid's side, less the closes under way) still hold
    ``quantity`` of it, to half a lot? A retried close of a lot it no longer holds drops the lot."""
    return held >= quantity - lot_size / 2


# what lot_close decides for a lot's market close
CLOSE_SEND, CLOSE_WAIT, CLOSE_GONE = 0, 1, 2


@njit(cache=True, nogil=True)
def lot_close(direction, quantity, held, again, hedge, one_side, price, lot_size, min_notional):  # pragma: no cover - compiled
    """The market order that closes a lot of ``quantity`` of the grid of ``direction``: what both
    paths send (MakerVol through its broker calls, the compiled backtest through the venue core).
    ``held``: the grid's position on its side less the closes of its lots under way; ``again``: a
    retry of a close that ended without closing the lot (at the next wake-up).

    Returns ``(action, side, reduce_only, position_side, cancel_tp)``: ``CLOSE_SEND`` a market
    order of ``side`` (+1 buy, -1 sell: always against the grid), reduce-only or not, on
    ``position_side`` (the venue's ``PS_*``); ``CLOSE_WAIT`` nothing now, again at the next bar;
    ``CLOSE_GONE`` the position holds none of the lot any more (liquidated, or closed outside the
    strategy): the lot leaves the book. ``cancel_tp``: the lot's take-profit is canceled at once
    (the first time only), so it cannot close the lot a second time when the price reaches it
    before the next sync.

    Hedge mode: each grid closes its own position, SELL LONG / BUY SHORT, never reduce-only. One
    way, one grid: every close reduces, reduce-only. One way, both grids (``side=both`` on one net
    position): a close reduces only while ``held`` still holds the lot; otherwise it opens the
    other way and must meet the minimum notional, below which it waits. Binance exempts
    reduce-only orders from MIN_NOTIONAL (-4164 "Order's notional must be no smaller than 100
    (unless you choose reduce only)"), so a lot left small by partial fills can be closed."""
    side = -1.0 if direction > 0 else 1.0
    cancel_tp = not again
    if hedge:
        if again and not position_holds(held, lot_size, lot_size):
            return CLOSE_GONE, side, False, PS_BOTH, cancel_tp
        return CLOSE_SEND, side, False, PS_LONG if direction > 0 else PS_SHORT, cancel_tp
    if again and one_side and not position_holds(held, lot_size, lot_size):
        return CLOSE_GONE, side, False, PS_BOTH, cancel_tp
    reduce_only = one_side or position_holds(held, quantity, lot_size)
    if not reduce_only and quantity * price < min_notional:
        return CLOSE_WAIT, side, False, PS_BOTH, cancel_tp
    return CLOSE_SEND, side, reduce_only, PS_BOTH, cancel_tp


def entry_prices(ladder: Ladder, tick_size: float, price_decimals: int) -> np.ndarray:
    """The ladder's entry prices on the tick, rounded away from the market (long: down, short: up)."""
    return prices_on_tick(ladder.prices, ladder.direction, tick_size, price_decimals)


def prices_on_tick(prices: np.ndarray, direction, tick_size: float, price_decimals: int) -> np.ndarray:
    """``prices`` on the tick: down where ``direction`` (a number, or one per price) is > 0, else
    up -- an entry's price rounded away from the market, and OrderSync's rounding of a buy (down)
    and a sell (up)."""
    ticks = np.where(np.asarray(direction) > 0, np.floor(prices / tick_size + 1e-9), np.ceil(prices / tick_size - 1e-9))
    return np.round(ticks * tick_size, price_decimals)


def ladder_prices(top: float, bottom: float, step_pct: float, direction: int = 1) -> np.ndarray:
    """Geometric grid levels from ``top`` toward ``bottom`` with spacing ``step_pct`` (``direction``
    +1: falling from top, -1: rising), each strictly before bottom: an order at bottom would be
    liquidated at once. :class:`Ladder`'s prices; the compiled path's ladder tables call it for
    every ladder of a run."""
    if not (top > 0 and bottom > 0 and 0 < step_pct < 1):
        raise ValueError(f"bad ladder top={top} bottom={bottom} step_pct={step_pct}")
    if direction * (top - bottom) <= 0:
        raise ValueError(f"ladder top {top} must be on the far side of bottom {bottom} for direction {direction}")
    factor = 1.0 - step_pct if direction > 0 else 1.0 + step_pct
    count = max(int(math.floor(math.log(bottom / top) / math.log(factor) - 1e-9)) + 1, 0)
    prices = top * _powers(factor, count)
    return prices[direction * (prices - bottom) > 0]


_POWERS: dict[float, np.ndarray] = {}


def _powers(factor: float, count: int) -> np.ndarray:
    """``factor ** np.arange(count)``, from one table per factor kept for the process (a run
    builds a ladder at every new lookback high; a sweep, thousands). numpy's power is elementwise,
    so a prefix of the table holds the same floats as a shorter call (``tests/test_maker_vol_grid.py``)."""
    table = _POWERS.get(factor)
    if table is None or len(table) < count:
        if len(_POWERS) > 64:  # a sweep over step_pct: keep the table small
            _POWERS.clear()
        table = _POWERS[factor] = factor ** np.arange(max(count, 512), dtype=np.float64)
        table.flags.writeable = False
    return table[:count]


@dataclass(frozen=True)
class Ladder:
    """Geometric grid levels from ``top`` toward ``bottom`` with spacing ``step_pct`` (:func:`ladder_prices`)."""

    top: float
    bottom: float
    step_pct: float
    direction: int = 1  # +1 long (levels fall from top), -1 short (levels rise from top)
    prices: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prices", ladder_prices(self.top, self.bottom, self.step_pct, self.direction))

    def __len__(self) -> int:
        return len(self.prices)


def _lot_column(column: int, kind: type, doc: str) -> property:
    def get(self):
        return kind(self._book.L[self.lot_id, column])

    def set_(self, value):
        self._book.L[self.lot_id, column] = value

    return property(get, set_, doc=doc)


class Lot:
    """One filled entry: a view of its row in its book's ``L`` (the arrays the compiled rules change)."""

    __slots__ = ("_book", "lot_id")

    def __init__(self, book: GridBook, lot_id: int) -> None:
        self._book = book
        self.lot_id = lot_id

    entry_level = _lot_column(L_LEVEL, int, "the level of the entry order that opened it")
    entry = _lot_column(L_ENTRY, float, "its entry price")
    quantity = _lot_column(L_QTY, float, "its quantity")
    margin = _lot_column(L_MARGIN, float, "its margin")
    leverage = _lot_column(L_LEV, float, "its leverage")
    tp_level = _lot_column(L_TP, int, "the level of its take-profit (-1: none)")
    closing = _lot_column(L_CLOSING, bool, "a market close (saturation, restore, stop) was sent")
    freed_tp = _lot_column(L_FREED, float, "the take-profit price it gave up when chosen for a saturation close")

    def __repr__(self) -> str:
        return f"Lot({self.lot_id}, entry={self.entry}, quantity={self.quantity}, tp_level={self.tp_level})"


class GridBook:
    """Open lots of one ladder and the take-profit level of each (one take-profit per level).

    Its state is arrays -- ``L`` (a row per lot id), ``open_ids`` (the open lots), ``totals``
    (:data:`B_NLOTS` ...) and ``tp_lots`` (level -> lot id, 0 = free) -- changed only by the compiled
    rules above, which the compiled backtest runs on its own arrays of the same layout. ``lots``
    maps the open lots' ids to their :class:`Lot` views."""

    def __init__(self, ladder: Ladder, tp_pct: float) -> None:
        self.ladder = ladder
        self.tp_pct = tp_pct
        self.lots: dict[int, Lot] = {}
        self.tp_lots = np.zeros(len(ladder) + 1, dtype=np.int64)
        self.L = np.zeros((64, NL))
        self.open_ids = np.zeros(64, dtype=np.int64)
        self.totals = np.zeros(NB)

    @property
    def quantity(self) -> float:
        return float(self.totals[B_QTY])

    @property
    def margin(self) -> float:
        return float(self.totals[B_MARGIN])

    @property
    def tp_at(self) -> dict[int, int]:
        """Level -> lot id of every take-profit (a view for reading; ``tp_lots`` is the state)."""
        levels = np.flatnonzero(self.tp_lots)
        return dict(zip(levels.tolist(), self.tp_lots[levels].tolist()))

    @property
    def tp_levels(self) -> list[int]:
        """The levels holding a take-profit, nearest top first."""
        return np.flatnonzero(self.tp_lots).tolist()

    def open_lot(self, entry_level: int, entry: float, quantity: float, margin: float, leverage: float) -> Lot:
        """A lot of the given margin and leverage (:func:`book_open_lot`)."""
        args = (entry_level, entry, quantity, margin, leverage)
        return self._opened(lambda: book_open_lot(self.totals, self.L, self.open_ids, *args))

    def open_entry(self, level: int, price: float, quantity: float, bottom: float, BB: np.ndarray) -> Lot:
        """A filled entry: a lot with its own leverage (:func:`book_open_entry`)."""
        d = self.ladder.direction
        return self._opened(lambda: book_open_entry(self.totals, self.L, self.open_ids, level, price, quantity, bottom, d, BB))

    def _opened(self, open_) -> Lot:
        lot_id = open_()
        while lot_id < 0:  # no room: twice the arrays, and again
            self.L = np.concatenate([self.L, np.zeros_like(self.L)])
            self.open_ids = np.concatenate([self.open_ids, np.zeros_like(self.open_ids)])
            lot_id = open_()
        lot = self.lots[int(lot_id)] = Lot(self, int(lot_id))
        return lot

    def take_profit_fill(self, lot: Lot, quantity: float, price: float) -> tuple[float, bool]:
        """:func:`book_take_profit_fill`: (gross profit, closed)."""
        gross, closed = book_take_profit_fill(
            self.totals, self.L, self.open_ids, self.tp_lots, lot.lot_id, quantity, price, self.ladder.direction
        )
        if closed:
            del self.lots[lot.lot_id]
        return gross, closed

    def close_fill(self, lot: Lot, quantity: float, price: float, done: bool, min_qty: float) -> float:
        """:func:`book_close_fill`: the PnL of a market close's fill."""
        args = (self.totals, self.L, self.open_ids, self.tp_lots, lot.lot_id, quantity, price, self.ladder.direction, done, min_qty)
        pnl = book_close_fill(*args)
        if lot.lot_id in self.lots and not book_is_open(self.totals, self.open_ids, lot.lot_id):
            del self.lots[lot.lot_id]
        return float(pnl)

    def liquidate(self, price: float) -> float:
        """:func:`book_liquidate`: every lot leaves; their PnL at ``price``."""
        pnl = book_liquidate(self.totals, self.L, self.open_ids, self.tp_lots, price, self.ladder.direction)
        self.lots.clear()
        return float(pnl)

    def reduce_lot(self, lot: Lot, quantity: float) -> None:
        """Part of ``lot`` was closed (a partial take-profit): :func:`book_reduce_lot`."""
        book_reduce_lot(self.totals, self.L, lot.lot_id, quantity)

    def place_tp(self, lot: Lot) -> Lot | None:
        """Give ``lot`` its take-profit level (:func:`place_take_profit`); returns the lot to close
        at market on saturation (its take-profit, the one nearest top, was taken off its level)."""
        prices = self.ladder.prices
        victim = place_take_profit(
            self.totals, self.L, self.tp_lots, prices, 0, len(prices), self.tp_pct, self.ladder.direction, lot.lot_id
        )
        return self.lots[int(victim)] if victim else None

    def close_lot(self, lot_id: int) -> Lot:
        lot = self.lots.pop(lot_id)
        book_close_lot(self.totals, self.L, self.open_ids, self.tp_lots, lot_id)
        return lot

    def withdraw_tp(self, lot: Lot) -> None:
        """Take ``lot``'s take-profit off its level (the lot is being closed another way)."""
        book_withdraw_tp(self.totals, self.L, self.tp_lots, lot.lot_id)

    def relay(self, ladder: Ladder) -> list[Lot]:
        """Move to a new ladder (top/bottom recomputed): :func:`relay_take_profits`. Returns the
        lots left without a take-profit level, to close at market (saturation)."""
        old = self.ladder
        self.ladder = ladder
        size = max(len(old), len(ladder)) + 1
        if len(self.tp_lots) < size:
            self.tp_lots = np.concatenate([self.tp_lots, np.zeros(size - len(self.tp_lots), dtype=np.int64)])
        moved = np.empty(len(self.tp_lots), dtype=np.int64)
        tp_pct, d = self.tp_pct, ladder.direction
        count = relay_take_profits(
            self.totals, self.L, self.tp_lots, old.prices, 0, len(old), ladder.prices, 0, len(ladder), tp_pct, d, moved
        )
        return [self.lots[lot_id] for lot_id in moved[:count].tolist() if self.L[lot_id, L_TP] < 0]

    def restore_closes(self, quantity: float) -> list[Lot]:
        """The lots to close at market to restore the liquidation line (:func:`restore_closes`)."""
        out = np.empty(len(self.lots), dtype=np.int64)
        count = restore_closes(self.totals, self.L, self.open_ids, self.tp_lots, quantity, out)
        return [self.lots[lot_id] for lot_id in out[:count].tolist()]

    def max_leverage(self) -> float:
        return float(book_max_leverage(self.totals, self.L, self.open_ids))

    def tp_price(self, lot: Lot) -> float:
        return float(self.ladder.prices[lot.tp_level])

    def liquidation_price(self, BB: np.ndarray) -> float:
        """Liquidation price of all open lots as one isolated position holding their margins
        (``BB``: the bracket table, :func:`bracket_table`)."""
        t = self.totals
        return float(book_liquidation_price(t[B_QTY], t[B_COST], t[B_MARGIN], self.ladder.direction, BB))

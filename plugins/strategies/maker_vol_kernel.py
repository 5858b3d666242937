"""A compiled backtest of ``maker_vol`` on the ``sim`` broker: the event path's rules in one numba loop.

The event path (engine + :class:`~btc_quant.plugins.brokers.sim.SimBroker` + :class:`MakerVol` +
:class:`~btc_quant.sdk.ordersync.OrderSync`) stays the reference. This module runs the *same*
sequence of decisions over the bar arrays in compiled code and builds the same
:class:`~btc_quant.core.engine.RunResult` (fills, orders, equity curve, funding, liquidation marks,
the strategy's diagnostics) from what the kernel recorded:

* the sim's bar skipping (a bar is visited when a resting order, the liquidation price, the price
  alert, a wake bar, a pending market order or a funding time with a position can act on it), its
  five-point intrabar path (``nearest`` / ``direction``), the ``through`` / ``touch`` fill models,
  gap fills clipped into the new bar, isolated margin, Binance's liquidation price with the
  symbol's brackets, the liquidation clearance fee, funding at the bar's open, the margin check of
  new orders (Binance -2019) and reduce-only refusals (-2022);
* the strategy: hourly re-computation of the ladder and re-laying of take-profits, sizing by
  equity, the desired set (take-profits nearest the price, entries nearest the price that free
  margin funds), saturation closes at market, per-lot leverage and the position funding
  (``set_leverage`` / ``adjust_margin`` with the broker's refusals), the wake-ups (hourly, price
  alert on the next level up, the close of every bar with a fill);
* :class:`OrderSync`: per key, an open order whose side, price, quantity and flags match the
  target is kept, any other is canceled; new orders go nearest the price first, under client ids
  ``f"{strategy_id}:{key}.{base36(generation)}"`` with the generation counter seeded by the first
  sync's clock.

When the kernel meets a situation it does not implement (a reduce-only order cut to a position
smaller than the order by more than half a lot, i.e. a partial fill; more orders or lots than its
arrays hold even after growing them) it stops and reports it; :func:`compiled_backtest` then returns None and the caller runs the
event path. The conditions under which the fast path is tried at all are in :func:`why_not`.

Fill for fill equality with the event path is what ``tests/test_maker_vol_kernel.py`` checks.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
from numba import njit

from ..brokers.sim_path import fill_bar_path, liquidation_price, position_after_fill

# --- state vector S (float64) --------------------------------------------------------------------
WALLET, PQ, PE, ISO, LEV, PRICE, NOW, BAR = 0, 1, 2, 3, 4, 5, 6, 7
TRADE_SEQ, NORD, NFILL, NOPEN, BQ, BMARGIN, BCOST, NLOTS = 8, 9, 10, 11, 12, 13, 14, 15
NEXTLOT, GEN, ENGN, ALERT_ON, ALERT_LO, ALERT_HI, PFEES, PFUNDING = 16, 17, 18, 19, 20, 21, 22, 23
INSUR, FK, BAIL, LAD, NPEND = 24, 25, 26, 27, 28
GRID_PROFIT, FEES_MAKER, FEES_TAKER, SAT_LOSS, LIQ_LOSS = 30, 31, 32, 33, 34
SATS, LIQS, CASH_PAUSES, PAUSED, INV_VIOL, BRK_VIOL, RAISED, MREFUSED = 40, 41, 42, 43, 44, 45, 46, 47
MADDED, SUBMITTED, CANCELED, REJECTED, RECOMPUTES, BEYOND, NENTRY, NTP = 48, 49, 50, 51, 52, 53, 54, 55
NSAT, NRT, NSAMP, NFUND, BROKER_LIQS, ARMED, NEXT_RC, HAS_GRID = 56, 57, 58, 59, 60, 61, 62, 63
FIRST_SYNC, REARMED, SYNC_FILLS, INSIDE, LIQ_CACHE = 64, 65, 66, 67, 68
NSTATE = 80

# --- parameters P ---------------------------------------------------------------------------------
P_MAKER, P_TAKER, P_LIQFEE, P_LOT, P_TICK, P_MINNOT, P_QSCALE, P_PSCALE = 0, 1, 2, 3, 4, 5, 6, 7
P_TP, P_ORDER_PCT, P_NLIVE, P_STRICT, P_PATHDIR, P_CHECK, P_RECOMPUTE, P_CASH, P_LEV0 = 8, 9, 10, 11, 12, 13, 14, 15, 16
NPARAM = 20

# --- orders O (float64 rows) ------------------------------------------------------------------------
O_KIND, O_REF, O_GEN, O_SIDE, O_PRICE, O_QTY, O_FILLED, O_AVG = 0, 1, 2, 3, 4, 5, 6, 7
O_STATUS, O_REASON, O_NEED, O_FREE, O_CREATED, O_UPDATED, O_PENDING, O_RO, O_PO = 8, 9, 10, 11, 12, 13, 14, 15, 16
NO = 17
K_ENTRY, K_TP, K_CLOSE, K_LIQ = 0, 1, 2, 3
ST_PENDING, ST_NEW, ST_PARTIAL, ST_FILLED, ST_CANCELED, ST_REJECTED, ST_EXPIRED = 0, 1, 2, 3, 4, 5, 6
R_NONE, R_MARGIN, R_LIQ, R_REDUCE, R_CROSS, R_RO_GONE = 0, 1, 2, 3, 4, 5

# --- fills F ----------------------------------------------------------------------------------------
F_ORDER, F_PRICE, F_QTY, F_FEE, F_BAR, F_MAKER, F_LIQ, F_SEQ = 0, 1, 2, 3, 4, 5, 6, 7
NF = 8

# --- lots L (row = lot id) ------------------------------------------------------------------------
L_LEVEL, L_ENTRY, L_QTY, L_MARGIN, L_LEV, L_TP, L_CLOSING, L_FREED = 0, 1, 2, 3, 4, 5, 6, 7
NL = 8

# kernel exit codes
OK, BAIL_REDUCE_CUT, BAIL_CAPACITY, BAIL_NO_LADDER = 0, 1, 4, 5
BAIL_REASONS = {
    BAIL_REDUCE_CUT: "a reduce-only order was cut to a smaller position (a partial fill)",
    BAIL_CAPACITY: "more orders, fills or lots than the kernel's arrays hold",
    BAIL_NO_LADDER: "a re-computation outside a wake bar",
}
EPS = 1e-12


@njit(cache=True, nogil=True)
def _bracket(notional, caps):  # pragma: no cover - compiled
    for k in range(len(caps)):
        if notional < caps[k]:
            return k
    return len(caps) - 1


@njit(cache=True, nogil=True)
def _count_ge(prices, off, length, x):  # pragma: no cover - compiled
    """Number of ladder levels (descending prices) at or above ``x``: Ladder.first_adverse."""
    lo, hi = 0, length
    while lo < hi:
        mid = (lo + hi) // 2
        if prices[off + mid] >= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _tp_target(prices, off, length, entry, tp_pct):  # pragma: no cover - compiled
    k = _count_ge(prices, off, length, entry * (1.0 + tp_pct))
    return max(k - 1, 0)


@njit(cache=True, nogil=True)
def _round_qty(q, lot, qscale):  # pragma: no cover - compiled
    return np.rint(math.floor(q / lot + 1e-9) * lot * qscale) / qscale


@njit(cache=True, nogil=True)
def _equity(S):  # pragma: no cover - compiled
    if abs(S[PQ]) < 1e-12:
        return S[WALLET]
    return S[WALLET] + S[PQ] * (S[PRICE] - S[PE])


@njit(cache=True, nogil=True)
def _changed(S, BB, LIQM, HASM):  # pragma: no cover - compiled
    b = int(S[BAR])
    S[LIQ_CACHE] = LIQM[b] = liquidation_price(S[PQ], S[PE], S[ISO], BB)  # the sim's cached liquidation price
    HASM[b] = True


@njit(cache=True, nogil=True)
def _remove_open(S, OPEN, oi):  # pragma: no cover - compiled
    n = int(S[NOPEN])
    j = 0
    for k in range(n):
        if OPEN[k] != oi:
            OPEN[j] = OPEN[k]
            j += 1
    S[NOPEN] = j


@njit(cache=True, nogil=True)
def _orders_margin(S, O, OPEN):  # pragma: no cover - compiled
    buys = 0.0
    sells = 0.0
    for k in range(int(S[NOPEN])):
        oi = OPEN[k]
        if O[oi, O_RO] != 0:
            continue
        price = O[oi, O_PRICE]
        if np.isnan(price):
            price = S[PRICE]
        value = max(O[oi, O_QTY] - O[oi, O_FILLED], 0.0) * price
        if O[oi, O_SIDE] > 0:
            buys += value
        else:
            sells += value
    pos_value = abs(S[PQ]) * S[PRICE]
    if S[PQ] > 0:
        sells = max(0.0, sells - pos_value)
    elif S[PQ] < 0:
        buys = max(0.0, buys - pos_value)
    return max(buys, sells) / S[LEV]


@njit(cache=True, nogil=True)
def _available(S, O, OPEN):  # pragma: no cover - compiled
    return S[WALLET] - S[ISO] - _orders_margin(S, O, OPEN)


@njit(cache=True, nogil=True)
def _new_order(S, O, kind, ref, gen, side, price, qty, ro, po):  # pragma: no cover - compiled
    oi = int(S[NORD])
    if oi >= O.shape[0]:
        S[BAIL] = BAIL_CAPACITY
        return -1
    S[NORD] = oi + 1
    O[oi, O_KIND] = kind
    O[oi, O_REF] = ref
    O[oi, O_GEN] = gen
    O[oi, O_SIDE] = side
    O[oi, O_PRICE] = price
    O[oi, O_QTY] = qty
    O[oi, O_FILLED] = 0.0
    O[oi, O_AVG] = 0.0
    O[oi, O_STATUS] = ST_PENDING
    O[oi, O_REASON] = R_NONE
    O[oi, O_NEED] = 0.0
    O[oi, O_FREE] = 0.0
    O[oi, O_CREATED] = S[NOW]
    O[oi, O_UPDATED] = S[NOW]
    O[oi, O_PENDING] = 0
    O[oi, O_RO] = ro
    O[oi, O_PO] = po
    return oi


@njit(cache=True, nogil=True)
def _fill(S, P, BB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, oi, price, maker, liquidation):  # pragma: no cover - compiled
    """SimBroker._fill for a whole order (no volume cap). Returns the fill row, -2 when a
    reduce-only order expired instead, -1 on a bail."""
    bar = int(S[BAR])
    pq = S[PQ]
    side = O[oi, O_SIDE]
    qty = max(O[oi, O_QTY] - O[oi, O_FILLED], 0.0)
    if O[oi, O_RO] != 0:
        if abs(pq) < 1e-12 or (pq > 0) == (side > 0):  # nothing left to reduce: the order expires
            O[oi, O_STATUS] = ST_EXPIRED
            O[oi, O_REASON] = R_RO_GONE
            O[oi, O_UPDATED] = S[NOW]
            O[oi, O_PENDING] = 0
            _remove_open(S, OPEN, oi)
            if O[oi, O_KIND] == K_TP:  # OrderSync: a post-only order of ours expired, sent again later
                S[REARMED] += 1
            return -2
        qty = min(qty, abs(pq))  # cut to the position: may leave the order partly filled
    notional = qty * price
    before = pq
    closing = 0.0
    if abs(before) > EPS and (before > 0) != (side > 0):
        closing = min(qty, abs(before))
    if liquidation:
        realized = closing * (price - S[PE]) * (1.0 if before > 0 else -1.0)
        left = S[ISO] + realized
        fee = min(notional * P[P_LIQFEE], max(left, 0.0))
    else:
        fee = notional * (P[P_MAKER] if maker else P[P_TAKER])
        left = 0.0
    S[TRADE_SEQ] += 1
    fi = int(S[NFILL])
    if fi >= FL.shape[0]:
        S[BAIL] = BAIL_CAPACITY
        return -1
    S[NFILL] = fi + 1
    FL[fi, F_ORDER] = oi
    FL[fi, F_PRICE] = price
    FL[fi, F_QTY] = qty
    FL[fi, F_FEE] = fee
    FL[fi, F_BAR] = bar
    FL[fi, F_MAKER] = 1.0 if maker else 0.0
    FL[fi, F_LIQ] = 1.0 if liquidation else 0.0
    FL[fi, F_SEQ] = S[TRADE_SEQ]
    # isolated margin (the strategy always runs the sim in isolated mode)
    if closing > 0:
        S[ISO] -= S[ISO] * closing / abs(before)
    S[ISO] += (qty - closing) * price / S[LEV]
    # Position.apply + Account.apply
    sq = side * qty
    S[PQ], S[PE], realized2 = position_after_fill(pq, S[PE], sq, price)
    S[PFEES] += fee
    S[WALLET] += realized2 - fee
    cash = -sq * price - fee
    if liquidation:
        shortfall = max(-left, 0.0)
        if shortfall > 0:
            S[WALLET] += shortfall
            S[INSUR] += shortfall
            cash += shortfall
        S[ISO] = 0.0
    elif abs(S[PQ]) < 1e-12:
        S[ISO] = 0.0
    CASH[bar] += cash
    QTYD[bar] += sq
    filled = O[oi, O_FILLED] + qty
    O[oi, O_AVG] = (O[oi, O_AVG] * O[oi, O_FILLED] + price * qty) / filled
    O[oi, O_UPDATED] = ts[bar]
    O[oi, O_PENDING] = 0
    if O[oi, O_QTY] - filled <= P[P_LOT] / 2:
        O[oi, O_FILLED] = O[oi, O_QTY]
        O[oi, O_STATUS] = ST_FILLED
        _remove_open(S, OPEN, oi)
    else:  # stays open, in its place
        O[oi, O_FILLED] = filled
        O[oi, O_STATUS] = ST_PARTIAL
    _changed(S, BB, LIQM, HASM)
    return fi


@njit(cache=True, nogil=True)
def _book_add(S, q, cost, margin):  # pragma: no cover - compiled
    S[BQ] += q
    S[BCOST] += cost
    S[BMARGIN] += margin
    if S[NLOTS] == 0:
        S[BQ] = 0.0
        S[BCOST] = 0.0
        S[BMARGIN] = 0.0


@njit(cache=True, nogil=True)
def _close_lot_book(S, L, LOTS, TPAT, lot):  # pragma: no cover - compiled
    """GridBook.close_lot."""
    n = int(S[NLOTS])
    j = 0
    for k in range(n):
        if LOTS[k] != lot:
            LOTS[j] = LOTS[k]
            j += 1
    S[NLOTS] = j
    tp = int(L[lot, L_TP])
    if tp >= 0 and TPAT[tp] == lot:
        TPAT[tp] = 0
    q = L[lot, L_QTY]
    _book_add(S, -q, -q * L[lot, L_ENTRY], -L[lot, L_MARGIN])


@njit(cache=True, nogil=True)
def _reduce_lot(S, L, lot, quantity):  # pragma: no cover - compiled
    """GridBook.reduce_lot: part of the lot closed, its margin shrinks pro rata."""
    q = L[lot, L_QTY]
    share = min(quantity / q, 1.0)
    _book_add(S, -q * share, -q * share * L[lot, L_ENTRY], -L[lot, L_MARGIN] * share)
    L[lot, L_MARGIN] *= 1.0 - share
    L[lot, L_QTY] = np.rint(q * (1.0 - share) * 1e12) / 1e12


@njit(cache=True, nogil=True)
def _submit_close(S, P, BB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, L, lot):  # pragma: no cover - compiled
    """MakerVol._close_lot (saturation) through Context.sell and SimBroker.submit. Returns the fill
    row when it filled at once (during a bar), else -1."""
    L[lot, L_CLOSING] = 1.0
    qty = _round_qty(L[lot, L_QTY], P[P_LOT], P[P_QSCALE])
    S[ENGN] += 1
    oi = _new_order(S, O, K_CLOSE, lot, S[ENGN], -1.0, np.nan, qty, 1.0, 0.0)
    S[SATS] += 1
    if oi < 0:
        return -1
    if abs(S[PQ]) < EPS or S[PQ] < 0:  # reduce-only refusal (Binance -2022); the lot stays "closing"
        O[oi, O_STATUS] = ST_REJECTED
        O[oi, O_REASON] = R_REDUCE
        return -1
    O[oi, O_STATUS] = ST_NEW
    n = int(S[NOPEN])
    if n >= OPEN.shape[0]:
        S[BAIL] = BAIL_CAPACITY
        return -1
    OPEN[n] = oi
    S[NOPEN] = n + 1
    if S[INSIDE] != 0:
        return _fill(S, P, BB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, oi, S[PRICE], False, False)
    O[oi, O_PENDING] = 1
    S[NPEND] += 1
    return -1


@njit(cache=True, nogil=True)
def _closed_at_market(S, O, FL, L, LOTS, TPAT, SAT, ts, fi):  # pragma: no cover - compiled
    oi = int(FL[fi, F_ORDER])
    lot = int(O[oi, O_REF])
    price = FL[fi, F_PRICE]
    qty = FL[fi, F_QTY]
    S[FEES_TAKER] += FL[fi, F_FEE]
    pnl = (price - L[lot, L_ENTRY]) * qty
    open_ = False
    for k in range(int(S[NLOTS])):
        if LOTS[k] == lot:
            open_ = True
            break
    if open_:
        if O[oi, O_STATUS] == ST_PARTIAL:  # the close was cut to a smaller position
            _reduce_lot(S, L, lot, qty)
        else:
            _close_lot_book(S, L, LOTS, TPAT, lot)
    S[SAT_LOSS] += pnl
    k = int(S[NSAT])
    SAT[k, 0] = ts[int(FL[fi, F_BAR])]
    SAT[k, 1] = L[lot, L_ENTRY]
    SAT[k, 2] = L[lot, L_FREED]
    SAT[k, 3] = price
    SAT[k, 4] = qty
    SAT[k, 5] = pnl
    SAT[k, 6] = FL[fi, F_FEE]
    S[NSAT] = k + 1


@njit(cache=True, nogil=True)
def _free_from(TPAT, start):  # pragma: no cover - compiled
    for level in range(start, -1, -1):
        if TPAT[level] == 0:
            return level
    return -1


@njit(cache=True, nogil=True)
def _fund_position(S, BB, O, OPEN, L, LOTS, LIQM, HASM):  # pragma: no cover - compiled
    n = int(S[NLOTS])
    if n == 0:
        return
    top = -np.inf
    for k in range(n):
        top = max(top, L[LOTS[k], L_LEV])
    wanted = float(math.ceil(top))
    if S[LEV] != wanted:
        notional = abs(S[PQ]) * S[PRICE]
        cap = BB[_bracket(notional, BB[:, 1]), 4]
        if not (1 <= wanted <= cap):
            S[MREFUSED] += 1
            return
        S[LEV] = wanted
    want = 0 + S[BMARGIN]
    have = S[ISO]
    if want - have > 1e-6:
        amount = want - have
        if abs(S[PQ]) < 1e-12:
            S[MREFUSED] += 1
            return
        if amount > 0 and amount > _available(S, O, OPEN) + 1e-9:
            S[MREFUSED] += 1
            return
        S[ISO] += amount
        _changed(S, BB, LIQM, HASM)
        S[MADDED] += 1


@njit(cache=True, nogil=True)
def _on_maker_fill(S, P, BB, SB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, L, LOTS, TPAT, LADP, off, length, bottom, ENT, TPF, SAT, RT, fi):  # pragma: no cover - compiled
    """MakerVol.on_fill for an entry or a take-profit (and the saturation close it may cause)."""
    oi = int(FL[fi, F_ORDER])
    S[SYNC_FILLS] += 1
    S[FEES_MAKER] += FL[fi, F_FEE]
    price = FL[fi, F_PRICE]
    qty = FL[fi, F_QTY]
    bar = int(FL[fi, F_BAR])
    if O[oi, O_KIND] == K_ENTRY:
        # _open_lot
        k = _bracket(qty * price, SB[:, 0])
        mmr = SB[k, 1]
        denominator = 1.0 + mmr - bottom / price
        if denominator <= 0 or price - bottom <= 0:
            lev = 1.0
            S[BEYOND] += 1
        else:
            lev = 1.0 / denominator
        lot = int(S[NEXTLOT]) + 1
        if lot >= L.shape[0] or int(S[NLOTS]) >= LOTS.shape[0]:
            S[BAIL] = BAIL_CAPACITY
            return
        S[NEXTLOT] = lot
        L[lot, L_LEVEL] = O[oi, O_REF]
        L[lot, L_ENTRY] = price
        L[lot, L_QTY] = qty
        L[lot, L_MARGIN] = qty * price / lev
        L[lot, L_LEV] = lev
        L[lot, L_TP] = -1
        L[lot, L_CLOSING] = 0
        L[lot, L_FREED] = np.nan
        LOTS[int(S[NLOTS])] = lot
        S[NLOTS] += 1
        _book_add(S, qty, qty * price, L[lot, L_MARGIN])
        e = int(S[NENTRY])
        ENT[e, 0] = ts[bar]
        ENT[e, 1] = price
        S[NENTRY] = e + 1
        # GridBook.place_tp
        target = _tp_target(LADP, off, length, price, P[P_TP])
        level = _free_from(TPAT, target)
        victim = 0
        if level < 0:
            victim_level = -1
            for lv in range(length):
                if TPAT[lv] != 0:
                    victim_level = lv
                    break
            victim = TPAT[victim_level]
            TPAT[victim_level] = 0
            L[victim, L_FREED] = LADP[off + victim_level]
            L[victim, L_TP] = -1
            L[victim, L_CLOSING] = 1
            level = _free_from(TPAT, target)
        L[lot, L_TP] = level
        TPAT[level] = lot
        close_fill = -1
        if victim != 0:
            close_fill = _submit_close(S, P, BB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, L, victim)
            if S[BAIL] != 0:
                return
        _fund_position(S, BB, O, OPEN, L, LOTS, LIQM, HASM)
        if close_fill >= 0:  # the close's fill event is handled after this one
            _closed_at_market(S, O, FL, L, LOTS, TPAT, SAT, ts, close_fill)
    else:
        lot = int(O[oi, O_REF])
        open_ = False
        for k in range(int(S[NLOTS])):
            if LOTS[k] == lot:
                open_ = True
                break
        if open_:
            gross = (price - L[lot, L_ENTRY]) * qty
            S[GRID_PROFIT] += gross
            t = int(S[NTP])
            TPF[t] = price
            S[NTP] = t + 1
            if qty < L[lot, L_QTY] - 1e-12:  # a take-profit cut to a smaller position
                _reduce_lot(S, L, lot, qty)
            else:
                _close_lot_book(S, L, LOTS, TPAT, lot)
                r = int(S[NRT])
                RT[r, 0] = ts[bar]
                RT[r, 1] = L[lot, L_ENTRY]
                RT[r, 2] = price
                RT[r, 3] = qty
                RT[r, 4] = gross
                S[NRT] = r + 1
    # wake at this bar's close
    S[ALERT_ON] = 1
    S[ALERT_LO] = np.inf
    S[ALERT_HI] = np.inf


@njit(cache=True, nogil=True)
def _liquidate(S, P, BB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, L, LOTS, TPAT, price):  # pragma: no cover - compiled
    """SimBroker._liquidate and MakerVol._liquidated."""
    for k in range(int(S[NOPEN])):
        oi = OPEN[k]
        O[oi, O_STATUS] = ST_CANCELED
        O[oi, O_REASON] = R_LIQ
        O[oi, O_UPDATED] = S[NOW]
        O[oi, O_PENDING] = 0
    S[NOPEN] = 0
    S[NPEND] = 0
    S[TRADE_SEQ] += 1
    side = -1.0 if S[PQ] > 0 else 1.0
    oi = _new_order(S, O, K_LIQ, S[TRADE_SEQ], 0.0, side, np.nan, abs(S[PQ]), 0.0, 0.0)
    if oi < 0:
        return
    O[oi, O_STATUS] = ST_NEW
    OPEN[0] = oi
    S[NOPEN] = 1
    S[BROKER_LIQS] += 1
    fi = _fill(S, P, BB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, oi, price, False, True)
    if fi < 0:
        return
    S[FEES_TAKER] += FL[fi, F_FEE]
    S[LIQS] += 1
    while S[NLOTS] > 0:
        lot = LOTS[0]
        S[LIQ_LOSS] += (FL[fi, F_PRICE] - L[lot, L_ENTRY]) * L[lot, L_QTY]
        _close_lot_book(S, L, LOTS, TPAT, lot)


@njit(cache=True, nogil=True)
def _sample(S, SB, BB, O, OPEN, TPAT, SAMP, length, bottom, live):  # pragma: no cover - compiled
    price = S[PRICE]
    liq = np.nan
    dist = np.nan
    broker_liq = np.nan
    if S[NLOTS] > 0:
        q = S[BQ]
        k = _bracket(q * price, SB[:, 0])
        mmr, cum = SB[k, 1], SB[k, 2]
        if q > 0:
            entry = S[BCOST] / q
            liq = (S[BMARGIN] + cum - q * entry) / (q * mmr - q)
        dist = (price - liq) / price
        if not (price - bottom <= 0) and liq - bottom > 1e-6 * bottom:
            S[INV_VIOL] += 1
        broker_liq = S[LIQ_CACHE]
        if price - bottom > 0 and broker_liq - bottom > 1e-6 * bottom:
            S[BRK_VIOL] += 1
    occupied = 0
    for lv in range(length):
        if TPAT[lv] != 0:
            occupied += 1
    r = int(S[NSAMP])
    if r >= SAMP.shape[0]:
        S[BAIL] = BAIL_CAPACITY
        return
    SAMP[r, 0] = S[NOW]
    SAMP[r, 1] = price
    SAMP[r, 2] = liq
    SAMP[r, 3] = broker_liq
    SAMP[r, 4] = dist
    SAMP[r, 5] = occupied
    SAMP[r, 6] = length
    SAMP[r, 7] = live
    SAMP[r, 8] = S[ARMED]
    SAMP[r, 9] = _equity(S)
    S[NSAMP] = r + 1


@njit(cache=True, nogil=True)
def _size(S, P, SB, LAD_E, off, length, first, bottom, equity, SQ, SM):  # pragma: no cover - compiled
    """MakerVol._size: quantity and margin of an entry at each level (same float operations)."""
    margin = P[P_ORDER_PCT] * equity
    k = _bracket(margin * 2, SB[:, 0])
    mmr = SB[k, 1]
    lot, qscale, minnot = P[P_LOT], P[P_QSCALE], P[P_MINNOT]
    raised = 0
    for lv in range(first, length):
        p = LAD_E[off + lv]
        lev = 1.0 / (1.0 + mmr - bottom / p)
        qty = math.floor(margin * lev / p / lot + 1e-9) * lot
        min_qty = math.ceil(minnot / p / lot - 1e-9) * lot
        if qty * p < minnot or qty <= 0:
            raised += 1
            qty = max(min_qty, lot)
        qty = np.rint(qty * qscale) / qscale
        SQ[lv] = qty
        SM[lv] = qty * p / lev
    S[RAISED] = raised


@njit(cache=True, nogil=True)
def kernel(ts, op, hi, lo, cl, wake, next_wake, lad_at, lad_off, lad_len, lad_first, lad_bottom,
           LADP, LAD_E, LAD_ET, LAD_TP, fund_bar, fund_rate, P, BB, SB,
           S, O, OPEN, FL, L, LOTS, TPAT, SQ, SM, CASH, QTYD, LIQM, HASM, ENT, TPF, SAT, RT, SAMP, FUNDR):  # pragma: no cover - compiled
    """The run (see the module docstring). Returns an exit code (0 = done)."""
    n = len(ts)
    strict = P[P_STRICT] != 0
    nlive = int(P[P_NLIVE])
    nf = len(fund_bar)
    path = np.empty(5)
    # targets of one sync: kind, ref, side, price, qty, ro
    TK = np.empty(2 * nlive + 4, dtype=np.int64)
    TR = np.empty(2 * nlive + 4, dtype=np.int64)
    TS = np.empty(2 * nlive + 4)
    TP_ = np.empty(2 * nlive + 4)
    TQ = np.empty(2 * nlive + 4)
    TKEEP = np.zeros(2 * nlive + 4, dtype=np.bool_)
    ORDER = np.empty(2 * nlive + 4, dtype=np.int64)
    KEEPL = np.empty(OPEN.shape[0], dtype=np.int64)
    T_BY_LEVEL = np.full(TPAT.shape[0], -1, dtype=np.int64)  # entry level -> its target this sync
    T_BY_LOT = np.full(L.shape[0], -1, dtype=np.int64)  # lot -> its take-profit target this sync
    i = 0
    seg = 0
    off = 0
    length = 0
    first = 0
    bottom = 0.0
    while True:
        if S[BAIL] != 0:
            return int(S[BAIL])
        # ---- SimBroker._skip: the first bar on which something can happen
        j = i
        if S[NPEND] == 0:
            stop = next_wake[i]
            if abs(S[PQ]) >= 1e-12 and int(S[FK]) < nf:
                stop = min(stop, fund_bar[int(S[FK])])
            if stop > i:
                buy_max = -np.inf
                sell_min = np.inf
                market = False
                for k in range(int(S[NOPEN])):
                    oi = OPEN[k]
                    p = O[oi, O_PRICE]
                    if np.isnan(p):
                        market = True
                        break
                    if O[oi, O_SIDE] > 0:
                        buy_max = max(buy_max, p)
                    else:
                        sell_min = min(sell_min, p)
                if not market:
                    liq = S[LIQ_CACHE]
                    liq_long = liq if (not np.isnan(liq)) and S[PQ] > 0 else -np.inf
                    liq_short = liq if (not np.isnan(liq)) and S[PQ] < 0 else np.inf
                    alo = S[ALERT_LO] if S[ALERT_ON] != 0 else -np.inf
                    ahi = S[ALERT_HI] if S[ALERT_ON] != 0 else np.inf
                    j = stop
                    for b in range(i, stop):
                        lb = lo[b]
                        hb = hi[b]
                        if strict:
                            if lb < buy_max or hb > sell_min:
                                j = b
                                break
                        elif lb <= buy_max or hb >= sell_min:
                            j = b
                            break
                        if lb <= liq_long or hb >= liq_short or lb <= alo or hb >= ahi:
                            j = b
                            break
        if j >= n:
            break
        i = j
        prev = cl[i - 1] if i > 0 else op[i]
        o_, h_, l_, c_ = op[i], hi[i], lo[i], cl[i]
        fill_bar_path(path, prev, o_, h_, l_, c_, P[P_PATHDIR] == 0)
        S[NOW] = ts[i]
        S[BAR] = i
        S[PRICE] = prev
        S[INSIDE] = 1
        seg = 0
        # ---- SimBroker._walk, with each event handed to the strategy at once (the engine's pump)
        while seg < 4:
            a = S[PRICE]
            bpt = path[seg + 1]
            best_at = np.nan
            best_oi = -1
            for k in range(int(S[NOPEN])):
                oi = OPEN[k]
                p = O[oi, O_PRICE]
                if np.isnan(p) or O[oi, O_PENDING] != 0:
                    continue
                if O[oi, O_SIDE] > 0:
                    if p > a + EPS:
                        at = a
                    elif bpt < a and ((bpt < p) if strict else (bpt <= p)):
                        at = p
                    else:
                        continue
                else:
                    if p < a - EPS:
                        at = a
                    elif bpt > a and ((bpt > p) if strict else (bpt >= p)):
                        at = p
                    else:
                        continue
                if best_oi < 0 or abs(at - a) < abs(best_at - a):
                    best_at = at
                    best_oi = oi
            is_liq = False
            if abs(S[PQ]) >= 1e-12:
                liq = S[LIQ_CACHE]
                if not np.isnan(liq):
                    if S[PQ] > 0:
                        if bpt < a and bpt <= liq and liq <= a + EPS and (best_oi < 0 or abs(liq - a) < abs(best_at - a)):
                            is_liq = True
                            best_at = liq
                    else:
                        if bpt > a and a - EPS <= liq and liq <= bpt and (best_oi < 0 or abs(liq - a) < abs(best_at - a)):
                            is_liq = True
                            best_at = liq
            if is_liq or best_oi >= 0:
                at = best_at
                if seg == 0:
                    at = min(max(at, l_), h_)
                S[PRICE] = at
                if is_liq:
                    _liquidate(S, P, BB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, L, LOTS, TPAT, at)
                else:
                    fi = _fill(S, P, BB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, best_oi, at, True, False)
                    if fi >= 0:
                        _on_maker_fill(S, P, BB, SB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, L, LOTS, TPAT, LADP, off, length, bottom, ENT, TPF, SAT, RT, fi)
                if S[BAIL] != 0:
                    return int(S[BAIL])
                continue
            seg += 1
            if seg < 4:
                S[PRICE] = path[seg]
            if seg == 1:
                # _at_open: funding, then the market orders that waited for the open
                while int(S[FK]) < nf and fund_bar[int(S[FK])] <= i:
                    fk = int(S[FK])
                    S[FK] = fk + 1
                    qty = S[PQ]
                    if abs(qty) < EPS:
                        continue
                    mark = op[i]
                    amount = qty * mark * fund_rate[fk]
                    S[PFUNDING] += amount
                    S[WALLET] -= amount
                    S[ISO] -= amount
                    CASH[i] += -amount
                    r = int(S[NFUND])
                    FUNDR[r, 0] = fk
                    FUNDR[r, 1] = i
                    FUNDR[r, 2] = mark
                    FUNDR[r, 3] = qty
                    FUNDR[r, 4] = amount
                    S[NFUND] = r + 1
                    _changed(S, BB, LIQM, HASM)
                if S[NPEND] > 0:
                    pend = 0
                    for k in range(int(S[NOPEN])):
                        if O[OPEN[k], O_PENDING] != 0:
                            KEEPL[pend] = OPEN[k]
                            pend += 1
                    S[NPEND] = 0
                    for k in range(pend):
                        oi = KEEPL[k]
                        O[oi, O_PENDING] = 0
                        if O[oi, O_STATUS] != ST_NEW:
                            continue
                        fi = _fill(S, P, BB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, oi, S[PRICE], False, False)
                        if fi == -1:
                            return int(S[BAIL])
                        if fi >= 0:
                            _closed_at_market(S, O, FL, L, LOTS, TPAT, SAT, ts, fi)
        # ---- the bar closed
        S[INSIDE] = 0
        S[PRICE] = c_
        i += 1
        alert = S[ALERT_ON] != 0 and (l_ <= S[ALERT_LO] or h_ >= S[ALERT_HI])
        if alert:
            S[ALERT_ON] = 0
        if not (wake[i - 1] or alert):
            continue
        # ---- MakerVol.on_bar
        bar = i - 1
        equity = _equity(S)
        if S[HAS_GRID] == 0 or S[NOW] >= S[NEXT_RC]:
            lad = lad_at[bar]
            if lad < 0:
                return BAIL_NO_LADDER
            noff, nlen = lad_off[lad], lad_len[lad]
            nbottom = lad_bottom[lad]
            if S[HAS_GRID] != 0:
                # GridBook.relay: nearest-top take-profits first keep the top-most levels
                nrel = 0
                for lv in range(length):
                    if TPAT[lv] != 0:
                        KEEPL[nrel] = TPAT[lv]
                        nrel += 1
                        TPAT[lv] = 0
                for k in range(nrel):
                    lot = KEEPL[k]
                    old_price = LADP[off + int(L[lot, L_TP])]
                    L[lot, L_TP] = -1
                    target = _tp_target(LADP, noff, nlen, L[lot, L_ENTRY], P[P_TP])
                    at_or_beyond = max(_count_ge(LADP, noff, nlen, old_price * 1.0) - 1, 0)
                    start = min(at_or_beyond, target)
                    level = _free_from(TPAT, start)
                    if level < 0:
                        for lv in range(0, target + 1):
                            if TPAT[lv] == 0:
                                level = lv
                                break
                    if level < 0:
                        L[lot, L_CLOSING] = 1
                        KEEPL[k] = -lot  # a victim, closed below in this order
                    else:
                        L[lot, L_TP] = level
                        TPAT[level] = lot
                for k in range(nrel):
                    if KEEPL[k] < 0:
                        _submit_close(S, P, BB, O, OPEN, FL, CASH, QTYD, LIQM, HASM, ts, L, -KEEPL[k])
                        if S[BAIL] != 0:
                            return int(S[BAIL])
                S[RECOMPUTES] += 1
            off, length, first, bottom = noff, nlen, lad_first[lad], nbottom
            S[LAD] = lad
            S[HAS_GRID] = 1
            _size(S, P, SB, LAD_E, off, length, first, bottom, equity, SQ, SM)
            S[NEXT_RC] = (S[NOW] // P[P_RECOMPUTE] + 1) * P[P_RECOMPUTE]
        price = S[PRICE]
        equity = _equity(S)
        # -- desired(): take-profits nearest the price, then entries free margin can fund
        free = equity - (0 + S[BMARGIN])
        kk = _count_ge(LADP, off, length, price)
        nt = 0
        got = 0
        lv = min(kk, length) - 1
        stack = 0
        while lv >= 0 and got < nlive:  # the nearest nlive take-profit levels below kk
            if TPAT[lv] != 0:
                got += 1
                stack = lv
            lv -= 1
        if got > 0:
            for lv2 in range(stack, min(kk, length)):
                lot = TPAT[lv2]
                if lot == 0:
                    continue
                if L[lot, L_CLOSING] != 0:
                    continue
                tprice = LAD_TP[off + lv2]
                if tprice <= price:  # post-only sell that would cross: held back
                    continue
                TK[nt] = K_TP
                TR[nt] = lot
                TS[nt] = -1.0
                TP_[nt] = tprice
                TQ[nt] = _round_qty(L[lot, L_QTY], P[P_LOT], P[P_QSCALE])
                nt += 1
        start = max(kk, first)
        tp_from = 0
        for lv2 in range(start, length):
            if TPAT[lv2] != 0:
                tp_from += 1
        S[ARMED] = length - start - tp_from + S[NLOTS]
        placed = 0
        paused = False
        for lv2 in range(start, length):
            if placed >= nlive:
                break
            if TPAT[lv2] != 0:
                continue
            margin = SM[lv2]
            if margin > free:
                paused = True
                break
            free -= margin
            eprice = LAD_ET[off + lv2]
            placed += 1
            if eprice >= price:
                continue
            TK[nt] = K_ENTRY
            TR[nt] = lv2
            TS[nt] = 1.0
            TP_[nt] = eprice
            TQ[nt] = _round_qty(SQ[lv2], P[P_LOT], P[P_QSCALE])
            nt += 1
        if paused and S[PAUSED] == 0:
            S[CASH_PAUSES] += 1
        S[PAUSED] = 1 if paused else 0
        # -- OrderSync.sync: keep matching live orders, cancel the rest, submit nearest first
        if S[FIRST_SYNC] == 0:
            S[FIRST_SYNC] = 1
            S[GEN] = S[NOW]
        for t in range(nt):
            TKEEP[t] = False
            if TK[t] == K_ENTRY:
                T_BY_LEVEL[TR[t]] = t
            else:
                T_BY_LOT[TR[t]] = t
        nkeep = 0
        ncancel = 0
        nopen = int(S[NOPEN])
        for k in range(nopen):
            oi = OPEN[k]
            kind = O[oi, O_KIND]
            if kind != K_ENTRY and kind != K_TP:
                KEEPL[k] = 1
                continue
            ref = int(O[oi, O_REF])
            if kind == K_ENTRY:
                match = T_BY_LEVEL[ref] if ref < T_BY_LEVEL.shape[0] else -1
            else:
                match = T_BY_LOT[ref]
            keep = False
            if match >= 0 and not TKEEP[match]:
                t = match
                rem = max(O[oi, O_QTY] - O[oi, O_FILLED], 0.0)
                if (O[oi, O_SIDE] == TS[t] and O[oi, O_PRICE] == TP_[t]
                        and (O[oi, O_QTY] == TQ[t] or abs(rem - TQ[t]) < 1e-12)):
                    keep = True
                    TKEEP[t] = True
            KEEPL[k] = 1 if keep else 0
            if keep:
                nkeep += 1
        # cancels (their order does not matter: nothing in the sim depends on it)
        j2 = 0
        for k in range(nopen):
            oi = OPEN[k]
            if KEEPL[k] != 0:
                OPEN[j2] = oi
                j2 += 1
            else:
                O[oi, O_STATUS] = ST_CANCELED
                O[oi, O_UPDATED] = S[NOW]
                ncancel += 1
        S[NOPEN] = j2
        # submits sorted by (distance, key): on equal distance a buy ("b...") before a sell ("t...")
        ns = 0
        for t in range(nt):
            if not TKEEP[t]:
                ORDER[ns] = t
                ns += 1
        for x in range(1, ns):
            y = ORDER[x]
            dy = abs(TP_[y] - price)
            z = x - 1
            while z >= 0:
                w = ORDER[z]
                dw = abs(TP_[w] - price)
                if dw > dy or (dw == dy and TS[w] < TS[y]):
                    ORDER[z + 1] = w
                    z -= 1
                else:
                    break
            ORDER[z + 1] = y
        for x in range(ns):
            t = ORDER[x]
            S[GEN] += 1
            ro = 1.0 if TK[t] == K_TP else 0.0
            oi = _new_order(S, O, TK[t], TR[t], S[GEN], TS[t], TP_[t], TQ[t], ro, 1.0)
            if oi < 0:
                return int(S[BAIL])
            status = ST_NEW
            if ro != 0:
                if abs(S[PQ]) < EPS or (S[PQ] > 0) == (TS[t] > 0):
                    status = ST_REJECTED
                    O[oi, O_REASON] = R_REDUCE
            elif P[P_CHECK] != 0:
                against = 0.0
                if (S[PQ] > 0) != (TS[t] > 0) and abs(S[PQ]) > EPS:
                    against = abs(S[PQ])
                opening = max(TQ[t] - against, 0.0)
                if opening > EPS:
                    need = opening * TP_[t] / S[LEV]
                    avail = _available(S, O, OPEN)
                    if need > avail + 1e-9:
                        status = ST_REJECTED
                        O[oi, O_REASON] = R_MARGIN
                        O[oi, O_NEED] = need
                        O[oi, O_FREE] = avail
            if status == ST_NEW and ((TP_[t] >= S[PRICE]) if TS[t] > 0 else (TP_[t] <= S[PRICE])):
                status = ST_EXPIRED
                O[oi, O_REASON] = R_CROSS
                O[oi, O_NEED] = S[PRICE]
            O[oi, O_STATUS] = status
            if status == ST_NEW:
                nopen = int(S[NOPEN])
                if nopen >= OPEN.shape[0]:
                    return BAIL_CAPACITY
                OPEN[nopen] = oi
                S[NOPEN] = nopen + 1
            elif status == ST_REJECTED:
                S[REJECTED] += 1
            else:
                S[REARMED] += 1
        S[SUBMITTED] += ns
        S[CANCELED] += ncancel
        for t in range(nt):
            if TK[t] == K_ENTRY:
                T_BY_LEVEL[TR[t]] = -1
            else:
                T_BY_LOT[TR[t]] = -1
        _sample(S, SB, BB, O, OPEN, TPAT, SAMP, length, bottom, nkeep + ns)
        # -- _set_alert: wake when the price passes the next level up
        if kk == 0:
            S[ALERT_ON] = 0
        else:
            S[ALERT_ON] = 1
            S[ALERT_LO] = -np.inf
            S[ALERT_HI] = LADP[off + kk - 1]
    # ---- on_stop
    live = 0
    for k in range(int(S[NOPEN])):
        kind = O[OPEN[k], O_KIND]
        if kind == K_ENTRY or kind == K_TP:
            live += 1
    _sample(S, SB, BB, O, OPEN, TPAT, SAMP, length, bottom, live)
    return OK


@njit(cache=True, nogil=True)
def lookback_highs(ts, high, at, n_bars, lookback_ms):  # pragma: no cover - compiled
    """For each bar in ``at`` (ascending): the highest high of the last ``n_bars`` bars up to it
    whose ``ts`` lies within ``lookback_ms`` of its own (MakerVol._recompute's window)."""
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
def flat_to_flat(signs, price, qty, fee):  # pragma: no cover - compiled
    """``core.metrics.trades_frame``'s walk over the fills, compiled, with its float operations in
    the same order: one row per flat-to-flat round trip (start fill, end fill, long, max quantity,
    buy value, bought, sell value, sold, fees). The frame is built by :func:`_trades_frame`."""
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


def _trades_frame(fills: pd.DataFrame, buy: np.ndarray | None = None) -> pd.DataFrame:
    """What ``core.metrics.trades_frame(fills)`` returns, from :func:`flat_to_flat`. ``buy``: whether
    each fill is a buy, when the caller has it (else read from ``fills.side``)."""
    from btc_quant.core.metrics import trades_frame

    if fills.empty:
        return trades_frame(fills)
    signs = np.where((fills["side"] == "buy").to_numpy() if buy is None else buy, 1.0, -1.0)
    rows = flat_to_flat(signs, np.array(fills["price"].to_numpy(), dtype=np.float64), np.array(fills["quantity"].to_numpy(), dtype=np.float64),
                        np.array(fills["fee"].to_numpy(), dtype=np.float64))
    if len(rows) == 0:  # never flat again after the first fill: trades_frame's frame of no rows
        return pd.DataFrame([], columns=["entry_time", "exit_time", "side", "max_quantity", "entry_price", "exit_price", "pnl", "fees"])
    start, end, long_ = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), rows[:, 2] != 0
    max_qty, entry_cost, bought, exit_value, sold, fees = rows[:, 3:].T
    with np.errstate(divide="ignore", invalid="ignore"):  # no buy (sell) in the trade: NaN, as trades_frame
        buy_px = np.where(bought != 0, entry_cost / bought, np.nan)
        sell_px = np.where(sold != 0, exit_value / sold, np.nan)
    times = fills["ts"].array
    return pd.DataFrame({
        "entry_time": times.take(start),
        "exit_time": times.take(end),
        "side": _text(_labels(["short", "long"], long_)),
        "max_quantity": max_qty,
        "entry_price": np.where(long_, buy_px, sell_px),
        "exit_price": np.where(long_, sell_px, buy_px),
        "pnl": (exit_value - entry_cost) - fees,
        "fees": fees,
    })


# --- the Python side: conditions, inputs, and the RunResult -----------------------------------------


def why_not(strategy, engine) -> str | None:
    """Why the compiled path does not apply to this run (None: it applies).

    It applies when all of these hold: ``strategy.fast`` is true; the broker is ``sim`` with the
    ``through`` or ``touch`` fill model and no ``max_volume_share`` (no partial fills); the
    instrument is a perpetual; ``side=long``; no ``global_stop``; no request budget
    (``max_requests``); no risk checks; no plugin implements the per-event observer hooks
    ``quant_on_order`` / ``quant_on_fill`` (run start/end hooks are called as usual).
    """
    from btc_quant.plugins.brokers.sim import SimBroker

    c = strategy.config
    if not c.fast:
        return "strategy.fast=false"
    broker = engine.broker
    if type(broker) is not SimBroker:
        return f"broker {type(broker).__name__} is not the sim broker"
    if broker.config.fill_model not in ("through", "touch"):
        return f"fill model {broker.config.fill_model!r} is not through or touch"
    if broker.config.max_volume_share is not None:
        return "broker.max_volume_share (partial fills) is set"
    if not engine.instrument.is_perpetual:
        return "the instrument is not a perpetual"
    if c.side != "long":
        return f"side={c.side} (only long is compiled)"
    if c.global_stop is not None:
        return "global_stop is set"
    if c.max_requests is not None:
        return "max_requests is set"
    return engine.why_not_compiled()


# The RunResult's text and time columns are built as whole arrays (arrow strings, datetime64), not
# one Python object per row: a run has up to about one order per bar. They must come out with the
# dtypes the event path's frames get from Python strings and pd.to_datetime.
_TEXT = pd.Series(["text"]).dtype  # "str" (arrow-backed) in pandas 3, object before
_TIME = pd.to_datetime(np.zeros(1, dtype=np.int64), unit="ms", utc=True).dtype


def _text(values: pa.Array):
    """A column of the strings in ``values`` (nulls are missing), with the dtype pandas gives a
    column of Python strings."""
    if _TEXT == object:
        return values.to_numpy(zero_copy_only=False)
    return pd.array(values, dtype=_TEXT)


def _times(ms: np.ndarray):
    """``pd.to_datetime(ms, unit="ms", utc=True)`` as an array: the same values and dtype."""
    return pd.array(np.asarray(ms, dtype=np.int64).astype("M8[ms]").astype(f"M8[{_TIME.unit}]"), dtype=_TIME)


def _labels(names: list, codes: np.ndarray) -> pa.Array:
    """``names[code]`` for every code."""
    return pa.array(names, type=pa.large_string()).take(np.asarray(codes, dtype=np.int64))


_DIGITS = np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", dtype=np.uint8).copy()
_U10, _U36 = np.uint64(10), np.uint64(36)  # uint64 with a plain int would be float64 in numba


@njit(cache=True, nogil=True, inline="always")
def _digit_split(rest, base):  # pragma: no cover - compiled
    """``divmod(rest, base)`` for base 10 or 36 (uint64): constant divisors, which compile to multiplications."""
    if base == 10:
        return rest // _U10, rest % _U10
    return rest // _U36, rest % _U36


@njit(cache=True, nogil=True, inline="always")
def _digit_count(number, base):  # pragma: no cover - compiled
    """How many digits ``number`` has in ``base`` (none when the base is 0)."""
    if base == 0:
        return 0
    count = 1
    rest, _ = _digit_split(number, base)
    while rest:
        count += 1
        rest, _ = _digit_split(rest, base)
    return count


@njit(cache=True, nogil=True, inline="always")
def _put(data, at, number, base, count, digits):  # pragma: no cover - compiled
    """Write the ``count`` digits of ``number`` in ``base`` at ``data[at:]``; returns the position after them."""
    end = at + count
    rest = number
    for k in range(count):  # the digits from the last one back
        rest, digit = _digit_split(rest, base)
        data[end - 1 - k] = digits[digit]
    return end


@njit(cache=True, nogil=True, inline="always")
def _copy(data, at, text, start, stop):  # pragma: no cover - compiled
    """Copy ``text[start:stop]`` to ``data[at:]``; returns the position after it."""
    for j in range(start, stop):
        data[at] = text[j]
        at += 1
    return at


@njit(cache=True, nogil=True)
def numbered_utf8(text, bounds, bases, form_of_row, first, second, digits):  # pragma: no cover - compiled
    """Offsets and UTF-8 bytes of one string per row ``i`` in its form ``f = form_of_row[i]``: the
    head ``text[bounds[2f]:bounds[2f + 1]]``, ``first[i]`` in base ``bases[f, 0]``, the middle
    ``text[bounds[2f + 1]:bounds[2f + 2]]``, ``second[i]`` in base ``bases[f, 1]`` (uint64 numbers;
    base 10 or 36 written with ``digits``, or 0: no number)."""
    n = len(form_of_row)
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[0] = 0
    for i in range(n):
        f = form_of_row[i]
        size = bounds[2 * f + 2] - bounds[2 * f]
        offsets[i + 1] = offsets[i] + size + _digit_count(first[i], bases[f, 0]) + _digit_count(second[i], bases[f, 1])
    data = np.empty(offsets[n], dtype=np.uint8)
    for i in range(n):
        f = form_of_row[i]
        at = _copy(data, offsets[i], text, bounds[2 * f], bounds[2 * f + 1])
        at = _put(data, at, first[i], bases[f, 0], _digit_count(first[i], bases[f, 0]), digits)
        at = _copy(data, at, text, bounds[2 * f + 1], bounds[2 * f + 2])
        _put(data, at, second[i], bases[f, 1], offsets[i + 1] - at, digits)
    return offsets, data


def numbered_text(forms: list[tuple], form_of_row: np.ndarray, first: np.ndarray, second: np.ndarray | None = None) -> pa.Array:
    """One string per row, an f-string over arrays: ``(head, base1, middle, base2) = forms[form_of_row[i]]``
    gives ``f"{head}{first[i]}{middle}{second[i]}"`` with the numbers (>= 0) in base 10, or 36 in
    lower-case digits as :func:`~btc_quant.sdk.ordersync.base36` writes them; base 0 leaves that
    number out. Forms may stop early: ``(head, base1)`` is ``(head, base1, "", 0)``."""
    forms = [(*form, "", 0)[:4] for form in forms]
    form_of_row = np.asarray(form_of_row, dtype=np.int64)
    first = np.asarray(first, dtype=np.int64)
    second = np.zeros(len(first), dtype=np.int64) if second is None else np.asarray(second, dtype=np.int64)
    if len(first) and (min(first.min(), second.min()) < 0 or form_of_row.min() < 0 or form_of_row.max() >= len(forms)):
        raise ValueError("numbered_text: numbers must be >= 0 and every row's form one of the forms")
    bases = np.array([(b1, b2) for _, b1, _, b2 in forms], dtype=np.uint64).reshape(len(forms), 2)
    if not np.isin(bases, (0, 10, 36)).all():
        raise ValueError("numbered_text: a base must be 10, 36 or 0 (no number)")
    parts = [part.encode() for head, _, middle, _ in forms for part in (head, middle)]
    bounds = np.zeros(len(parts) + 1, dtype=np.int64)
    bounds[1:] = np.cumsum([len(p) for p in parts])
    text = np.array(bytearray(b"".join(parts)), dtype=np.uint8)
    # unsigned numbers: plain divisions (signed // and % carry Python's rounding rules)
    offsets, data = numbered_utf8(text, bounds, bases, form_of_row, first.astype(np.uint64), second.astype(np.uint64), _DIGITS)
    return pa.LargeStringArray.from_buffers(len(first), pa.py_buffer(offsets), pa.py_buffer(data))


def base36_array(values: np.ndarray) -> pa.Array:
    """``sdk.ordersync.base36`` of every value, vectorised."""
    return numbered_text([("", 36)], np.zeros(len(values), dtype=np.int64), values)


def _ladder_tables(strategy, bars, wake_idx, inst):
    """Every ladder the run will use (one per distinct lookback high at a wake bar, numbered in
    order of first use), flattened for the kernel."""
    from .maker_vol_grid import Ladder

    c = strategy.config
    lookback_ms = int(c.lookback.total_seconds() * 1000)
    n_window = int(c.lookback.total_seconds() // 60) + 1
    highs = lookback_highs(np.array(bars.ts, dtype=np.int64), np.array(bars.high, dtype=np.float64), wake_idx.astype(np.int64), n_window, lookback_ms)
    distinct, first_use, ladder_of_wake = np.unique(highs, return_index=True, return_inverse=True)
    by_first_use = np.argsort(first_use, kind="stable")
    number = np.empty(len(distinct), dtype=np.int64)
    number[by_first_use] = np.arange(len(distinct))
    lad_at = np.full(len(bars), -1, dtype=np.int64)
    lad_at[wake_idx] = number[ladder_of_wake]
    ladders = [Ladder(c.top_ratio * high, c.bottom_ratio * high, c.step_pct, 1) for high in distinct[by_first_use].tolist()]
    firsts = []
    for ladder in ladders:
        prices = ladder.prices
        targets = np.searchsorted(-prices, -(prices * (1.0 + c.tp_pct)), side="right") - 1
        late = np.flatnonzero(np.maximum(targets, 0) < np.arange(len(prices)))
        firsts.append(int(late[0]) if len(late) else len(prices))
    lens = np.array([len(ladder) for ladder in ladders], dtype=np.int64)
    raw = np.concatenate([ladder.prices for ladder in ladders]) if ladders else np.empty(0)
    tick, pdec = inst.tick_size, inst.price_decimals
    entry = np.round(np.floor(raw / tick + 1e-9) * tick, pdec)  # MakerVol._size
    return dict(
        lad_at=lad_at, lad_off=np.cumsum(lens) - lens, lad_len=lens, lad_first=np.asarray(firsts, np.int64),
        lad_top=np.array([ladder.top for ladder in ladders]), lad_bottom=np.array([ladder.bottom for ladder in ladders]),
        LADP=raw, LAD_E=entry,
        LAD_ET=np.round(np.floor(entry / tick + 1e-9) * tick, pdec),  # OrderSync.targets, buys
        LAD_TP=np.round(np.ceil(raw / tick - 1e-9) * tick, pdec),  # OrderSync.targets, sells
    )


def compiled_backtest(strategy, engine, bars):
    """Run ``strategy`` (a MakerVol) over ``bars`` in compiled code; None when the kernel does
    not apply (:func:`why_not`) or met a case it does not implement (the caller then runs the
    event path, which is the reference)."""
    import logging

    log = logging.getLogger(__name__)
    reason = why_not(strategy, engine)
    if reason is not None:
        log.info("maker_vol: event path (%s)", reason)
        return None
    if len(bars) == 0:
        return None
    started = time.perf_counter()
    broker = engine.broker
    broker.load(bars)
    inst = engine.instrument
    c = strategy.config
    n = len(bars)
    ts = np.array(bars.ts, dtype=np.int64)
    op, hi, lo, cl = (np.array(getattr(bars, k), dtype=np.float64) for k in ("open", "high", "low", "close"))
    wake = np.array(strategy.wake_bars(bars), dtype=np.bool_)
    wake_idx = np.flatnonzero(wake)
    next_wake = np.full(n + 1, n, dtype=np.int64)  # the first wake bar at or after each bar (n: none)
    next_wake[wake_idx] = wake_idx
    next_wake = np.minimum.accumulate(next_wake[::-1])[::-1].copy()
    tables = _ladder_tables(strategy, bars, wake_idx, inst)
    # the sim's funding schedule after load(); writable C arrays only: a read-only or strided
    # array is another numba type (another compile)
    fund_bar = np.array(broker._fund_bar, dtype=np.int64)
    fund_rate = np.array(broker._fund_rate, dtype=np.float64)
    fund_ts = np.array(broker._fund_ts, dtype=np.int64)
    P = np.zeros(NPARAM)
    P[P_MAKER], P[P_TAKER], P[P_LIQFEE] = inst.maker_fee, inst.taker_fee, broker.config.liquidation_fee_rate
    P[P_LOT], P[P_TICK], P[P_MINNOT] = inst.lot_size, inst.tick_size, inst.min_notional
    P[P_QSCALE], P[P_PSCALE] = 10.0 ** inst.qty_decimals, 10.0 ** inst.price_decimals
    P[P_TP], P[P_ORDER_PCT], P[P_NLIVE] = c.tp_pct, c.order_pct, c.max_live_orders
    P[P_STRICT] = 1.0 if broker.fill_model.strict else 0.0
    P[P_PATHDIR] = 1.0 if broker.config.path == "direction" else 0.0
    P[P_CHECK] = 1.0 if broker.config.check_margin else 0.0
    P[P_RECOMPUTE] = float(strategy._recompute_ms)
    P[P_CASH], P[P_LEV0] = broker.config.initial_cash, broker.leverage
    BB = np.array([(b.notional_floor, b.notional_cap, b.maintenance_rate, b.maintenance_amount, b.max_leverage) for b in broker.brackets], dtype=np.float64)
    if inst.margin_brackets:
        SB = np.array([(b.notional_cap, b.maintenance_rate, b.maintenance_amount) for b in inst.margin_brackets], dtype=np.float64)
    else:
        from .maker_vol import DEFAULT_MMR

        SB = np.array([(math.inf, DEFAULT_MMR, 0.0)])
    max_len = int(tables["lad_len"].max()) if len(tables["lad_len"]) else 1
    # Rows of the orders, fills, lots and the logs are written whole before they are read (orders,
    # fills and log entries are appended, a lot row is filled when the lot opens): np.empty leaves
    # the unused capacity untouched address space, where np.zeros may have to clear it (real 1m
    # stretches need up to ~1 order per bar; an overflow re-runs the kernel with twice the room).
    capacity = n + 16384
    while True:
        S = np.zeros(NSTATE)
        S[WALLET], S[LEV], S[PRICE], S[NOW] = broker.config.initial_cash, broker.leverage, op[0], ts[0]
        S[NEXT_RC] = -1
        S[LIQ_CACHE] = np.nan
        O = np.empty((capacity, NO))
        OPEN = np.zeros(max_len + 2 * c.max_live_orders + 64, dtype=np.int64)
        FL = np.empty((capacity, NF))
        L = np.empty((capacity + 1, NL))
        LOTS = np.zeros(max_len + 64, dtype=np.int64)
        TPAT = np.zeros(max_len + 1, dtype=np.int64)
        SQ, SM = np.zeros(max_len + 1), np.zeros(max_len + 1)
        CASH, QTYD = np.zeros(n), np.zeros(n)
        LIQM, HASM = np.full(n, np.nan), np.zeros(n, dtype=np.bool_)
        ENT, TPF = np.empty((capacity, 2)), np.empty(capacity)
        SAT, RT = np.empty((capacity, 7)), np.empty((capacity, 5))
        SAMP = np.empty((capacity, 10))
        FUNDR = np.empty((len(fund_bar) + 1, 5))
        kernel_started = time.perf_counter()
        code = kernel(
            ts, op, hi, lo, cl, wake, next_wake, tables["lad_at"], tables["lad_off"], tables["lad_len"], tables["lad_first"],
            tables["lad_bottom"], tables["LADP"], tables["LAD_E"], tables["LAD_ET"], tables["LAD_TP"], fund_bar, fund_rate,
            P, BB, SB, S, O, OPEN, FL, L, LOTS, TPAT, SQ, SM, CASH, QTYD, LIQM, HASM, ENT, TPF, SAT, RT, SAMP, FUNDR,
        )
        kernel_s = time.perf_counter() - kernel_started
        if code == BAIL_CAPACITY and capacity < 16 * n + 65536:
            capacity *= 2
            continue
        break
    if code != OK:
        log.info("maker_vol: compiled path stopped (%s); running the event path", BAIL_REASONS.get(code, code))
        return None
    engine.start()  # on_start (isolated margin on the broker) and the run-start hooks, as the event path
    k = dict(S=S, O=O[: int(S[NORD])], FL=FL[: int(S[NFILL])], L=L, LOTS=LOTS[: int(S[NLOTS])], TPAT=TPAT, CASH=CASH, QTYD=QTYD,
             LIQM=LIQM, HASM=HASM, ENT=ENT[: int(S[NENTRY])], TPF=TPF[: int(S[NTP])], SAT=SAT[: int(S[NSAT])], RT=RT[: int(S[NRT])],
             SAMP=SAMP[: int(S[NSAMP])], FUNDR=FUNDR[: int(S[NFUND])], fund_ts=fund_ts, fund_rate=fund_rate, tables=tables)
    result = _result(strategy, engine, broker, bars, k)
    result.elapsed_s = time.perf_counter() - started
    result.extra["compiled_kernel_s"] = kernel_s  # the compiled loop alone (the rest builds the RunResult)
    engine.plugins.call_optional("quant_on_run_end", result=result)
    return result


def _client_ids(strategy, engine, O) -> tuple[pa.Array, pa.Array]:
    """The client id and the tag of every order (in order of creation), as the event path gives them."""
    kind = O[:, O_KIND].astype(np.int64)
    ref = O[:, O_REF].astype(np.int64)
    closes = np.flatnonzero(kind == K_CLOSE)
    prefix, first = engine.take_client_ids(len(closes))  # in creation order, as the engine hands them out
    generation = O[:, O_GEN].astype(np.int64)
    generation[kind > K_TP] = 0  # unused: closes and liquidations have one number
    number = ref.copy()
    number[closes] = np.arange(first, first + len(closes))
    # by kind (K_ENTRY, K_TP, K_CLOSE, K_LIQ); entries and take-profits: OrderSync's f"{prefix}{key}.{base36(generation)}"
    sync = strategy.sync.prefix
    ids = numbered_text([(f"{sync}b", 10, ".", 36), (f"{sync}t", 10, ".", 36), (f"{prefix}-", 10), ("liquidation-", 10)], kind, number, generation)
    tags = numbered_text([("b", 10), ("t", 10), ("saturation:", 10), ("liquidation", 0)], kind, ref)
    return ids, tags


_STATUS = {ST_PENDING: "pending", ST_NEW: "new", ST_PARTIAL: "partially_filled", ST_FILLED: "filled", ST_CANCELED: "canceled", ST_REJECTED: "rejected", ST_EXPIRED: "expired"}
_STATUS_NAMES = [_STATUS.get(k) for k in range(max(_STATUS) + 1)]


def _reasons(O):
    """The ``reason`` column: why each order was refused, missing for the others (the event path's
    None; a column of None alone stays an object column)."""
    code = O[:, O_REASON].astype(np.int64)
    refused = np.flatnonzero(code != R_NONE)
    if len(refused) == 0:
        return np.full(len(O), None, dtype=object)
    texts = []
    for oi in refused.tolist():
        r = code[oi]
        if r == R_RO_GONE:
            texts.append("reduce-only: no position left to reduce")
        elif r == R_MARGIN:
            texts.append(f"margin is insufficient: needs {O[oi, O_NEED]:,.2f}, available {O[oi, O_FREE]:,.2f} (Binance -2019)")
        elif r == R_LIQ:
            texts.append("liquidation")
        elif r == R_REDUCE:
            texts.append("reduce-only order would not reduce the position (Binance -2022)")
        else:
            side = "buy" if O[oi, O_SIDE] > 0 else "sell"
            texts.append(f"post-only {side} at {O[oi, O_PRICE]} would cross {O[oi, O_NEED]} (GTX)")
    at = np.full(len(O), -1, dtype=np.int64)
    at[refused] = np.arange(len(refused))
    return _text(pa.array(texts, type=pa.large_string()).take(pa.array(at, mask=at < 0)))


def _result(strategy, engine, broker, bars, k):
    from btc_quant.core.engine import RunResult
    from btc_quant.core.metrics import compute_metrics, fills_frame, orders_frame, position_per_bar

    S, O, FL = k["S"], k["O"], k["FL"]
    n = len(bars)
    ids, tags = _client_ids(strategy, engine, O)
    side = _labels(["sell", "buy"], O[:, O_SIDE] > 0)
    orders = pd.DataFrame({
        "client_id": _text(ids),
        "side": _text(side),
        "type": _text(_labels(["limit", "market"], np.isnan(O[:, O_PRICE]))),
        "price": O[:, O_PRICE],
        "quantity": O[:, O_QTY],
        "filled_qty": O[:, O_FILLED],
        "avg_fill_price": O[:, O_AVG],
        "post_only": O[:, O_PO] != 0,
        "reduce_only": O[:, O_RO] != 0,
        "status": _text(_labels(_STATUS_NAMES, O[:, O_STATUS])),
        "reason": _reasons(O),
        "created": _times(O[:, O_CREATED]),
        "updated": _times(O[:, O_UPDATED]),
        "tag": _text(tags),
    })
    fo = FL[:, F_ORDER].astype(np.int64)
    fbar = FL[:, F_BAR].astype(np.int64)
    fills = pd.DataFrame({
        "ts": _times(np.asarray(bars.ts, dtype=np.int64)[fbar]),
        "trade_id": _text(numbered_text([("sim-", 10)], np.zeros(len(FL), dtype=np.int64), FL[:, F_SEQ])),
        "client_id": _text(ids.take(fo)),
        "side": _text(side.take(fo)),
        "price": FL[:, F_PRICE],
        "quantity": FL[:, F_QTY],
        "fee": FL[:, F_FEE],
        "is_maker": FL[:, F_MAKER] != 0,
        "is_liquidation": FL[:, F_LIQ] != 0,
        "tag": _text(tags.take(fo)),
        "bar": fbar,
    })
    if len(fills) == 0:  # the engine's builders give these their dtypes
        fills = fills_frame([], np.empty(0, dtype=np.int64))
    if len(orders) == 0:
        orders = orders_frame({})
    index = pd.DatetimeIndex(_times(bars.ts))
    initial = float(broker.config.initial_cash)
    equity = pd.Series(initial + np.cumsum(k["CASH"]) + np.cumsum(k["QTYD"]) * bars.close, index=index, name="equity")
    trades = _trades_frame(fills, buy=O[fo, O_SIDE] > 0)
    position = position_per_bar(n, fills)
    FR = k["FUNDR"]
    fk = FR[:, 0].astype(np.int64)
    funding = pd.DataFrame({
        "ts": _times(k["fund_ts"][fk]), "bar": FR[:, 1].astype(np.int64), "rate": k["fund_rate"][fk],
        "mark": FR[:, 2], "position": FR[:, 3], "amount": FR[:, 4],
    })
    if len(funding) == 0:  # the broker's own (empty) frame has its dtypes
        funding = broker.funding_payments()
    paid = float(funding["amount"].sum()) if len(funding) else 0.0
    metrics = compute_metrics(equity, fills, trades, initial_equity=initial, position=position, funding=paid)
    result = RunResult(
        info=engine.info, bars=n, start_ms=bars.start_ms, end_ms=bars.end_ms, equity=equity, fills=fills,
        orders=orders, trades=trades, metrics=metrics, initial_equity=initial,
    )
    result.extra["position"] = pd.Series(position, index=index, name="position")
    result.extra["rejections"] = int((O[:, O_STATUS] == ST_REJECTED).sum())
    result.extra["bars"] = bars
    result.extra["funding"] = funding
    liq = np.full(n, np.nan)
    marked = np.flatnonzero(k["HASM"])
    if len(marked):
        idx = np.zeros(n, dtype=np.int64) - 1
        idx[marked] = marked
        idx = np.maximum.accumulate(idx)
        have = idx >= 0
        liq[have] = k["LIQM"][idx[have]]
    result.extra["liquidation_price"] = pd.Series(liq, index=index, name="liquidation_price")
    side_sign = np.sign(position)
    with np.errstate(invalid="ignore"):
        distance = np.where(side_sign != 0, side_sign * (bars.close - liq) / bars.close, np.nan)
    result.extra["liquidation_distance"] = pd.Series(distance, index=index, name="liquidation_distance")
    result.extra["compiled"] = True
    _restore_strategy(strategy, engine, k, fills)
    result.extra["diagnostics"] = strategy.diagnostics()
    return result


def _restore_strategy(strategy, engine, k, fills):
    """Leave the strategy object as the event path would: its book, counters and diagnostics."""
    from .maker_vol import Grid
    from .maker_vol_grid import GridBook, Ladder, Lot

    S, L = k["S"], k["L"]
    c = strategy.config
    tables = k["tables"]
    lad = int(S[LAD])
    ladder = Ladder(float(tables["lad_top"][lad]), float(tables["lad_bottom"][lad]), c.step_pct, 1)
    book = GridBook(ladder, c.tp_pct)
    for lot_id in k["LOTS"].tolist():
        row = L[lot_id]
        lot = Lot(lot_id, int(row[L_LEVEL]), float(row[L_ENTRY]), float(row[L_QTY]), float(row[L_MARGIN]), float(row[L_LEV]),
                  int(row[L_TP]), bool(row[L_CLOSING]), float(row[L_FREED]))
        book.lots[lot_id] = lot
    for level in np.flatnonzero(k["TPAT"][: len(ladder)]).tolist():
        book._set(level, int(k["TPAT"][level]))
    book._next_lot = int(S[NEXTLOT])
    book.quantity, book.margin, book._cost = float(S[BQ]), float(S[BMARGIN]), float(S[BCOST])
    strategy.grids = [Grid(1, "b", "t", book)]
    strategy._margin_calls = True
    strategy._armed = int(S[ARMED])
    strategy._paused = bool(S[PAUSED])
    strategy._next_recompute = int(S[NEXT_RC])
    strategy.entry_fills = _level_counts(k["ENT"][:, 1])
    strategy.tp_fills = _level_counts(k["TPF"])
    ENT = k["ENT"]
    strategy.entry_log = pd.DataFrame({"ts_ms": ENT[:, 0].astype(np.int64), "direction": np.ones(len(ENT), np.int64), "price": ENT[:, 1]})
    SAT = k["SAT"]
    strategy.saturations = pd.DataFrame({
        "ts_ms": SAT[:, 0].astype(np.int64), "entry": SAT[:, 1], "take_profit": SAT[:, 2], "exit": SAT[:, 3],
        "quantity": SAT[:, 4], "pnl": SAT[:, 5], "fee": SAT[:, 6],
    })
    RT = k["RT"]
    strategy.round_trips = pd.DataFrame({
        "ts_ms": RT[:, 0].astype(np.int64), "direction": np.ones(len(RT), np.int64), "entry": RT[:, 1], "exit": RT[:, 2],
        "quantity": RT[:, 3], "gross": RT[:, 4],
    })
    SAMP = k["SAMP"]
    strategy.samples = pd.DataFrame({
        "ts_ms": SAMP[:, 0].astype(np.int64), "price": SAMP[:, 1], "liquidation_price": SAMP[:, 2],
        "broker_liquidation_price": SAMP[:, 3], "distance_to_liquidation": SAMP[:, 4],
        "tp_levels_occupied": SAMP[:, 5].astype(np.int64), "levels": SAMP[:, 6].astype(np.int64),
        "live_orders": SAMP[:, 7].astype(np.int64), "virtual_orders": SAMP[:, 8].astype(np.int64), "equity": SAMP[:, 9],
    })
    counts = Counter()
    for key, idx in (("saturations", SATS), ("liquidations", LIQS), ("cash_pauses", CASH_PAUSES), ("invariant_violations", INV_VIOL),
                     ("broker_invariant_violations", BRK_VIOL), ("recomputes", RECOMPUTES), ("margin_call_refused", MREFUSED),
                     ("margin_added", MADDED), ("entries_beyond_bottom", BEYOND)):
        if S[idx]:
            counts[key] = int(S[idx])
    counts["levels_raised_to_min_notional"] = int(S[RAISED])
    strategy.counts = counts
    pnl = Counter()
    maker = fills["is_maker"].to_numpy()
    if maker.any():
        pnl["fees_maker"] = float(S[FEES_MAKER])
    if (~maker).any():
        pnl["fees_taker"] = float(S[FEES_TAKER])
    if S[NTP]:
        pnl["grid_profit"] = float(S[GRID_PROFIT])
    if S[NSAT]:
        pnl["saturation_loss"] = float(S[SAT_LOSS])
    if S[LIQS]:
        pnl["liquidation_loss"] = float(S[LIQ_LOSS])
    pnl["funding"] = 0.0 - float(S[PFUNDING])
    price = float(S[PRICE])
    pnl["unrealised"] = sum((price - lot.entry) * lot.quantity for lot in book.lots.values())
    strategy.pnl = pnl
    stats = strategy.sync.stats
    stats.submitted, stats.canceled, stats.rejected = int(S[SUBMITTED]), int(S[CANCELED]), int(S[REJECTED])
    stats.rearmed, stats.fills, stats.syncs = int(S[REARMED]), int(S[SYNC_FILLS]), int(S[NSAMP]) - 1


def _level_counts(prices: np.ndarray) -> Counter:
    """Counter of (direction, round(price, 1)), built from the distinct prices."""
    counts: Counter = Counter()
    values, times = np.unique(prices, return_counts=True)
    for value, count in zip(values.tolist(), times.tolist()):
        counts[(1, round(value, 1))] += count
    return counts

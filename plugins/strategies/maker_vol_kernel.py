"""The compiled backtest of ``maker_vol`` on the ``sim`` broker: the strategy's decisions over the venue core.

The event path (engine + :class:`~btc_quant.plugins.brokers.sim.SimBroker` + :class:`MakerVol` +
:class:`~btc_quant.sdk.ordersync.OrderSync`) stays the reference. As :mod:`..brokers.sim.pairs`
and :mod:`..brokers.sim.signals` do, this module is a *decision loop over the venue core*: the
account, its orders and every venue rule (bar skipping, the intrabar path, the fill models, fees,
isolated margin, leverage, Binance's liquidation price and the liquidation itself, funding) are
the functions of :mod:`..brokers.sim.venue` that the event path's SimBroker calls too; the loop
runs :func:`~..brokers.sim.venue.advance` and hands each event the core logs to the strategy's
decisions, in the order the engine would:

* on a fill: open a lot and give it its take-profit level (saturation close at market when none
  is free), or book a take-profit or a market close; keep the position's isolated margin at what
  puts its liquidation price at bottom (``maker_vol_grid.required_margin``);
* at a wake-up (the first bar, each ``recompute`` period, a price alert on the next level up, the
  close of every bar with a fill): re-send closes that ended without closing their lot, recompute
  the ladder and re-lay take-profits, size the entries (``maker_vol_grid.entry_sizes_from``: as
  far down the ladder as the desired set reaches; the event path sizes the whole ladder at once,
  the same sizes), restore
  the liquidation line (``restore_share``), then the desired set (take-profits nearest the price,
  entries nearest the price that free margin funds) and :class:`OrderSync`'s diff
  (``sdk.ordersync.sync_plan``, the function OrderSync calls: per key, an open order whose side,
  price, quantity and flags match is kept, any other is canceled, nearest first; new orders go
  nearest the price first), under client ids ``f"{strategy_id}:{key}.{base36(generation)}"``
  with the generation counter seeded by the first sync's clock.

The grid's rules are ``maker_vol_grid``'s compiled functions, which the event path calls too, and
so is what a lot's market close is (``maker_vol_grid.lot_close``).
When the loop runs out of room it re-runs with larger arrays; :func:`compiled_backtest` returns
None (the event path runs) for a run :func:`why_not` refuses. Fill for fill equality with the
event path is what ``tests/test_maker_vol_kernel.py`` checks.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa

from btc_quant.core.compiled import njit
from btc_quant.sdk.ordersync import (
    NOP,
    NTG,
    OP_AGE,
    OP_PO,
    OP_PRICE,
    OP_PSIDE,
    OP_QTY,
    OP_REM,
    OP_RO,
    OP_SIDE,
    OP_TARGET,
    TG_PO,
    TG_PRICE,
    TG_PSIDE,
    TG_QTY,
    TG_RO,
    TG_SIDE,
    TG_TIE,
    sync_plan,
)

from ..brokers.sim import venue as vc
from ..brokers.sim.venue import (
    EV_FILL,
    EV_STATUS,
    F_FEE,
    F_ORDER,
    F_PRICE,
    F_QTY,
    NEV,
    O_FILLED,
    O_LIQ,
    O_QTY,
    O_REASON,
    O_SIDE,
    O_STATUS,
    O_TAG0,
    O_TAG1,
    Q_ENTRY,
    Q_ISO,
    Q_LIQ,
    Q_QTY,
)
from .maker_vol_grid import (
    B_COST,
    B_MARGIN,
    B_NEXT,
    B_NLOTS,
    B_NTP,
    B_QTY,
    CLOSE_GONE,
    CLOSE_WAIT,
    L_CLOSING,
    L_ENTRY,
    L_FREED,
    L_QTY,
    L_TP,
    LINE_ADD,
    LINE_CLOSE,
    LINE_OK,
    NB,
    NL,
    arming_band,
    arming_price,
    beyond_line,
    book_close_fill,
    book_close_lot,
    book_is_open,
    book_liquidate,
    book_liquidation_price,
    book_max_leverage,
    book_open_entry,
    book_take_profit_fill,
    bracket_table,
    desired_levels,
    entry_sizes_from,
    first_entry_level,
    line_funding,
    liquidated_above_bottom,
    lookback_range,
    lot_close,
    next_recompute_ms,
    place_take_profit,
    position_leverage,
    prices_on_tick,
    relay_take_profits,
    required_margin,
    restore_closes,
)

# --- the strategy's state M (float64): counters and running totals ----------------------------------
GEN, ALERT_ON, ALERT_LO, ALERT_HI, BAIL, LAD = 0, 1, 2, 3, 4, 5
GRID_PROFIT, FEES_MAKER, FEES_TAKER, SAT_LOSS, LIQ_LOSS = 11, 12, 13, 14, 15
SATS, LIQS, CASH_PAUSES, PAUSED, BRK_VIOL, RAISED, MREFUSED = 16, 17, 18, 19, 20, 21, 22
MADDED, SUBMITTED, CANCELED, REJECTED, RECOMPUTES, BEYOND, NENTRY, NTP = 23, 24, 25, 26, 27, 28, 29, 30
NSAT, NRT, NSAMP, ARMED, NEXT_RC, HAS_GRID = 31, 32, 33, 34, 35, 36
FIRST_SYNC, REARMED, SYNC_FILLS, RESTORES, LIQ_ABOVE, RESTORE_CLOSES, RESTORE_PNL = 37, 38, 39, 40, 41, 42, 43
NRETRY, CLOSES_RETRIED, LOTS_GONE, OCCUPIED = 44, 45, 46, 47
NSTATE = 48

# --- each grid's state MG[g] (float64): its book's totals, its ladder, its position row ---------------
# G_RO / G_PSIDE: how its closing orders are flagged (one-way: reduce-only, position side BOTH;
# hedge mode: no flag, position side LONG or SHORT)
# its first NB fields are its lot book's totals (maker_vol_grid's B_NLOTS ...: the row is the book's B)
G_NLOTS, G_BQ, G_BMARGIN, G_BCOST, G_NEXTLOT = B_NLOTS, B_QTY, B_MARGIN, B_COST, B_NEXT
G_OFF, G_LEN, G_FIRST, G_BOTTOM, G_D, G_ROW, G_PSIDE, G_RO = range(NB, NB + 8)
# G_MAXLEV: book_max_leverage of its open lots, read again only when the set of open lots changed:
# a lot's leverage is fixed when it opens, and (B_NEXT, B_NLOTS) -- kept in G_MAXLEV_NEXT /
# G_MAXLEV_N -- changes with every open (B_NEXT grows) and every close (B_NLOTS falls)
G_MAXLEV, G_MAXLEV_NEXT, G_MAXLEV_N = range(NB + 8, NB + 11)
G_ALONE = NB + 11  # 1: the only grid (side=long or short), 0: one of two (side=both)
# the entries are sized as far down the ladder as the desired set reaches (entry_sizes_from):
# G_SIZED the level to go on from, G_SIZE_MARGIN the margin of an entry at the recompute,
# G_MERGED the levels merged so far
G_SIZED, G_SIZE_MARGIN, G_MERGED = NB + 12, NB + 13, NB + 14
NMG = NB + 15

# --- the strategy's parameters G ---------------------------------------------------------------------
G_TP, G_ORDER_PCT, G_NLIVE, G_RECOMPUTE, G_NGRID = 0, 1, 2, 3, 4
NPARAM = 5

# --- what each order is to the strategy: O_TAG0 its kind + NKIND x its grid, O_TAG1 its level
# (entry) or lot --------------------------------------------------------------------------------------
K_ENTRY, K_TP, K_CLOSE, K_LIQ, K_RESTORE = 0, 1, 2, 3, 4  # K_CLOSE: saturation; K_RESTORE: restores the liquidation line
NKIND = 8

# --- lots L (row = lot id): maker_vol_grid's layout (L_LEVEL ...). L_CLOSING: 0 open, 1 a close at
# market under way, >= 2 a close that ended without closing the lot and is sent again at the next
# wake-up (2 + 2 x its place in that queue, + 1 for a restore close)

# kernel exit codes
OK, BAIL_CAPACITY, BAIL_NO_LADDER = 0, 4, 5
BAIL_REASONS = {
    BAIL_CAPACITY: "more orders, fills or lots than the kernel's arrays hold",
    BAIL_NO_LADDER: "a re-computation outside a wake bar",
}
EPS = vc.EPS

#: How the bar loop is compiled: without numba's reference counting, as the venue core
#: (``venue.compiled``). Each call between compiled functions otherwise counts every array it
#: passes (the venue state's 14, a grid's row views) up and down with atomic operations; the loop
#: therefore allocates nothing itself (its work arrays come from :func:`work_arrays`).
loop = njit(cache=True, nogil=True, _nrt=False)


@njit(cache=True, nogil=True, inline="always")
def _equity(v):  # pragma: no cover - compiled
    """Wallet balance plus the unrealised PnL of both position rows at the current price."""
    out = v.S[vc.WALLET]
    for r in range(2):
        q = v.POS[r, Q_QTY]
        if abs(q) >= 1e-12:
            out += q * (v.S[vc.PRICE] - v.POS[r, Q_ENTRY])
    return out


@njit(cache=True, nogil=True)
def _retry_later(M, L, lot, kind):  # pragma: no cover - compiled
    """MakerVol.on_order for a close that ended without closing its lot: sent again at the next
    wake-up (``closes_retried``), in this order."""
    M[CLOSES_RETRIED] += 1
    L[lot, L_CLOSING] = 2.0 + 2.0 * M[NRETRY] + (1.0 if kind == K_RESTORE else 0.0)
    M[NRETRY] += 1


@njit(cache=True, nogil=True)
def _tag(kind, g):  # pragma: no cover - compiled
    """An order's O_TAG0: its kind and its grid."""
    return kind + NKIND * g


@njit(cache=True, nogil=True)
def _held(v, MG, g):  # pragma: no cover - compiled
    """MakerVol._held: grid ``g``'s position on its side less the rest of its closes under way."""
    held = MG[G_D] * v.POS[int(MG[G_ROW]), Q_QTY]
    for k in range(int(v.S[vc.NSLOT])):
        if v.BOOK[k, vc.B_STATE] != 0.0:
            oi = v.BOOK_ORDER[k]
            if v.O[oi, O_TAG0] == _tag(K_CLOSE, g) or v.O[oi, O_TAG0] == _tag(K_RESTORE, g):
                held -= max(v.O[oi, O_QTY] - v.O[oi, O_FILLED], 0.0)
    return held


@njit(cache=True, nogil=True)
def _submit_close(v, M, MG, L, LOTS, TPAT, g, lot, kind, again, inside):  # pragma: no cover - compiled
    """MakerVol._close_lot / _send_close: the market order ``maker_vol_grid.lot_close`` decides for
    ``lot`` of grid ``g``, through the venue; inside a bar's walk it fills at once, between bars at
    the next open. ``again``: a retry (MakerVol._retry_closes)."""
    L[lot, L_CLOSING] = 1.0
    if kind == K_CLOSE and not again:
        M[SATS] += 1
    P = v.P
    action, side, reduce_only, pside, cancel_tp = lot_close(
        MG[G_D], L[lot, L_QTY], _held(v, MG, g), again, P[vc.P_HEDGE] != 0, MG[G_ALONE] != 0, v.S[vc.PRICE], P[vc.P_LOT], P[vc.P_MINNOT]
    )
    if cancel_tp:  # OrderSync.cancel_now
        for k in range(v.BOOK.shape[0]):
            if v.BOOK[k, vc.B_STATE] != 0.0:
                oi = v.BOOK_ORDER[k]
                if v.O[oi, O_TAG0] == _tag(K_TP, g) and v.O[oi, O_TAG1] == lot and v.O[oi, O_LIQ] == 0:
                    vc.cancel(v, oi, vc.R_NONE)
                    M[CANCELED] += 1
    if action == CLOSE_GONE:
        book_close_lot(MG, L, LOTS, TPAT, lot)
        M[LOTS_GONE] += 1
        return
    if action == CLOSE_WAIT:  # side=both one-way: strategy_reason leaves it to the event path
        _retry_later(M, L, lot, kind)
        return
    oi = vc.new_order(v, side, np.nan, vc.round_qty(L[lot, L_QTY], P), 0.0, 1.0 if reduce_only else 0.0, pside)
    if oi < 0:
        M[BAIL] = BAIL_CAPACITY
        return
    v.O[oi, O_TAG0] = _tag(kind, g)
    v.O[oi, O_TAG1] = lot
    if vc.submit(v, oi, inside) == vc.SUB_FULL:
        M[BAIL] = BAIL_CAPACITY


@njit(cache=True, nogil=True)
def _closed_at_market(v, M, MG, L, LOTS, TPAT, SAT, fi):  # pragma: no cover - compiled
    """MakerVol._closed_at_market."""
    oi = int(v.FL[fi, F_ORDER])
    lot = int(v.O[oi, O_TAG1])
    price = v.FL[fi, F_PRICE]
    qty = v.FL[fi, F_QTY]
    M[FEES_TAKER] += v.FL[fi, F_FEE]
    done = v.O[oi, O_STATUS] != vc.ST_PARTIAL  # else the close was cut to a smaller position
    pnl = book_close_fill(MG, L, LOTS, TPAT, lot, qty, price, MG[G_D], done, v.P[vc.P_LOT] / 2)
    if int(v.O[oi, O_TAG0]) % NKIND == K_RESTORE:
        M[RESTORE_PNL] += pnl
        return
    M[SAT_LOSS] += pnl
    k = int(M[NSAT])
    SAT[k, 0] = v.S[vc.NOW]
    SAT[k, 1] = L[lot, L_ENTRY]
    SAT[k, 2] = L[lot, L_FREED]
    SAT[k, 3] = price
    SAT[k, 4] = qty
    SAT[k, 5] = pnl
    SAT[k, 6] = v.FL[fi, F_FEE]
    M[NSAT] = k + 1


@njit(cache=True, nogil=True, inline="always")
def _fund_position(v, M, MG, SB, L, LOTS, TPAT, g, wake, OUT):  # pragma: no cover - compiled
    """MakerVol._fund_position for grid ``g``'s position row (its rules are maker_vol_grid's;
    leverage and margin calls are the venue's, as SimBroker.set_leverage / adjust_margin make them).
    ``OUT``: room for the lots a restore closes (as many as ``LOTS`` holds)."""
    n = int(MG[G_NLOTS])
    POS = v.POS
    r = int(MG[G_ROW])
    qty = abs(POS[r, Q_QTY])
    if n == 0 or qty < 1e-12:
        return
    if v.S[vc.NMARK] + 8 >= v.MARKS.shape[0]:
        M[BAIL] = BAIL_CAPACITY
        return
    d = MG[G_D]
    bottom = MG[G_BOTTOM]
    if MG[G_MAXLEV_NEXT] != MG[G_NEXTLOT] or MG[G_MAXLEV_N] != n:
        MG[G_MAXLEV] = book_max_leverage(MG, L, LOTS)
        MG[G_MAXLEV_NEXT] = MG[G_NEXTLOT]
        MG[G_MAXLEV_N] = n
    wanted = position_leverage(MG[G_MAXLEV], qty * v.S[vc.PRICE], SB)
    if v.P[vc.P_LEV] != wanted and not vc.set_leverage(v, wanted):
        M[MREFUSED] += 1
    required = required_margin(qty, POS[r, Q_ENTRY], bottom, d, SB)
    available = max(vc.available(v), 0.0)
    action, amount = line_funding(required, POS[r, Q_ISO], available, qty, POS[r, Q_ENTRY], v.S[vc.PRICE], bottom, d, v.P[vc.P_TAKER], wake)
    if action == LINE_OK:
        return
    if action == LINE_ADD:
        vc.add_isolated_margin(v, r, amount)
        M[MADDED] += 1
        if wake:
            M[RESTORES] += 1
        return
    M[MREFUSED] += 1
    if action != LINE_CLOSE:
        return
    count = restore_closes(MG, L, LOTS, TPAT, amount, OUT)
    if count == 0:
        return
    M[RESTORES] += 1
    for k in range(count):
        _submit_close(v, M, MG, L, LOTS, TPAT, g, OUT[k], K_RESTORE, False, False)  # between bars: fills at the next open
        if M[BAIL] != 0:
            return
        M[RESTORE_CLOSES] += 1


@njit(cache=True, nogil=True, inline="always")
def _on_maker_fill(v, M, G, MG, SB, L, LOTS, TPAT, LADP, g, ENT, TPF, RT, fi, OUT):  # pragma: no cover - compiled
    """MakerVol.on_fill for an entry or a take-profit of grid ``g`` (and the saturation close it may cause)."""
    oi = int(v.FL[fi, F_ORDER])
    M[SYNC_FILLS] += 1
    M[FEES_MAKER] += v.FL[fi, F_FEE]
    price = v.FL[fi, F_PRICE]
    qty = v.FL[fi, F_QTY]
    d = MG[G_D]
    bottom = MG[G_BOTTOM]
    off = int(MG[G_OFF])
    length = int(MG[G_LEN])
    if int(v.O[oi, O_TAG0]) % NKIND == K_ENTRY:
        # MakerVol._open_lot
        if d * (price - bottom) <= 0:
            M[BEYOND] += 1
        lot = book_open_entry(MG, L, LOTS, v.O[oi, O_TAG1], price, qty, bottom, d, SB)
        if lot < 0:
            M[BAIL] = BAIL_CAPACITY
            return
        e = int(M[NENTRY])
        ENT[e, 0] = v.S[vc.NOW]
        ENT[e, 1] = price
        ENT[e, 2] = d
        M[NENTRY] = e + 1
        victim = place_take_profit(MG, L, TPAT, LADP, off, length, G[G_TP], d, lot)  # GridBook.place_tp
        if victim != 0:  # inside the bar: fills at once; its fill event is handled after this one
            _submit_close(v, M, MG, L, LOTS, TPAT, g, victim, K_CLOSE, False, True)
            if M[BAIL] != 0:
                return
        _fund_position(v, M, MG, SB, L, LOTS, TPAT, g, False, OUT)
    else:
        lot = int(v.O[oi, O_TAG1])
        if book_is_open(MG, LOTS, lot):
            gross, closed = book_take_profit_fill(MG, L, LOTS, TPAT, lot, qty, price, d)
            M[GRID_PROFIT] += gross
            t = int(M[NTP])
            TPF[t, 0] = price
            TPF[t, 1] = d
            M[NTP] = t + 1
            if closed:
                r = int(M[NRT])
                RT[r, 0] = v.S[vc.NOW]
                RT[r, 1] = L[lot, L_ENTRY]
                RT[r, 2] = price
                RT[r, 3] = qty
                RT[r, 4] = gross
                RT[r, 5] = d
                M[NRT] = r + 1
    _wake_at_close(M)


@njit(cache=True, nogil=True)
def _wake_at_close(M):  # pragma: no cover - compiled
    """ctx.wake_when_price_outside(inf, None): the strategy acts again at this bar's close."""
    M[ALERT_ON] = 1
    M[ALERT_LO] = np.inf
    M[ALERT_HI] = np.inf


@njit(cache=True, nogil=True)
def _liquidated(v, M, MG, L, LOTS, TPAT, fi, ngrid):  # pragma: no cover - compiled
    """MakerVol._liquidated (the venue has canceled the orders and closed the position): the lots
    of the grid(s) on the liquidated position row leave the books."""
    M[FEES_TAKER] += v.FL[fi, F_FEE]
    M[LIQS] += 1
    price = v.FL[fi, F_PRICE]
    row = int(v.FL[fi, vc.F_ROW])
    for g in range(ngrid):
        if int(MG[g, G_ROW]) != row:
            continue
        d = MG[g, G_D]
        bottom = MG[g, G_BOTTOM]
        if liquidated_above_bottom(price, bottom, d):
            M[LIQ_ABOVE] += 1
        M[LIQ_LOSS] += book_liquidate(MG[g], L[g], LOTS[g], TPAT[g], price, d)


@njit(cache=True, nogil=True, inline="always")
def _drain(v, M, G, MG, SB, L, LOTS, TPAT, LADP, ENT, TPF, SAT, RT, OUT):  # pragma: no cover - compiled
    """The engine's pump: every event the core logged, in order, to the strategy's handlers
    (which may add more: a close that fills at once is handled after the fill that caused it)."""
    ngrid = int(G[G_NGRID])
    e = 0
    while e < int(v.S[NEV]):
        if M[BAIL] != 0:
            return
        kind = int(v.EV[e, 0])
        oi = int(v.EV[e, 1])
        fi = int(v.EV[e, 2])
        e += 1
        if v.O[oi, O_LIQ] != 0:
            if kind == EV_FILL:
                _liquidated(v, M, MG, L, LOTS, TPAT, fi, ngrid)
            continue
        tag = int(v.O[oi, O_TAG0]) % NKIND
        g = int(v.O[oi, O_TAG0]) // NKIND
        if kind == EV_FILL:
            if tag == K_ENTRY or tag == K_TP:
                _on_maker_fill(v, M, G, MG[g], SB, L[g], LOTS[g], TPAT[g], LADP, g, ENT, TPF, RT, fi, OUT)
            else:
                _closed_at_market(v, M, MG[g], L[g], LOTS[g], TPAT[g], SAT, fi)
                if tag == K_RESTORE:
                    _fund_position(v, M, MG[g], SB, L[g], LOTS[g], TPAT[g], g, False, OUT)  # the released margin funds the rest
                    _wake_at_close(M)  # and the line is looked at again at this bar's close
        elif kind == EV_STATUS:
            status = v.O[oi, O_STATUS]
            if tag == K_CLOSE or tag == K_RESTORE:
                lot = int(v.O[oi, O_TAG1])
                if status != vc.ST_FILLED and book_is_open(MG[g], LOTS[g], lot):
                    _retry_later(M, L[g], lot, tag)
            elif tag == K_TP and status == vc.ST_EXPIRED and v.O[oi, O_REASON] == vc.R_RO_GONE:
                M[REARMED] += 1  # OrderSync: a post-only order of ours expired, sent again later
    v.S[NEV] = 0


@njit(cache=True, nogil=True, inline="always")
def _sample(v, M, MG, SB, TPAT, SAMP, live, ngrid, occupied):  # pragma: no cover - compiled
    """MakerVol._sample: per grid, its lot book's and its position's liquidation price; with two
    grids the columns show the grid nearest its liquidation. A breach: a position's line beyond
    its bottom while the price is on the safe side (no restore close under way). ``occupied``: the
    levels holding a take-profit, as :func:`_desired` counted them at this wake-up (-1: count them)."""
    price = v.S[vc.PRICE]
    liq = np.nan
    dist = np.nan
    broker_liq = np.nan
    count = occupied < 0
    occupied = max(occupied, 0)
    levels = 0
    for g in range(ngrid):
        length = int(MG[g, G_LEN])
        levels += length
        if count:
            for lv in range(length):
                if TPAT[g, lv] != 0:
                    occupied += 1
        if MG[g, G_NLOTS] == 0:
            continue
        d = MG[g, G_D]
        bottom = MG[g, G_BOTTOM]
        g_liq = book_liquidation_price(MG[g, G_BQ], MG[g, G_BCOST], MG[g, G_BMARGIN], d, SB)
        g_broker = v.POS[int(MG[g, G_ROW]), Q_LIQ]
        if beyond_line(price, g_broker, bottom, d):
            restoring = False  # a restore or saturation close of this grid waiting for the next open
            for k in range(int(v.S[vc.NSLOT])):  # (slots past NSLOT were never used)
                if v.BOOK[k, vc.B_STATE] != 0.0:
                    tag = v.O[v.BOOK_ORDER[k], O_TAG0]
                    if tag == _tag(K_RESTORE, g) or tag == _tag(K_CLOSE, g):
                        restoring = True
            if not restoring:
                M[BRK_VIOL] += 1
        g_dist = d * (price - g_broker) / price
        if not (dist <= g_dist):  # the first grid, or one nearer its liquidation
            liq, broker_liq, dist = g_liq, g_broker, g_dist
    r = int(M[NSAMP])
    if r >= SAMP.shape[0]:
        M[BAIL] = BAIL_CAPACITY
        return
    SAMP[r, 0] = v.S[vc.NOW]
    SAMP[r, 1] = price
    SAMP[r, 2] = liq
    SAMP[r, 3] = broker_liq
    SAMP[r, 4] = dist
    SAMP[r, 5] = occupied
    SAMP[r, 6] = levels
    SAMP[r, 7] = live
    SAMP[r, 8] = M[ARMED]
    SAMP[r, 9] = _equity(v)
    M[NSAMP] = r + 1


@njit(cache=True, nogil=True)
def _size(G, MG, equity):  # pragma: no cover - compiled
    """MakerVol._size at a recompute: an entry's margin (``order_pct`` of equity); the levels are
    sized from the first entry level on as the desired set reaches them (:func:`_size_to`)."""
    MG[G_SIZED] = MG[G_FIRST]
    MG[G_SIZE_MARGIN] = G[G_ORDER_PCT] * equity
    MG[G_MERGED] = 0.0


@njit(cache=True, nogil=True)
def _size_to(v, MG, SB, LAD_E, SQ, SM, stop):  # pragma: no cover - compiled
    """Size one grid's entries (maker_vol_grid.entry_sizes_from) until the levels before ``stop``
    have theirs, with the margin of the recompute; counts the levels merged for the exchange minimum."""
    off, length, P = int(MG[G_OFF]), int(MG[G_LEN]), v.P
    stop = min(stop, length)
    if stop <= MG[G_SIZED]:
        return
    at, merged = entry_sizes_from(
        LAD_E[off : off + length],
        int(MG[G_SIZED]),
        stop,
        MG[G_BOTTOM],
        MG[G_D],
        MG[G_SIZE_MARGIN],
        SB,
        P[vc.P_LOT],
        P[vc.P_QSCALE],
        P[vc.P_MINNOT],
        SQ,
        SM,
    )
    MG[G_SIZED] = at
    MG[G_MERGED] += merged


@njit(cache=True, nogil=True, inline="always")
def _desired(
    v, M, G, MG, SB, L, TPAT, SQ, SM, LADP, LAD_E, LAD_ET, LAD_TP, price, TK, TG, TR, TGT, TP_OUT, ENTRY_OUT
):  # pragma: no cover - compiled
    """MakerVol.desired: per grid, its desired levels (maker_vol_grid.desired_levels, the free
    margin shared by the grids) as OrderSync's targets (rows of ``TGT``, as ``sync_plan`` takes
    them; TK/TG/TR: each one's kind, grid and level or lot). Returns the number of targets."""
    nlive = int(G[G_NLIVE])
    free = _equity(v)
    for g in range(int(G[G_NGRID])):
        free -= MG[g, G_BMARGIN]
    nt = 0
    paused = False
    armed = 0.0
    occupied = 0
    for g in range(int(G[G_NGRID])):
        off, length, first = int(MG[g, G_OFF]), int(MG[g, G_LEN]), int(MG[g, G_FIRST])
        d = MG[g, G_D]
        while True:  # sizing the entries as far as the desired set reaches (a few levels past it)
            ntp, nentry, armed_g, paused_g, left, more = desired_levels(
                MG[g], L[g], TPAT[g], LADP, off, length, first, SQ[g], SM[g], int(MG[g, G_SIZED]), price, d, nlive, free, TP_OUT, ENTRY_OUT
            )
            if more < 0:
                break
            _size_to(v, MG[g], SB, LAD_E, SQ[g], SM[g], more + 2 * nlive + 8)
        free = left
        armed += armed_g
        occupied += int(MG[g, B_NTP])  # the levels holding a take-profit, for _sample
        paused = paused or paused_g
        for k in range(ntp):
            level = TP_OUT[k]
            lot = TPAT[g, level]
            tprice = LAD_TP[off + level]
            if d * (tprice - price) <= 0:  # post-only take-profit that would cross: held back
                continue
            TK[nt] = K_TP
            TG[nt] = g
            TR[nt] = lot
            _target(TGT, nt, K_TP, -d, tprice, vc.round_qty(L[g, lot, L_QTY], v.P), MG[g])
            nt += 1
        for k in range(nentry):
            level = ENTRY_OUT[k]
            eprice = LAD_ET[off + level]
            if d * (eprice - price) >= 0:  # post-only entry that would cross: held back
                continue
            TK[nt] = K_ENTRY
            TG[nt] = g
            TR[nt] = level
            _target(TGT, nt, K_ENTRY, d, eprice, vc.round_qty(SQ[g, level], v.P), MG[g])
            nt += 1
    M[ARMED] = armed
    M[OCCUPIED] = occupied
    if paused and M[PAUSED] == 0:
        M[CASH_PAUSES] += 1
    M[PAUSED] = 1 if paused else 0
    return nt


@njit(cache=True, nogil=True, inline="always")
def _target(TGT, t, kind, side, price, qty, MG):  # pragma: no cover - compiled
    """Row ``t`` of the targets: a post-only order of grid ``MG``, with the flags MakerVol.desired
    gives it (a take-profit closes: reduce-only one-way, its position side in hedge mode). Its tie
    rank is its key's place in sorted order among keys at the same distance (MakerVol's keys: entries
    "b" long, "s" short, take-profits "t" long, "u" short; one grid's keys never tie: no two of its
    targets share a price)."""
    TGT[t, TG_SIDE] = side
    TGT[t, TG_PRICE] = price
    TGT[t, TG_QTY] = qty
    TGT[t, TG_PO] = 1.0
    TGT[t, TG_RO] = MG[G_RO] if kind == K_TP else 0.0
    TGT[t, TG_PSIDE] = MG[G_PSIDE]
    TGT[t, TG_TIE] = (2.0 if kind == K_TP else 0.0) + (1.0 if MG[G_D] < 0 else 0.0)


@njit(cache=True, nogil=True, inline="always")
def _sync(
    v, M, nt, TK, TG, TR, TGT, OPEN, OIS, KEEPER, CANCEL, CDIST, CAGE, PLACE, T_BY_LEVEL, T_BY_LOT, GENS, price
):  # pragma: no cover - compiled
    """OrderSync.sync: the open entries and take-profits as ``sync_plan`` takes them (each with the
    target its key names, aged by its queue number ``B_SEQ``), then its decision: cancel, and submit
    under client ids ``f"{strategy_id}:{key}.{base36(generation)}"``. Returns the live count, or -1 (room)."""
    S, O, BOOK = v.S, v.O, v.BOOK
    if M[FIRST_SYNC] == 0:
        M[FIRST_SYNC] = 1
        M[GEN] = S[vc.NOW]
    for t in range(nt):
        if TK[t] == K_ENTRY:
            T_BY_LEVEL[TG[t], TR[t]] = t
        else:
            T_BY_LOT[TG[t], TR[t]] = t
    n = 0
    for k in range(int(S[vc.NSLOT])):  # the open orders (slots past NSLOT were never used)
        if BOOK[k, vc.B_STATE] == 0.0:
            continue
        oi = v.BOOK_ORDER[k]
        kind = int(O[oi, O_TAG0]) % NKIND
        g = int(O[oi, O_TAG0]) // NKIND
        if O[oi, O_LIQ] != 0 or (kind != K_ENTRY and kind != K_TP):
            continue
        ref = int(O[oi, O_TAG1])
        if kind == K_ENTRY:
            OPEN[n, OP_TARGET] = T_BY_LEVEL[g, ref] if ref < T_BY_LEVEL.shape[1] else -1
        else:
            OPEN[n, OP_TARGET] = T_BY_LOT[g, ref]
        OPEN[n, OP_SIDE] = O[oi, O_SIDE]
        OPEN[n, OP_PRICE] = O[oi, vc.O_PRICE]
        OPEN[n, OP_QTY] = O[oi, O_QTY]
        OPEN[n, OP_REM] = max(O[oi, O_QTY] - O[oi, O_FILLED], 0.0)
        OPEN[n, OP_PO] = O[oi, vc.O_PO]
        OPEN[n, OP_RO] = O[oi, vc.O_RO]
        OPEN[n, OP_PSIDE] = O[oi, vc.O_PSIDE]
        OPEN[n, OP_AGE] = BOOK[k, vc.B_SEQ]
        OIS[n] = oi
        n += 1
    nkeep, ncancel, nplace = sync_plan(price, OPEN, n, TGT, nt, KEEPER, CANCEL, CDIST, CAGE, PLACE)
    for k in range(ncancel):
        vc.cancel(v, OIS[CANCEL[k]], vc.R_NONE)
    for x in range(nplace):
        t = PLACE[x]
        g = TG[t]
        M[GEN] += 1
        oi = vc.new_order(v, TGT[t, TG_SIDE], TGT[t, TG_PRICE], TGT[t, TG_QTY], TGT[t, TG_PO], TGT[t, TG_RO], TGT[t, TG_PSIDE])
        if oi < 0:
            return -1
        O[oi, O_TAG0] = _tag(TK[t], g)
        O[oi, O_TAG1] = TR[t]
        GENS[oi] = M[GEN]
        out = vc.submit(v, oi, False)
        if out == vc.SUB_FULL:
            return -1
        if out == vc.SUB_REJECTED:
            M[REJECTED] += 1
        elif out == vc.SUB_EXPIRED:
            M[REARMED] += 1
    M[SUBMITTED] += nplace
    M[CANCELED] += ncancel
    for t in range(nt):
        if TK[t] == K_ENTRY:
            T_BY_LEVEL[TG[t], TR[t]] = -1
        else:
            T_BY_LOT[TG[t], TR[t]] = -1
    return nkeep + nplace


@njit(cache=True, nogil=True)
def _relay(v, M, G, MG, L, LOTS, TPAT, KEEPL, LADP, g, noff, nlen):  # pragma: no cover - compiled
    """GridBook.relay of grid ``g`` onto the ladder at ``noff``/``nlen`` (maker_vol_grid.relay_take_profits);
    the lots left without a level are closed at market, nearest top first."""
    off, length = int(MG[G_OFF]), int(MG[G_LEN])
    nrel = relay_take_profits(MG, L, TPAT, LADP, off, length, LADP, noff, nlen, G[G_TP], MG[G_D], KEEPL)
    for k in range(nrel):
        if L[KEEPL[k], L_TP] < 0:
            _submit_close(v, M, MG, L, LOTS, TPAT, g, KEEPL[k], K_CLOSE, False, False)
            if M[BAIL] != 0:
                return
    M[RECOMPUTES] += 1


@loop
def kernel(
    ts,
    op,
    hi,
    lo,
    cl,
    vol,
    llo,
    lhi,
    next_wake,
    lad_at,
    lad_off,
    lad_len,
    lad_first,
    lad_bottom,
    LADP,
    LAD_E,
    LAD_ET,
    LAD_TP,
    fund_bar,
    fund_rate,
    G,
    SB,
    v,
    M,
    MG,
    GENS,
    L,
    LOTS,
    TPAT,
    SQ,
    SM,
    ENT,
    TPF,
    SAT,
    RT,
    SAMP,
    W,
):  # pragma: no cover - compiled
    """The run (see the module docstring): the venue core's bar loop, the strategy's decisions at
    each event and wake-up. Returns an exit code (0 = done). ``W``: the loop's work arrays
    (:func:`work_arrays`; it allocates nothing itself, see :data:`loop`)."""
    ngrid = int(G[G_NGRID])
    S, O, BOOK = v.S, v.O, v.BOOK
    TK, TG, TR, TGT, TP_OUT, ENTRY_OUT, OPEN, OIS, KEEPER, CANCEL, CDIST, CAGE, PLACE, KEEPL, T_BY_LEVEL, T_BY_LOT, RESTORE_OUT = W
    S[vc.NOW] = ts[0]
    S[vc.PRICE] = op[0]
    i = 0
    inside = False
    while True:
        if M[BAIL] != 0:
            return int(M[BAIL])
        alo = M[ALERT_LO] if M[ALERT_ON] != 0 else -np.inf
        ahi = M[ALERT_HI] if M[ALERT_ON] != 0 else np.inf
        code, i, inside = vc.advance(v, ts, op, hi, lo, cl, vol, llo, lhi, fund_bar, fund_rate, i, inside, next_wake[i], alo, ahi)
        if code == vc.ADV_ROOM:
            return BAIL_CAPACITY
        if code == vc.ADV_END:
            break
        _drain(v, M, G, MG, SB, L, LOTS, TPAT, LADP, ENT, TPF, SAT, RT, RESTORE_OUT)
        if M[BAIL] != 0:
            return int(M[BAIL])
        if code == vc.ADV_EVENT:
            continue
        # ---- the bar closed at a wake-up (a wake bar or the alert): MakerVol.on_bar
        if code == vc.ADV_ALERT:
            M[ALERT_ON] = 0
        bar = i
        i += 1
        inside = False
        if not vc.has_room(v, min(len(fund_bar) - int(S[vc.FK]), 4)) or S[vc.NMARK] + 4 * LOTS.shape[1] + 16 >= v.MARKS.shape[0]:
            return BAIL_CAPACITY
        if M[NRETRY] > 0:  # MakerVol._retry_closes, in the order the closes ended
            for _ in range(int(M[NRETRY])):
                lot = -1
                lg = 0
                for g in range(ngrid):
                    for k in range(int(MG[g, G_NLOTS])):
                        c = L[g, LOTS[g, k], L_CLOSING]
                        if c >= 2 and (lot < 0 or c < L[lg, lot, L_CLOSING]):
                            lot = LOTS[g, k]
                            lg = g
                if lot < 0:
                    break
                kind = K_RESTORE if int(L[lg, lot, L_CLOSING]) % 2 == 1 else K_CLOSE
                _submit_close(v, M, MG[lg], L[lg], LOTS[lg], TPAT[lg], lg, lot, kind, True, False)  # or the lot is gone
                if M[BAIL] != 0:
                    return int(M[BAIL])
            M[NRETRY] = 0
        equity = _equity(v)
        if M[HAS_GRID] == 0 or S[vc.NOW] >= M[NEXT_RC]:
            lad = lad_at[bar]
            if lad < 0:
                return BAIL_NO_LADDER
            M[RAISED] = 0
            for g in range(ngrid):
                noff, nlen = lad_off[g, lad], lad_len[g, lad]
                if M[HAS_GRID] != 0:
                    _relay(v, M, G, MG[g], L[g], LOTS[g], TPAT[g], KEEPL, LADP, g, noff, nlen)
                    if M[BAIL] != 0:
                        return int(M[BAIL])
                MG[g, G_OFF], MG[g, G_LEN], MG[g, G_FIRST], MG[g, G_BOTTOM] = noff, nlen, lad_first[g, lad], lad_bottom[g, lad]
                _size(G, MG[g], equity)
            M[LAD] = lad
            M[HAS_GRID] = 1
            M[NEXT_RC] = next_recompute_ms(S[vc.NOW], G[G_RECOMPUTE])
        for g in range(ngrid):
            _fund_position(v, M, MG[g], SB, L[g], LOTS[g], TPAT[g], g, True, RESTORE_OUT)
            if M[BAIL] != 0:
                return int(M[BAIL])
        price = S[vc.PRICE]
        nt = _desired(v, M, G, MG, SB, L, TPAT, SQ, SM, LADP, LAD_E, LAD_ET, LAD_TP, price, TK, TG, TR, TGT, TP_OUT, ENTRY_OUT)
        live = _sync(v, M, nt, TK, TG, TR, TGT, OPEN, OIS, KEEPER, CANCEL, CDIST, CAGE, PLACE, T_BY_LEVEL, T_BY_LOT, GENS, price)
        if live < 0:
            return BAIL_CAPACITY
        _sample(v, M, MG, SB, TPAT, SAMP, live, ngrid, M[OCCUPIED])
        # the engine's pump after on_bar: closes refused or expired go to the retry queue
        _drain(v, M, G, MG, SB, L, LOTS, TPAT, LADP, ENT, TPF, SAT, RT, RESTORE_OUT)
        # -- _set_alert: wake when the price passes the next level toward top (a new level is armed)
        alo = np.nan
        ahi = np.nan
        for g in range(ngrid):
            alo, ahi = arming_band(alo, ahi, arming_price(LADP, int(MG[g, G_OFF]), int(MG[g, G_LEN]), price, MG[g, G_D]), MG[g, G_D])
        if alo != alo and ahi != ahi:
            M[ALERT_ON] = 0
        else:
            M[ALERT_ON] = 1
            M[ALERT_LO] = -np.inf if alo != alo else alo
            M[ALERT_HI] = np.inf if ahi != ahi else ahi
    # ---- on_stop
    # levels_merged_min_notional: the last recompute's ladders, sized to the end (as MakerVol._size does at once)
    M[RAISED] = 0
    for g in range(ngrid):
        _size_to(v, MG[g], SB, LAD_E, SQ[g], SM[g], int(MG[g, G_LEN]))
        M[RAISED] += MG[g, G_MERGED]
    live = 0
    for k in range(BOOK.shape[0]):
        if BOOK[k, vc.B_STATE] != 0.0:
            kind = int(O[v.BOOK_ORDER[k], O_TAG0]) % NKIND
            if (kind == K_ENTRY or kind == K_TP) and O[v.BOOK_ORDER[k], O_LIQ] == 0:
                live += 1
    _sample(v, M, MG, SB, TPAT, SAMP, live, ngrid, -1.0)
    return OK


# --- the Python side: conditions, inputs, and the RunResult -----------------------------------------


def work_arrays(ngrid: int, nlive: int, book_rows: int, levels: int, lots: int, lot_rows: int) -> tuple:
    """The kernel's work arrays for one run: the targets of one sync (kind, grid, ref, and their
    orders as ``sync_plan`` takes them), one grid's desired take-profit and entry levels,
    ``sync_plan``'s input and output (the open orders and each one's row in O, kept, canceled,
    its scratch, placed), the lots ``_relay`` leaves without a level, each grid's entry level -> its
    target and lot -> its take-profit target (-1: none this sync), and the lots a restore closes."""
    size = 2 * ngrid * nlive + 4
    return (
        np.empty(size, dtype=np.int64),
        np.empty(size, dtype=np.int64),
        np.empty(size, dtype=np.int64),
        np.empty((size, NTG)),
        np.empty(nlive, dtype=np.int64),
        np.empty(nlive, dtype=np.int64),
        np.empty((book_rows, NOP)),
        np.empty(book_rows, dtype=np.int64),
        np.empty(size, dtype=np.int64),
        np.empty(book_rows, dtype=np.int64),
        np.empty(book_rows),
        np.empty(book_rows),
        np.empty(size, dtype=np.int64),
        np.empty(max(book_rows, levels), dtype=np.int64),
        np.full((ngrid, levels), -1, dtype=np.int64),
        np.full((ngrid, lot_rows), -1, dtype=np.int64),
        np.empty(lots, dtype=np.int64),
    )


def strategy_reason(strategy, engine) -> str | None:
    """maker_vol's own reason not to run this backtest compiled (None: it can; the broker's check
    comes next, ``Broker.compiled_refusal``).

    The kernel implements: ``strategy.fast`` true; a perpetual; ``side=long`` or ``short`` (a short
    grid is the same loop with the direction flipped), or ``side=both`` in hedge mode
    (``broker.position_mode=hedge``: each grid on its own position); no ``global_stop``; no request
    budget (``max_requests``). The sim adds its own conditions (the ``through`` or ``touch`` fill
    model, no ``max_volume_share``, no risk checks, no plugin observing every order or fill).
    """
    c = strategy.config
    if not c.fast:
        return "strategy.fast=false"
    if not engine.instrument.is_perpetual:
        return "the instrument is not a perpetual"
    if c.side == "both" and getattr(engine.broker, "position_mode", "one_way") != "hedge":
        return "side=both nets both grids into one position (one-way mode): the event path runs it; with broker.position_mode=hedge it is compiled"
    if c.global_stop is not None:
        return "global_stop is set"
    if c.max_requests is not None:
        return "max_requests is set"
    return None


def why_not(strategy, engine) -> str | None:
    """Why this run does not take the compiled path (None: it does): the strategy's reason, else
    the broker's answer to the offer (:meth:`~btc_quant.core.broker.Broker.compiled_refusal`)."""
    return engine.broker.compiled_refusal(engine, strategy.compiled_decisions(engine))


# The RunResult's text and time columns are built as whole arrays (arrow strings, datetime64), not
# one Python object per row: a run has up to about one order per bar. They must come out with the
# dtypes the event path's frames get from Python strings and pd.to_datetime.
_TEXT = pd.Series(["text"]).dtype  # "str" (arrow-backed) in pandas 3, object before
_TIME = pd.to_datetime(np.zeros(1, dtype=np.int64), unit="ms", utc=True).dtype


def _text(values: pa.Array):
    """A column of the strings in ``values`` (nulls are missing), with the dtype pandas gives a
    column of Python strings."""
    if _TEXT == object:  # noqa: E721 - a numpy dtype equals object without being it
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
    """How many digits ``number`` (< 2**63) has in ``base`` (none when the base is 0): compared
    with the powers of the base, no division."""
    if base == 0:
        return 0
    most = 19 if base == 10 else 13  # the digits of 2**63 - 1: its power of the base would not fit
    count = 1
    limit = base
    while number >= limit:
        count += 1
        if count == most:
            break
        limit *= base
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
    sizes = np.empty((n, 2), dtype=np.int64)  # the digits of each row's two numbers
    offsets[0] = 0
    for i in range(n):
        f = form_of_row[i]
        sizes[i, 0] = _digit_count(first[i], bases[f, 0])
        sizes[i, 1] = _digit_count(second[i], bases[f, 1])
        offsets[i + 1] = offsets[i] + bounds[2 * f + 2] - bounds[2 * f] + sizes[i, 0] + sizes[i, 1]
    data = np.empty(offsets[n], dtype=np.uint8)
    for i in range(n):
        f = form_of_row[i]
        at = _copy(data, offsets[i], text, bounds[2 * f], bounds[2 * f + 1])
        at = _put(data, at, first[i], bases[f, 0], sizes[i, 0], digits)
        at = _copy(data, at, text, bounds[2 * f + 1], bounds[2 * f + 2])
        _put(data, at, second[i], bases[f, 1], sizes[i, 1], digits)
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
    """Every ladder set the run will use (one per distinct lookback high and low at a wake bar,
    numbered in order of first use; a set is one ladder per grid: ``strategy.levels_from``),
    flattened for the kernel: ``lad_off[g, s]`` etc. locate grid ``g``'s ladder of set ``s`` in
    the flat price tables."""
    from .maker_vol_grid import ladder_prices

    c = strategy.config
    lookback_ms = int(c.lookback.total_seconds() * 1000)
    n_window = int(c.lookback.total_seconds() // 60) + 1
    ts = np.array(bars.ts, dtype=np.int64)
    at = wake_idx.astype(np.int64)
    # only what the ladders depend on tells sets apart (long: the high; short: the low; the
    # other comes back as zeros), as one complex number (high, low): np.unique of a 1-d array
    # (complex numbers sort by real part, then imaginary) instead of np.unique(axis=0), which
    # sorts rows as structured records
    highs, lows = lookback_range(ts, bars.high, bars.low, at, n_window, lookback_ms, side=c.side)
    key = highs + 1j * lows
    distinct_key, first_use, set_of_wake = np.unique(key, return_index=True, return_inverse=True)
    distinct = np.stack([distinct_key.real, distinct_key.imag], axis=1)
    set_of_wake = np.asarray(set_of_wake).reshape(-1)
    by_first_use = np.argsort(first_use, kind="stable")
    number = np.empty(len(distinct), dtype=np.int64)
    number[by_first_use] = np.arange(len(distinct))
    lad_at = np.full(len(bars), -1, dtype=np.int64)
    lad_at[wake_idx] = number[set_of_wake]
    sets = []
    for high, low in distinct[by_first_use].tolist():
        # the long side reads only the high, the short side only the low (levels_from)
        high, low = (high, high) if c.side == "long" else (low, low) if c.side == "short" else (high, low)
        sets.append(strategy.levels_from(high, low))
    ngrid = 2 if c.side == "both" else 1

    lad_off = np.zeros((ngrid, len(sets)), dtype=np.int64)
    lad_len = np.zeros((ngrid, len(sets)), dtype=np.int64)
    lad_first = np.zeros((ngrid, len(sets)), dtype=np.int64)
    lad_top = np.zeros((ngrid, len(sets)))
    lad_bottom = np.zeros((ngrid, len(sets)))
    raw, dirs, sizes = [], [], []
    at_ = 0
    for s, ladders in enumerate(sets):
        for g, (d, top, bottom) in enumerate(ladders):
            prices = ladder_prices(top, bottom, c.step_pct, d)  # Ladder(top, bottom, c.step_pct, d).prices
            lad_off[g, s], lad_len[g, s] = at_, len(prices)
            lad_first[g, s] = first_entry_level(prices, c.tp_pct, d)  # MakerVol._first_entry
            lad_top[g, s], lad_bottom[g, s] = top, bottom
            at_ += len(prices)
            raw.append(prices)
            dirs.append(d)
            sizes.append(len(prices))

    def flat(parts):
        return np.concatenate(parts) if parts else np.empty(0)

    # rounded once over the flat tables (elementwise: the same as ladder by ladder). MakerVol._size:
    # entries rounded away from the market (entry_prices: long down); OrderSync.targets: buys down,
    # sells up (long entries are buys and take-profits sells; short the other way round)
    LADP = flat(raw)
    direction = np.repeat(np.array(dirs, dtype=np.int64), sizes)
    tick, pdec = inst.tick_size, inst.price_decimals
    LAD_E = prices_on_tick(LADP, direction, tick, pdec)

    return dict(
        ngrid=ngrid,
        directions=[d for d, _, _ in sets[0]] if sets else [],
        lad_at=lad_at,
        lad_off=lad_off,
        lad_len=lad_len,
        lad_first=lad_first,
        lad_top=lad_top,
        lad_bottom=lad_bottom,
        LADP=LADP,
        LAD_E=LAD_E,
        LAD_ET=prices_on_tick(LAD_E, direction, tick, pdec),
        LAD_TP=prices_on_tick(LADP, -direction, tick, pdec),
    )


@njit(cache=True, nogil=True)
def _next_wake(wake_idx, out):  # pragma: no cover - compiled
    """``out[i]``: the first bar of ``wake_idx`` (ascending) at or after bar ``i``, else
    ``len(out) - 1`` (none); one backward pass (numpy's reversed minimum.accumulate took ~12 ns a bar)."""
    n = len(out) - 1
    k = len(wake_idx) - 1
    following = n
    for i in range(n, -1, -1):
        while k >= 0 and wake_idx[k] >= i:
            if wake_idx[k] == i:
                following = i
            k -= 1
        out[i] = following


def run_kernel(strategy, engine, bars):
    """Run ``strategy`` (a MakerVol) over ``bars`` in compiled code, once the broker accepted the
    offer (:meth:`MakerVol.compiled_decisions`); the RunResult, or None when the loop could not
    finish (the caller then runs the event path, which is the reference)."""
    import logging

    log = logging.getLogger(__name__)
    from ..brokers.sim.pairs import bar_arrays

    started = time.perf_counter()
    broker = engine.broker
    broker.load(bars)
    inst = engine.instrument
    c = strategy.config
    n = len(bars)
    arrays = bar_arrays(bars)
    llo, lhi = broker._liq_bounds()  # mark or last (venue.liquidation_bounds)
    llo, lhi = np.require(llo, np.float64, "C"), np.require(lhi, np.float64, "C")
    wake = np.array(strategy.wake_bars(bars), dtype=np.bool_)
    wake_idx = np.flatnonzero(wake)
    next_wake = np.empty(n + 1, dtype=np.int64)  # the first wake bar at or after each bar (n: none)
    _next_wake(wake_idx, next_wake)
    tables = _ladder_tables(strategy, bars, wake_idx, inst)
    fund_bar, fund_rate = broker.funding_arrays()
    G = np.zeros(NPARAM)
    G[G_TP], G[G_ORDER_PCT], G[G_NLIVE] = c.tp_pct, c.order_pct, c.max_live_orders
    G[G_RECOMPUTE] = float(strategy._recompute_ms)
    ngrid = tables["ngrid"]
    G[G_NGRID] = ngrid
    hedge = broker.position_mode == "hedge" if hasattr(broker, "position_mode") else False
    from .maker_vol import DEFAULT_MMR

    SB = bracket_table(inst.margin_brackets, DEFAULT_MMR)  # the strategy's view of the brackets (the instrument's)
    max_len = int(tables["lad_len"].max()) if tables["lad_len"].size else 1
    # open orders: each grid's live entries and take-profits, plus market closes waiting for the
    # next open; the book starts small and doubles with the other arrays when a run needs more
    slots = ngrid * 2 * c.max_live_orders + 32
    capacity = n + 16384
    while True:
        # zeroed=False: the results read the logs only up to their counters (_result)
        v = broker.new_venue(
            log_events=True,
            orders=capacity,
            slots=slots,
            fills=capacity,
            funding=2 * len(fund_bar) + 8,
            events=4 * slots + 8 * c.max_live_orders + 1024,
            marks=2 * capacity + 2 * len(fund_bar) + 64,
            zeroed=False,
        )
        v.P[vc.P_ISOLATED] = 1.0  # MakerVol.on_start: isolated margin
        v.P[vc.P_HEDGE] = 1.0 if hedge else 0.0
        M = np.zeros(NSTATE)
        M[NEXT_RC] = -1
        MG = np.zeros((ngrid, NMG))
        for g, d in enumerate(tables["directions"]):
            MG[g, G_D] = d
            # hedge mode: the long grid on the LONG position (row 0), the short grid on SHORT (row 1)
            MG[g, G_ROW] = (0 if d > 0 else 1) if hedge else 0
            MG[g, G_PSIDE] = (vc.PS_LONG if d > 0 else vc.PS_SHORT) if hedge else vc.PS_BOTH
            MG[g, G_RO] = 0.0 if hedge else 1.0
            MG[g, G_ALONE] = 1.0 if ngrid == 1 else 0.0
        GENS = np.zeros(capacity)
        L = np.empty((ngrid, capacity + 1, NL))
        LOTS = np.zeros((ngrid, max_len + 64), dtype=np.int64)
        TPAT = np.zeros((ngrid, max_len + 1), dtype=np.int64)
        SQ, SM = np.zeros((ngrid, max_len + 1)), np.zeros((ngrid, max_len + 1))
        ENT, TPF = np.empty((capacity, 3)), np.empty((capacity, 2))
        SAT, RT = np.empty((capacity, 7)), np.empty((capacity, 6))
        SAMP = np.empty((capacity, 10))
        W = work_arrays(ngrid, c.max_live_orders, v.BOOK.shape[0], TPAT.shape[1], LOTS.shape[1], L.shape[1])
        kernel_started = time.perf_counter()
        code = kernel(
            *arrays,
            llo,
            lhi,
            next_wake,
            tables["lad_at"],
            tables["lad_off"],
            tables["lad_len"],
            tables["lad_first"],
            tables["lad_bottom"],
            tables["LADP"],
            tables["LAD_E"],
            tables["LAD_ET"],
            tables["LAD_TP"],
            fund_bar,
            fund_rate,
            G,
            SB,
            v,
            M,
            MG,
            GENS,
            L,
            LOTS,
            TPAT,
            SQ,
            SM,
            ENT,
            TPF,
            SAT,
            RT,
            SAMP,
            W,
        )
        kernel_s = time.perf_counter() - kernel_started
        if code == BAIL_CAPACITY and capacity < 16 * n + 65536:
            capacity *= 2
            slots *= 2
            continue
        break
    if code != OK:
        log.info("maker_vol: compiled path stopped (%s); running the event path", BAIL_REASONS.get(code, code))
        return None
    engine.start()  # on_start (isolated margin on the broker) and the run-start hooks, as the event path
    broker.venue = v  # the run's account: funding payments, liquidation marks
    k = dict(
        M=M,
        MG=MG,
        v=v,
        GENS=GENS,
        L=L,
        LOTS=LOTS,
        TPAT=TPAT,
        ENT=ENT[: int(M[NENTRY])],
        TPF=TPF[: int(M[NTP])],
        SAT=SAT[: int(M[NSAT])],
        RT=RT[: int(M[NRT])],
        SAMP=SAMP[: int(M[NSAMP])],
        tables=tables,
    )
    result = _result(strategy, engine, broker, bars, k)
    result.elapsed_s = time.perf_counter() - started
    result.compiled_kernel_s = kernel_s  # the compiled loop alone (the rest builds the RunResult)
    engine.plugins.call_optional("quant_on_run_end", result=result)
    return result


def _kinds(O) -> tuple[np.ndarray, np.ndarray]:
    """Each order's kind (``K_*``: its tag, or K_LIQ for the venue's liquidation orders) and grid."""
    tag = O[:, O_TAG0].astype(np.int64)
    return np.where(O[:, O_LIQ] != 0, K_LIQ, tag % NKIND), np.where(O[:, O_LIQ] != 0, 0, tag // NKIND)


def _client_ids(strategy, engine, O, GENS, directions) -> tuple[pa.Array, pa.Array]:
    """The client id and the tag of every order (in order of creation), as the event path gives them."""
    kind, grid = _kinds(O)
    ref = np.where(kind == K_LIQ, O[:, vc.O_REF], O[:, O_TAG1]).astype(np.int64)
    closes = np.flatnonzero((kind == K_CLOSE) | (kind == K_RESTORE))
    prefix, first = engine.take_client_ids(len(closes))  # in creation order, as the engine hands them out
    generation = GENS[: len(O)].astype(np.int64)
    generation[kind > K_TP] = 0  # unused: closes and liquidations have one number
    number = ref.copy()
    number[closes] = np.arange(first, first + len(closes))
    # by grid, by kind (K_ENTRY, K_TP, K_CLOSE, K_LIQ, K_RESTORE); entries and take-profits:
    # OrderSync's f"{prefix}{key}.{base36(generation)}"
    sync = strategy.sync.prefix
    id_forms, tag_forms = [], []
    for d in directions or [1]:
        e, t = ("b", "t") if d > 0 else ("s", "u")  # the grid's entry and take-profit keys
        id_forms += [(f"{sync}{e}", 10, ".", 36), (f"{sync}{t}", 10, ".", 36), (f"{prefix}-", 10), ("liquidation-", 10), (f"{prefix}-", 10)]
        tag_forms += [(e, 10), (t, 10), ("saturation:", 10), ("liquidation", 0), ("restore:", 10)]
    form = kind + 5 * grid
    return numbered_text(id_forms, form, number, generation), numbered_text(tag_forms, form, ref)


def _reasons(v, O):
    """The ``reason`` column: why each order was refused, missing for the others (the event path's
    None; a column of None alone stays an object column). Texts: :func:`venue.reason_text`."""
    refused = np.flatnonzero(O[:, O_REASON] != vc.R_NONE)
    if len(refused) == 0:
        return np.full(len(O), None, dtype=object)
    texts = [vc.reason_text(v, oi) for oi in refused.tolist()]
    at = np.full(len(O), -1, dtype=np.int64)
    at[refused] = np.arange(len(refused))
    return _text(pa.array(texts, type=pa.large_string()).take(pa.array(at, mask=at < 0)))


def _result(strategy, engine, broker, bars, k):
    from btc_quant.core.metrics import FillColumns, columns_frame, count_trades, fills_frame, orders_frame
    from btc_quant.core.results import assemble_result

    v = k["v"]
    O, FL = v.O[: int(v.S[vc.NORD])], v.FL[: int(v.S[vc.NFILL])]
    ids, tags = _client_ids(strategy, engine, O, k["GENS"], k["tables"]["directions"])
    side = _labels(["sell", "buy"], O[:, O_SIDE] > 0)
    orders = columns_frame(  # each column already has the dtype pd.DataFrame would give it
        {
            "client_id": _text(ids),
            "side": _text(side),
            "type": _text(_labels(["limit", "market"], np.isnan(O[:, vc.O_PRICE]))),
            "price": O[:, vc.O_PRICE],
            "quantity": O[:, O_QTY],
            "filled_qty": O[:, O_FILLED],
            "avg_fill_price": O[:, vc.O_AVG],
            "post_only": O[:, vc.O_PO] != 0,
            "reduce_only": O[:, vc.O_RO] != 0,
            "status": _text(_labels(list(vc.STATUS_NAMES), O[:, O_STATUS])),
            "reason": _reasons(v, O),
            "created": _times(O[:, vc.O_CREATED]),
            "updated": _times(O[:, vc.O_UPDATED]),
            "tag": _text(tags),
        }
    )
    fo = FL[:, F_ORDER].astype(np.int64)
    fbar = FL[:, vc.F_BAR].astype(np.int64)
    fills = columns_frame(
        {
            "ts": _times(np.asarray(bars.ts, dtype=np.int64)[fbar]),
            "trade_id": _text(numbered_text([("sim-", 10)], np.zeros(len(FL), dtype=np.int64), FL[:, vc.F_SEQ])),
            "client_id": _text(ids.take(fo)),
            "side": _text(side.take(fo)),
            "price": FL[:, F_PRICE],
            "quantity": FL[:, F_QTY],
            "fee": FL[:, F_FEE],
            "is_maker": FL[:, vc.F_MAKER] != 0,
            "is_liquidation": FL[:, vc.F_LIQ] != 0,
            "tag": _text(tags.take(fo)),
            "bar": fbar,
        }
    )
    # the columns the result builders read, from the arrays the frame was built of
    columns = FillColumns.of(
        buy=O[fo, O_SIDE] > 0, price=FL[:, F_PRICE], quantity=FL[:, F_QTY], fee=FL[:, F_FEE], liquidation=FL[:, vc.F_LIQ] != 0, bar=fbar
    )
    if len(fills) == 0:  # the engine's builders give these their dtypes
        fills = fills_frame([], np.empty(0, dtype=np.int64))
        columns = None
    if len(orders) == 0:
        orders = orders_frame({})
    # the one result builder (position, trades, metrics, liquidation distance), as every path;
    # the per-bar liquidation lines are the venue's marks (broker.venue is the run's)
    result = assemble_result(
        engine.info,
        bars,
        vc.equity_curve(v, bars.close, float(broker.config.initial_cash)),
        fills,
        orders,
        initial_equity=float(broker.config.initial_cash),
        funding=broker.funding_payments(),
        rejections=int(v.S[vc.NREJ]),
        compiled=True,
        fill_columns=columns,
        **broker.bar_series(),
    )
    k["last_close"] = float(bars.close[-1])
    _restore_strategy(strategy, engine, k, fills)
    result.diagnostics = strategy.diagnostics()
    count_trades(result, strategy)
    return result


def _restore_strategy(strategy, engine, k, fills):
    """Leave the strategy object as the event path would: its book, counters and diagnostics."""
    from btc_quant.core.metrics import columns_frame

    from .maker_vol import Grid
    from .maker_vol_grid import GridBook, Ladder, Lot

    S, L, MG = k["M"], k["L"], k["MG"]
    c = strategy.config
    tables = k["tables"]
    lad = int(S[LAD])
    grids = []
    for g, d in enumerate(tables["directions"]):
        ladder = Ladder(float(tables["lad_top"][g, lad]), float(tables["lad_bottom"][g, lad]), c.step_pct, d)
        book = GridBook(ladder, c.tp_pct)  # the kernel's arrays of this grid are the book's state
        book.L = L[g, : int(MG[g, G_NEXTLOT]) + 1].copy()
        book.open_ids = k["LOTS"][g].copy()
        book.totals = MG[g, :NB].copy()
        book.tp_lots[:] = k["TPAT"][g, : len(book.tp_lots)]
        book.lots = {lot_id: Lot(book, lot_id) for lot_id in book.open_ids[: int(MG[g, G_NLOTS])].tolist()}
        grids.append(Grid(d, "b", "t", book) if d > 0 else Grid(d, "s", "u", book))
    strategy.grids = grids
    strategy._margin_calls = True
    strategy._armed = int(S[ARMED])
    strategy._paused = bool(S[PAUSED])
    strategy._next_recompute = int(S[NEXT_RC])
    ENT, TPF = k["ENT"], k["TPF"]
    strategy.entry_fills = _level_counts(ENT[:, 1], ENT[:, 2])
    strategy.tp_fills = _level_counts(TPF[:, 0], TPF[:, 1])
    strategy.entry_log = columns_frame({"ts_ms": ENT[:, 0].astype(np.int64), "direction": ENT[:, 2].astype(np.int64), "price": ENT[:, 1]})
    SAT = k["SAT"]
    strategy.saturations = columns_frame(
        {
            "ts_ms": SAT[:, 0].astype(np.int64),
            "entry": SAT[:, 1],
            "take_profit": SAT[:, 2],
            "exit": SAT[:, 3],
            "quantity": SAT[:, 4],
            "pnl": SAT[:, 5],
            "fee": SAT[:, 6],
        }
    )
    RT = k["RT"]
    strategy.round_trips = columns_frame(
        {
            "ts_ms": RT[:, 0].astype(np.int64),
            "direction": RT[:, 5].astype(np.int64),
            "entry": RT[:, 1],
            "exit": RT[:, 2],
            "quantity": RT[:, 3],
            "gross": RT[:, 4],
        }
    )
    SAMP = k["SAMP"]
    strategy.samples = columns_frame(
        {
            "ts_ms": SAMP[:, 0].astype(np.int64),
            "price": SAMP[:, 1],
            "liquidation_price": SAMP[:, 2],
            "broker_liquidation_price": SAMP[:, 3],
            "distance_to_liquidation": SAMP[:, 4],
            "tp_levels_occupied": SAMP[:, 5].astype(np.int64),
            "levels": SAMP[:, 6].astype(np.int64),
            "live_orders": SAMP[:, 7].astype(np.int64),
            "virtual_orders": SAMP[:, 8].astype(np.int64),
            "equity": SAMP[:, 9],
        }
    )
    counts = Counter()
    for key, idx in (
        ("saturations", SATS),
        ("liquidations", LIQS),
        ("cash_pauses", CASH_PAUSES),
        ("liq_line_breaches", BRK_VIOL),
        ("liq_line_restores", RESTORES),
        ("liq_line_restore_closes", RESTORE_CLOSES),
        ("liquidations_above_bottom", LIQ_ABOVE),
        ("recomputes", RECOMPUTES),
        ("margin_call_refused", MREFUSED),
        ("margin_added", MADDED),
        ("entries_beyond_bottom", BEYOND),
        ("closes_retried", CLOSES_RETRIED),
        ("lots_gone", LOTS_GONE),
    ):
        if S[idx]:
            counts[key] = int(S[idx])
    counts["levels_merged_min_notional"] = int(S[RAISED])
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
    if S[RESTORE_CLOSES]:
        pnl["restore_pnl"] = float(S[RESTORE_PNL])
    pnl["funding"] = 0.0 - float(k["v"].POS[0, vc.Q_FUNDING] + k["v"].POS[1, vc.Q_FUNDING])
    price = k["last_close"]  # MakerVol.on_stop: at the last bar's close
    pnl["unrealised"] = sum(g.direction * (price - lot.entry) * lot.quantity for g in grids for lot in g.book.lots.values())
    strategy.pnl = pnl
    stats = strategy.sync.stats
    stats.submitted, stats.canceled, stats.rejected = int(S[SUBMITTED]), int(S[CANCELED]), int(S[REJECTED])
    stats.rearmed, stats.fills, stats.syncs = int(S[REARMED]), int(S[SYNC_FILLS]), int(S[NSAMP]) - 1


def _level_counts(prices: np.ndarray, directions: np.ndarray) -> Counter:
    """Counter of (direction, round(price, 1)), built from the distinct (direction, price) pairs."""
    counts: Counter = Counter()
    for d in np.unique(directions).tolist():  # per direction, ascending: a 1-d unique of its prices
        values, times = np.unique(prices[directions == d], return_counts=True)
        for value, count in zip(values.tolist(), times.tolist()):
            counts[(int(d), round(value, 1))] += count
    return counts

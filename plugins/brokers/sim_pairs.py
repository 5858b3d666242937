"""The ``sim`` broker's compiled backtest of a :class:`~btc_quant.sdk.pairs.PairGrid`.

A pair grid asks nothing of Python between fills: each fill of a leg places the pair's other leg.
So the whole run -- the sim's bar skipping, its five-point intrabar path, matching by the fill
model, the strategy re-arming legs, fees, the margin check of new orders, isolated or cross
margin, Binance's liquidation price and the liquidation, funding -- runs here in one numba loop
that repeats :class:`~btc_quant.plugins.brokers.sim.SimBroker`'s rules step for step (the same
arithmetic in the same order, so the same floats), and :func:`run_pairs` builds the same
:class:`~btc_quant.core.engine.RunResult` the event path builds (fills, orders with their client
ids, equity, trades, metrics, funding, liquidation marks).

It applies when the strategy asks for nothing else (:meth:`PairGrid.why_not`) and the broker has
no volume cap (:func:`why_not`). A case the loop does not implement -- a leg that is not post-only
crossing the price on arrival (a taker fill inside the loop) -- stops it, and the event path runs.
``tests/test_sim_pairs.py`` checks fill-for-fill equality with the event path.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
from numba import njit

from .sim_path import fill_bar_path, first_event_bar, liquidation_price, next_resting_fill, position_after_fill, resting_bounds

log = logging.getLogger(__name__)
EPS = 1e-12

# --- state S --------------------------------------------------------------------------------------
WALLET, PQ, PE, ISO, PRICE, NOW, BAR, TRADE_SEQ, NORD, NFILL, SEQ, LIQ, NLIQ, INSUR, FK, NFUND, NOPEN, NREJ = range(18)
NSTATE = 18
# --- parameters P ---------------------------------------------------------------------------------
P_MAKER, P_TAKER, P_LIQFEE, P_LOT, P_STRICT, P_PATHDIR, P_CHECK, P_PERP, P_ISOLATED, P_LEV = range(10)
NPARAM = 10
# --- orders O -------------------------------------------------------------------------------------
O_PAIR, O_LEG, O_SIDE, O_PRICE, O_QTY, O_FILLED, O_AVG, O_STATUS, O_REASON, O_NEED, O_FREE, O_CREATED, O_UPDATED, O_PO, O_REF, O_RO = range(16)
NO = 16
LEG_ENTRY, LEG_TP, LEG_LIQ = 0, 1, 2
ST_NEW, ST_FILLED, ST_CANCELED, ST_REJECTED, ST_EXPIRED = 0, 1, 2, 3, 4
STATUS_NAMES = np.array(["new", "filled", "canceled", "rejected", "expired"], dtype=object)
R_NONE, R_MARGIN, R_SPOT, R_CROSS, R_LIQ, R_REDUCE, R_RO_GONE = 0, 1, 2, 3, 4, 5, 6
# --- fills F --------------------------------------------------------------------------------------
F_ORDER, F_PRICE, F_QTY, F_FEE, F_BAR, F_MAKER, F_LIQ, F_SEQ = range(8)
NF = 8
# --- exit codes -----------------------------------------------------------------------------------
OK, BAIL_TAKER, BAIL_CAPACITY = 0, 1, 2
BAIL_REASONS = {BAIL_TAKER: "a leg that is not post-only crossed the price on arrival (a taker fill)", BAIL_CAPACITY: "capacity"}


def why_not(broker) -> str | None:
    """Why the ``sim`` broker cannot run a pair grid in compiled code (None: it can): it needs no
    volume cap (``broker.max_volume_share``: partial fills)."""
    if broker.config.max_volume_share is not None:
        return "broker.max_volume_share (partial fills) is set"
    return None


# --- compiled pieces (each mirrors the SimBroker method named in its docstring) --------------------
@njit(cache=True, nogil=True)
def _changed(S, P, BB, LIQM, HASM):  # pragma: no cover - compiled
    """SimBroker._changed: the liquidation price after an event, marked on the bar."""
    liq = np.nan
    if P[P_PERP] != 0 and abs(S[PQ]) >= 1e-12:
        liq = liquidation_price(S[PQ], S[PE], S[ISO] if P[P_ISOLATED] != 0 else S[WALLET], BB)
    S[LIQ] = liq
    b = int(S[BAR])
    LIQM[b] = liq
    HASM[b] = True


@njit(cache=True, nogil=True)
def _available(S, P, held):  # pragma: no cover - compiled
    """SimBroker._available (no order left out)."""
    price = S[PRICE]
    q = S[PQ]
    lev = P[P_LEV]
    if P[P_ISOLATED] != 0:
        free = S[WALLET] - S[ISO]
    else:
        free = S[WALLET] + q * (price - S[PE]) - abs(q) * price / lev
    buys = held[0] + held[2] * price
    sells = held[1] + held[3] * price
    pos_value = abs(q) * price
    if q > 0:
        sells = max(0.0, sells - pos_value)
    elif q < 0:
        buys = max(0.0, buys - pos_value)
    return free - max(buys, sells) / lev


@njit(cache=True, nogil=True)
def _rest(S, O, rows, slot_order, held, oi, slot):  # pragma: no cover - compiled
    """SimBroker._rest: at the back of the queue, holding margin."""
    S[SEQ] += 1.0
    price = O[oi, O_PRICE]
    rows[slot, 0] = price
    rows[slot, 1] = O[oi, O_SIDE]
    rows[slot, 2] = 1.0
    rows[slot, 3] = S[SEQ]
    slot_order[slot] = oi
    S[NOPEN] += 1
    if O[oi, O_RO] != 0:  # SimBroker._hold: reduce-only orders hold no margin
        return
    side = 0 if O[oi, O_SIDE] > 0 else 1
    remaining = max(O[oi, O_QTY] - O[oi, O_FILLED], 0.0)
    if price != price:
        held[2 + side] += 1.0 * remaining
    else:
        held[side] += 1.0 * remaining * price


@njit(cache=True, nogil=True)
def _unrest(S, O, rows, slot_order, held, slot):  # pragma: no cover - compiled
    """SimBroker._unrest (the order as it rested: its remaining quantity before the fill)."""
    oi = slot_order[slot]
    rows[slot, 2] = 0.0
    slot_order[slot] = -1
    S[NOPEN] -= 1
    if S[NOPEN] > 0:
        if O[oi, O_RO] != 0:
            return
        side = 0 if O[oi, O_SIDE] > 0 else 1
        remaining = max(O[oi, O_QTY] - O[oi, O_FILLED], 0.0)
        price = O[oi, O_PRICE]
        if price != price:
            held[2 + side] += -1.0 * remaining
        else:
            held[side] += -1.0 * remaining * price
    else:
        held[:] = 0.0


@njit(cache=True, nogil=True)
def _new_order(S, O, pair, leg, side, price, qty, po):  # pragma: no cover - compiled
    oi = int(S[NORD])
    if oi >= O.shape[0]:
        return -1
    S[NORD] = oi + 1
    O[oi, O_PAIR] = pair
    O[oi, O_LEG] = leg
    O[oi, O_SIDE] = side
    O[oi, O_PRICE] = price
    O[oi, O_QTY] = qty
    O[oi, O_FILLED] = 0.0
    O[oi, O_AVG] = 0.0
    O[oi, O_STATUS] = ST_NEW
    O[oi, O_REASON] = R_NONE
    O[oi, O_NEED] = 0.0
    O[oi, O_FREE] = 0.0
    O[oi, O_CREATED] = S[NOW]
    O[oi, O_UPDATED] = S[NOW]
    O[oi, O_PO] = po
    O[oi, O_REF] = 0.0
    O[oi, O_RO] = 0.0
    return oi


@njit(cache=True, nogil=True)
def _submit(S, P, O, rows, slot_order, held, LS, LQ, LE, LT, LPO, k, leg):  # pragma: no cover - compiled
    """PairGrid._place + Engine.submit + SimBroker.submit for pair ``k``'s ``leg``: OK or a bail code."""
    side = LS[k] if leg == LEG_ENTRY else -LS[k]
    price = LE[k] if leg == LEG_ENTRY else LT[k]
    qty = LQ[k]
    oi = _new_order(S, O, k, leg, side, price, qty, LPO[k])
    if oi < 0:
        return BAIL_CAPACITY
    buy = side > 0
    if P[P_CHECK] != 0:  # SimBroker._refusal (legs are never reduce-only)
        pos = S[PQ]
        against = abs(pos) if ((pos > 0) != buy and abs(pos) > EPS) else 0.0
        opening = max(qty - against, 0.0)
        if opening > EPS:
            if P[P_PERP] == 0 and not buy:
                O[oi, O_STATUS] = ST_REJECTED
                O[oi, O_REASON] = R_SPOT
                O[oi, O_NEED] = qty
                O[oi, O_FREE] = max(pos, 0.0)
                S[NREJ] += 1
                return OK
            need = opening * price / P[P_LEV]
            free = _available(S, P, held)
            if need > free + 1e-9:
                O[oi, O_STATUS] = ST_REJECTED
                O[oi, O_REASON] = R_MARGIN
                O[oi, O_NEED] = need
                O[oi, O_FREE] = free
                S[NREJ] += 1
                return OK
    crosses = price >= S[PRICE] if buy else price <= S[PRICE]
    if crosses:
        if LPO[k] != 0:  # Binance GTX: expires without trading
            O[oi, O_STATUS] = ST_EXPIRED
            O[oi, O_REASON] = R_CROSS
            O[oi, O_NEED] = S[PRICE]
            return OK
        return BAIL_TAKER
    _rest(S, O, rows, slot_order, held, oi, k)
    return OK


@njit(cache=True, nogil=True)
def _fill(S, P, BB, O, FL, rows, slot_order, held, CASH, QTYD, LIQM, HASM, ts, slot, price, maker, liquidation):  # pragma: no cover - compiled
    """SimBroker._fill of a whole order (no volume cap, no reduce-only): False when out of room."""
    oi = slot_order[slot]
    bar = int(S[BAR])
    isolated = P[P_ISOLATED] != 0
    side = O[oi, O_SIDE]
    qty = max(O[oi, O_QTY] - O[oi, O_FILLED], 0.0)
    notional = qty * price
    before = S[PQ]
    closing = 0.0
    if abs(before) > EPS and (before > 0) != (side > 0):
        closing = min(qty, abs(before))
    left = 0.0
    if liquidation:
        realized = closing * (price - S[PE]) * (1.0 if before > 0 else -1.0)
        left = (S[ISO] if isolated else S[WALLET]) + realized
        fee = min(notional * P[P_LIQFEE], max(left, 0.0))
    else:
        fee = notional * (P[P_MAKER] if maker else P[P_TAKER])
    S[TRADE_SEQ] += 1
    fi = int(S[NFILL])
    if fi >= FL.shape[0]:
        return False
    S[NFILL] = fi + 1
    FL[fi, F_ORDER] = oi
    FL[fi, F_PRICE] = price
    FL[fi, F_QTY] = qty
    FL[fi, F_FEE] = fee
    FL[fi, F_BAR] = bar
    FL[fi, F_MAKER] = 1.0 if maker else 0.0
    FL[fi, F_LIQ] = 1.0 if liquidation else 0.0
    FL[fi, F_SEQ] = S[TRADE_SEQ]
    if isolated:
        if closing > 0:
            S[ISO] -= S[ISO] * closing / abs(before)
        S[ISO] += (qty - closing) * price / P[P_LEV]
    # Account.apply -> Position.apply
    sq = side * qty
    S[PQ], S[PE], realized = position_after_fill(S[PQ], S[PE], sq, price)
    S[WALLET] += realized - fee
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
    # without a volume cap or a reduce-only cut every fill completes its order
    _unrest(S, O, rows, slot_order, held, slot)
    O[oi, O_FILLED] = O[oi, O_QTY]
    O[oi, O_STATUS] = ST_FILLED
    _changed(S, P, BB, LIQM, HASM)
    return True


@njit(cache=True, nogil=True)
def _liquidate(S, P, BB, O, FL, rows, slot_order, held, CASH, QTYD, LIQM, HASM, ts, price):  # pragma: no cover - compiled
    """SimBroker._liquidate: cancel every open order, close the position at ``price``."""
    size = rows.shape[0]
    for slot in range(size):
        if slot_order[slot] >= 0:
            oi = slot_order[slot]
            O[oi, O_STATUS] = ST_CANCELED
            O[oi, O_REASON] = R_LIQ
            O[oi, O_UPDATED] = S[NOW]
            _unrest(S, O, rows, slot_order, held, slot)
    S[TRADE_SEQ] += 1
    side = -1.0 if S[PQ] > 0 else 1.0
    oi = _new_order(S, O, -1, LEG_LIQ, side, np.nan, abs(S[PQ]), 0.0)
    if oi < 0:
        return False
    O[oi, O_REF] = S[TRADE_SEQ]
    liq_slot = size - 1
    _rest(S, O, rows, slot_order, held, oi, liq_slot)
    S[NLIQ] += 1
    return _fill(S, P, BB, O, FL, rows, slot_order, held, CASH, QTYD, LIQM, HASM, ts, liq_slot, price, False, True)


@njit(cache=True, nogil=True)
def _fund(S, P, BB, op, fund_bar, fund_rate, CASH, LIQM, HASM, FUNDR, bar):  # pragma: no cover - compiled
    """SimBroker._fund: the payments due at ``bar``'s open (Binance: nominal value x funding rate)."""
    while S[FK] < len(fund_bar) and fund_bar[int(S[FK])] <= bar:
        fk = int(S[FK])
        rate = fund_rate[fk]
        S[FK] += 1
        qty = S[PQ]
        if abs(qty) < EPS:
            continue
        mark = op[bar]
        amount = qty * mark * rate
        S[WALLET] -= amount
        if P[P_ISOLATED] != 0:
            S[ISO] -= amount
        CASH[bar] += -amount
        r = int(S[NFUND])
        S[NFUND] = r + 1
        FUNDR[r, 0] = fk
        FUNDR[r, 1] = bar
        FUNDR[r, 2] = mark
        FUNDR[r, 3] = qty
        FUNDR[r, 4] = amount
        _changed(S, P, BB, LIQM, HASM)


@njit(cache=True, nogil=True)
def _quiet(S, P, rows, low, high):  # pragma: no cover - compiled
    """SimBroker._quiet: can nothing happen between ``low`` and ``high``?"""
    liq = S[LIQ]
    if liq == liq and (liq >= low if S[PQ] > 0 else liq <= high):
        return False
    if S[NOPEN] == 0:
        return True
    buy_max, sell_min, market = resting_bounds(rows, rows.shape[0])
    if market:
        return False
    if P[P_STRICT] != 0:
        return not (low < buy_max or high > sell_min)
    return not (low <= buy_max or high >= sell_min)


@njit(cache=True, nogil=True)
def pair_kernel(ts, op, hi, lo, cl, fund_bar, fund_rate, LS, LQ, LE, LT, LPO, P, BB, S, O, FL, rows, slot_order, held,
                CASH, QTYD, LIQM, HASM, FUNDR):  # pragma: no cover - compiled
    """The run: ``Engine.run_backtest`` with ``SimBroker.advance`` and ``PairGrid``; an exit code."""
    n = len(op)
    npairs = len(LQ)
    strict = P[P_STRICT] != 0
    path = np.empty(5)
    S[NOW] = ts[0]
    S[PRICE] = op[0]
    S[LIQ] = np.nan
    for k in range(npairs):  # on_start
        code = _submit(S, P, O, rows, slot_order, held, LS, LQ, LE, LT, LPO, k, LEG_ENTRY)
        if code != OK:
            return code
    i = 0
    size = rows.shape[0]
    while i < n:
        # SimBroker._skip (no wake bars, no alert, no taker waiting)
        stop = n
        if abs(S[PQ]) >= 1e-12 and S[FK] < len(fund_bar):
            stop = min(stop, fund_bar[int(S[FK])])
        j = i
        if stop > i:
            buy_max, sell_min, market = -np.inf, np.inf, False
            if S[NOPEN] > 0:
                buy_max, sell_min, market = resting_bounds(rows, size)
            if not market:
                liq = S[LIQ]
                liq_long = liq if liq == liq and S[PQ] > 0 else -np.inf
                liq_short = liq if liq == liq and S[PQ] < 0 else np.inf
                j = first_event_bar(lo, hi, i, stop, buy_max, sell_min, strict, liq_long, liq_short, -np.inf, np.inf)
        if j >= n:
            break
        i = j
        S[BAR] = i
        prev = cl[i - 1] if i > 0 else op[i]
        o, h, low, c = op[i], hi[i], lo[i], cl[i]
        fill_bar_path(path, prev, o, h, low, c, P[P_PATHDIR] == 0)
        S[NOW] = ts[i]
        S[PRICE] = prev
        seg = 0
        look = False
        while seg < 4:  # SimBroker._walk, re-entered after every event
            if look:
                look = False
                if _quiet(S, P, rows, low, h):
                    break
            a = S[PRICE]
            b = path[seg + 1]
            kind = 0
            at = 0.0
            slot = -1
            if size:
                slot, at = next_resting_fill(rows, size, a, b, strict, EPS)
                if slot >= 0:
                    kind = 1
            liq = S[LIQ]
            if liq == liq:
                if S[PQ] > 0:
                    if b < a and b <= liq and liq <= a + EPS and (kind == 0 or abs(liq - a) < abs(at - a)):
                        kind = 2
                        at = liq
                elif b > a and a - EPS <= liq and liq <= b and (kind == 0 or abs(liq - a) < abs(at - a)):
                    kind = 2
                    at = liq
            if kind != 0:
                if seg == 0:  # the gap between bars: trade inside the new bar's range
                    at = min(max(at, low), h)
                S[PRICE] = at
                if kind == 2:
                    if not _liquidate(S, P, BB, O, FL, rows, slot_order, held, CASH, QTYD, LIQM, HASM, ts, at):
                        return BAIL_CAPACITY
                else:
                    oi = slot_order[slot]
                    if not _fill(S, P, BB, O, FL, rows, slot_order, held, CASH, QTYD, LIQM, HASM, ts, slot, at, True, False):
                        return BAIL_CAPACITY
                    # PairGrid.on_fill: the other leg of the pair
                    k = int(O[oi, O_PAIR])
                    other = LEG_TP if O[oi, O_LEG] == LEG_ENTRY else LEG_ENTRY
                    code = _submit(S, P, O, rows, slot_order, held, LS, LQ, LE, LT, LPO, k, other)
                    if code != OK:
                        return code
                look = seg >= 1
                continue
            seg += 1
            if seg < 4:
                S[PRICE] = path[seg]
            if seg == 1:
                _fund(S, P, BB, op, fund_bar, fund_rate, CASH, LIQM, HASM, FUNDR, i)
                look = True
        S[PRICE] = c
        i += 1
    return OK


# --- the Python side -----------------------------------------------------------------------------------
def run_pairs(broker, engine, bars, strategy):
    """Run ``strategy`` (a PairGrid) over ``bars`` in :func:`pair_kernel`; the RunResult, or None
    when the loop does not apply or met a case it does not implement (the event path then runs)."""
    from btc_quant.sdk.pairs import pair_legs

    reason = why_not(broker)
    if reason is not None:
        log.info("%s: event path (%s)", engine.info.strategy, reason)
        return None
    started = time.perf_counter()
    broker.load(bars)
    legs = pair_legs(list(strategy.pairs(engine.ctx)), engine.instrument)
    inst = engine.instrument
    cfg = broker.config
    n = len(bars)
    ts = np.ascontiguousarray(bars.ts, dtype=np.int64)
    op, hi, lo, cl = (np.ascontiguousarray(getattr(bars, k), dtype=np.float64) for k in ("open", "high", "low", "close"))
    # writable C arrays only: a read-only or strided array is another numba type (another compile)
    fund_bar = np.array(broker._fund_bar, dtype=np.int64)
    fund_rate = np.array(broker._fund_rate, dtype=np.float64)
    P = np.zeros(NPARAM)
    P[P_MAKER], P[P_TAKER], P[P_LIQFEE], P[P_LOT] = inst.maker_fee, inst.taker_fee, cfg.liquidation_fee_rate, inst.lot_size
    P[P_STRICT] = 1.0 if broker.fill_model.strict else 0.0
    P[P_PATHDIR] = 1.0 if cfg.path == "direction" else 0.0
    P[P_CHECK] = 1.0 if cfg.check_margin else 0.0
    P[P_PERP] = 1.0 if broker.perpetual else 0.0
    P[P_ISOLATED] = 1.0 if broker.mode == "isolated" else 0.0
    P[P_LEV] = broker.leverage
    BB = np.array([(b.notional_floor, b.notional_cap, b.maintenance_rate, b.maintenance_amount) for b in broker.brackets], dtype=np.float64)
    LS, LQ, LE, LT = (np.array(a, dtype=np.float64) for a in (legs.side, legs.quantity, legs.entry_price, legs.take_profit_price))
    LPO = legs.post_only.astype(np.float64)
    capacity = max(1024, n // 8)
    while True:
        S = np.zeros(NSTATE)
        S[WALLET] = cfg.initial_cash
        O = np.zeros((capacity + len(legs) + 16, NO))
        FL = np.zeros((capacity, NF))
        rows = np.zeros((len(legs) + 1, 4))  # pair k's open leg rests in slot k; the last is the liquidation's
        slot_order = np.full(len(legs) + 1, -1, dtype=np.int64)
        held = np.zeros(4)
        CASH, QTYD = np.zeros(n), np.zeros(n)
        LIQM, HASM = np.full(n, np.nan), np.zeros(n, dtype=np.bool_)
        FUNDR = np.zeros((len(fund_bar) + 1, 5))
        kernel_started = time.perf_counter()
        code = pair_kernel(ts, op, hi, lo, cl, fund_bar, fund_rate, LS, LQ, LE, LT, LPO, P, BB, S, O, FL, rows, slot_order, held,
                           CASH, QTYD, LIQM, HASM, FUNDR)
        kernel_s = time.perf_counter() - kernel_started
        if code != BAIL_CAPACITY:
            break
        capacity *= 4
    if code != OK:
        log.info("%s: compiled pair loop stopped (%s); running the event path", engine.info.strategy, BAIL_REASONS[code])
        return None
    broker.start()
    engine.plugins.call_optional("quant_on_run_start", run=engine.info)
    broker.stop()
    O, FL = O[: int(S[NORD])], FL[: int(S[NFILL])]
    result = build_result(engine, broker, bars, S, O, FL, CASH, QTYD, LIQM, HASM, FUNDR[: int(S[NFUND])], pair_tags(legs, O))
    strategy.legs = legs
    open_ = np.flatnonzero((O[:, O_STATUS] == ST_NEW) & (O[:, O_LEG] != LEG_LIQ))
    ids = result.orders["client_id"].to_numpy()
    strategy._leg_of = {ids[oi]: (int(O[oi, O_PAIR]), O[oi, O_LEG] == LEG_TP) for oi in open_.tolist()}
    result.extra["diagnostics"] = strategy.diagnostics()
    result.extra["compiled"] = True
    result.extra["compiled_kernel_s"] = kernel_s  # the compiled loop alone (the rest builds the RunResult)
    result.elapsed_s = time.perf_counter() - started
    engine.plugins.call_optional("quant_on_run_end", result=result)
    return result


def _reasons(O) -> list:
    out = [None] * len(O)
    for oi in np.flatnonzero(O[:, O_REASON] != R_NONE).tolist():
        code = int(O[oi, O_REASON])
        side = "buy" if O[oi, O_SIDE] > 0 else "sell"
        if code == R_MARGIN:
            out[oi] = f"margin is insufficient: needs {O[oi, O_NEED]:,.2f}, available {O[oi, O_FREE]:,.2f} (Binance -2019)"
        elif code == R_SPOT:
            out[oi] = f"spot: cannot sell {O[oi, O_NEED]:g}, holding {O[oi, O_FREE]:g}"
        elif code == R_CROSS:
            out[oi] = f"post-only {side} at {float(O[oi, O_PRICE])} would cross {float(O[oi, O_NEED])} (GTX)"
        elif code == R_REDUCE:
            out[oi] = "reduce-only order would not reduce the position (Binance -2022)"
        elif code == R_RO_GONE:
            out[oi] = "reduce-only: no position left to reduce"
        else:
            out[oi] = "liquidation"
    return out


def _utc(ms: np.ndarray):
    return pd.to_datetime(np.asarray(ms, dtype=np.int64), unit="ms", utc=True)


def pair_tags(legs, O) -> np.ndarray:
    """Each order's tag: its leg's, or "liquidation"."""
    leg = O[:, O_LEG].astype(np.int64)
    pair = O[:, O_PAIR].astype(np.int64)
    table = np.array(list(legs.entry_tag) + list(legs.take_profit_tag) + ["liquidation"], dtype=object)
    return table[np.where(leg == LEG_LIQ, 2 * len(legs), pair + len(legs) * leg)]


def build_result(engine, broker, bars, S, O, FL, CASH, QTYD, LIQM, HASM, FUNDR, tags):
    """What ``core.metrics.build_result`` returns after the event path, from a compiled loop's
    arrays (orders in creation order; ``tags`` one per order)."""
    from btc_quant.core.engine import RunResult
    from btc_quant.core.metrics import compute_metrics, fills_frame, orders_frame, position_per_bar, trades_frame

    n = len(bars)
    leg = O[:, O_LEG].astype(np.int64)
    ids = np.empty(len(O), dtype=object)
    own = np.flatnonzero(leg != LEG_LIQ)
    ids[own] = [engine.next_client_id() for _ in range(len(own))]  # in creation order, as the engine hands them out
    for oi in np.flatnonzero(leg == LEG_LIQ).tolist():
        ids[oi] = f"liquidation-{int(O[oi, O_REF])}"
    side = np.where(O[:, O_SIDE] > 0, "buy", "sell").astype(object)
    market = np.isnan(O[:, O_PRICE])
    if len(O):
        orders = pd.DataFrame({
            "client_id": ids,
            "side": side,
            "type": np.where(market, "market", "limit").astype(object),
            "price": [None if p != p else p for p in O[:, O_PRICE].tolist()],  # as orders_frame: None for market orders
            "quantity": O[:, O_QTY],
            "filled_qty": O[:, O_FILLED],
            "avg_fill_price": O[:, O_AVG],
            "post_only": O[:, O_PO] != 0,
            "reduce_only": O[:, O_RO] != 0,
            "status": STATUS_NAMES[O[:, O_STATUS].astype(np.int64)],
            "reason": _reasons(O),
            "created": _utc(O[:, O_CREATED]),
            "updated": _utc(O[:, O_UPDATED]),
            "tag": tags,
        })
    else:
        orders = orders_frame({})
    fo = FL[:, F_ORDER].astype(np.int64)
    fbar = FL[:, F_BAR].astype(np.int64)
    if len(FL):
        fills = pd.DataFrame({
            "ts": _utc(bars.ts[fbar]),
            "trade_id": [f"sim-{s}" for s in FL[:, F_SEQ].astype(np.int64).tolist()],
            "client_id": ids[fo],
            "side": side[fo],
            "price": FL[:, F_PRICE],
            "quantity": FL[:, F_QTY],
            "fee": FL[:, F_FEE],
            "is_maker": FL[:, F_MAKER] != 0,
            "is_liquidation": FL[:, F_LIQ] != 0,
            "tag": tags[fo],
        })
        fills["bar"] = fbar
    else:
        fills = fills_frame([], np.empty(0, dtype=np.int64))
    index = pd.to_datetime(bars.ts, unit="ms", utc=True)
    initial = float(broker.config.initial_cash)
    equity = pd.Series(initial + np.cumsum(CASH) + np.cumsum(QTYD) * bars.close, index=index, name="equity")
    trades = trades_frame(fills)
    position = position_per_bar(n, fills)
    fk = FUNDR[:, 0].astype(np.int64)
    broker._funding_rows = list(zip(broker._fund_ts[fk].tolist(), FUNDR[:, 1].astype(np.int64).tolist(), broker._fund_rate[fk].tolist(),
                                    FUNDR[:, 2].tolist(), FUNDR[:, 3].tolist(), FUNDR[:, 4].tolist()))
    funding = broker.funding_payments()
    paid = float(funding["amount"].sum()) if len(funding) else 0.0
    metrics = compute_metrics(equity, fills, trades, initial_equity=initial, position=position, funding=paid)
    result = RunResult(
        info=engine.info, bars=n, start_ms=bars.start_ms, end_ms=bars.end_ms, equity=equity, fills=fills,
        orders=orders, trades=trades, metrics=metrics, initial_equity=initial,
    )
    result.extra["position"] = pd.Series(position, index=index, name="position")
    result.extra["rejections"] = int(S[NREJ])
    result.extra["bars"] = bars
    result.extra["funding"] = funding
    liq = np.full(n, np.nan)
    marked = np.flatnonzero(HASM)
    if len(marked):  # the last mark of a bar holds at its close and until the next mark
        idx = np.full(n, -1, dtype=np.int64)
        idx[marked] = marked
        idx = np.maximum.accumulate(idx)
        have = idx >= 0
        liq[have] = LIQM[idx[have]]
    result.extra["liquidation_price"] = pd.Series(liq, index=index, name="liquidation_price")
    sign = np.sign(position)
    with np.errstate(invalid="ignore"):
        distance = np.where(sign != 0, sign * (bars.close - liq) / bars.close, np.nan)
    result.extra["liquidation_distance"] = pd.Series(distance, index=index, name="liquidation_distance")
    return result

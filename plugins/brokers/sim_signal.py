"""The ``sim`` broker's compiled backtest of a :class:`~btc_quant.sdk.signals.SignalStrategy`.

Between decisions a signal strategy asks nothing of Python; at a decision its rule is fixed
(:mod:`btc_quant.sdk.signals`). So the whole run -- the sim's bar skipping and intrabar path, the
market orders placed at a decision bar's close and filled at the next open with the taker fee, the
margin check, reduce-only exits, isolated or cross margin, Binance's liquidation, funding -- runs
here in one numba loop that repeats :class:`~btc_quant.plugins.brokers.sim.SimBroker`'s rules step
for step, with the pieces it shares with the pair loop (:mod:`.sim_pairs`), and builds the same
RunResult. A case it does not implement (a quantity that rounds to 0 or is under the minimum
notional -- an error on the event path --, a reduce-only exit cut to a smaller position) stops it
and the event path runs. ``tests/test_sim_signal.py`` checks fill-for-fill equality.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from numba import njit

from .sim_pairs import (
    BAR, EPS, FK, LEG_ENTRY, LEG_LIQ, LIQ, NF, NFILL, NFUND, NO, NOPEN, NORD, NREJ, NSTATE, NOW, O_FILLED, O_FREE, O_LEG, O_NEED,
    O_QTY, O_REASON, O_RO, O_SIDE, O_STATUS, O_UPDATED, OK, P_CHECK, P_ISOLATED, P_LEV, P_LIQFEE, P_LOT, P_MAKER, P_PATHDIR, P_PERP, P_STRICT, P_TAKER, PE, PQ, PRICE,
    R_MARGIN, R_REDUCE, R_RO_GONE, R_SPOT, ST_EXPIRED, ST_REJECTED, WALLET, _available, _fill, _fund, _liquidate, _new_order,
    _quiet, _rest, _unrest, build_result, why_not,
)
from .sim_path import fill_bar_path, first_event_bar, next_resting_fill, resting_bounds

log = logging.getLogger(__name__)

# more parameters after the pair loop's: quantity rounding and the minimum notional
P_LOT_UNITS, P_QSCALE, P_MINNOT = 10, 11, 12
NPARAM = 13
BAIL_ORDER, BAIL_CUT, BAIL_CAPACITY = 11, 12, 2
BAIL_REASONS = {
    BAIL_ORDER: "an order quantity rounds to 0 or is below the minimum notional (an OrderError on the event path)",
    BAIL_CUT: "a reduce-only exit was cut to a smaller position (a partial fill)",
    BAIL_CAPACITY: "capacity",
}
PENDING_SLOT = 0  # the strategy's one open order rests here; slot 1 is the liquidation's


@njit(cache=True, nogil=True)
def _round_qty(q, P):  # pragma: no cover - compiled
    """Instrument.round_qty: floor to the lot, then Python's round(..., qty_decimals), which for
    ``steps`` lots of ``m`` units of 10^-d is the double nearest ``steps * m / 10^d`` (an exactly
    rounded division of two exact integers)."""
    steps = math.floor(q / P[P_LOT] + 1e-9)
    return steps * P[P_LOT_UNITS] / P[P_QSCALE]


@njit(cache=True, nogil=True)
def _decide(S, P, O, rows, slot_order, held, value, close):  # pragma: no cover - compiled
    """SignalStrategy.on_bar at a decision bar's close, with Engine.submit and SimBroker.submit:
    OK or a bail code."""
    if S[NOPEN] > 0:
        return OK
    pos = S[PQ]
    if value != 0 and pos == 0:
        equity = S[WALLET] if abs(pos) < 1e-12 else S[WALLET] + pos * (S[PRICE] - S[PE])
        qty = _round_qty(abs(value) * equity / close, P)
        if not (qty > 0) or not (close * qty >= P[P_MINNOT]):
            return BAIL_ORDER
        side = 1.0 if value > 0 else -1.0
        ro = 0.0
    elif pos != 0 and (value == 0 or (value > 0) != (pos > 0)):
        qty = _round_qty(abs(pos), P)
        if not (qty > 0):
            return BAIL_ORDER
        side = -1.0 if pos > 0 else 1.0
        ro = 1.0
    else:
        return OK
    oi = _new_order(S, O, -1, LEG_ENTRY, side, np.nan, qty, 0.0)
    if oi < 0:
        return BAIL_CAPACITY
    O[oi, O_RO] = ro
    buy = side > 0
    # SimBroker._refusal
    if ro != 0:
        if abs(pos) < EPS or (pos > 0) == buy:
            O[oi, O_STATUS] = ST_REJECTED
            O[oi, O_REASON] = R_REDUCE
            S[NREJ] += 1
        else:
            _rest(S, O, rows, slot_order, held, oi, PENDING_SLOT)
        return OK
    if P[P_CHECK] != 0:
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
            need = opening * S[PRICE] / P[P_LEV]
            free = _available(S, P, held)
            if need > free + 1e-9:
                O[oi, O_STATUS] = ST_REJECTED
                O[oi, O_REASON] = R_MARGIN
                O[oi, O_NEED] = need
                O[oi, O_FREE] = free
                S[NREJ] += 1
                return OK
    _rest(S, O, rows, slot_order, held, oi, PENDING_SLOT)  # a market order waits for the next open
    return OK


@njit(cache=True, nogil=True)
def _fill_pending(S, P, BB, O, FL, rows, slot_order, held, CASH, QTYD, LIQM, HASM, ts):  # pragma: no cover - compiled
    """SimBroker._at_open's takers: the waiting market order fills at the open (reduce-only: cut to
    the position, or expired when it is gone). OK or a bail code."""
    oi = slot_order[PENDING_SLOT]
    if O[oi, O_RO] != 0:
        pos = S[PQ]
        side = 1.0 if O[oi, O_SIDE] > 0 else -1.0
        if abs(pos) < 1e-12 or (pos > 0) == (side > 0):
            O[oi, O_STATUS] = ST_EXPIRED
            O[oi, O_REASON] = R_RO_GONE
            O[oi, O_UPDATED] = S[NOW]
            _unrest(S, O, rows, slot_order, held, PENDING_SLOT)
            return OK
        if abs(pos) < max(O[oi, O_QTY] - O[oi, O_FILLED], 0.0):  # SimBroker._fill would cut it
            return BAIL_CUT
    if not _fill(S, P, BB, O, FL, rows, slot_order, held, CASH, QTYD, LIQM, HASM, ts, PENDING_SLOT, S[PRICE], False, False):
        return BAIL_CAPACITY
    return OK


@njit(cache=True, nogil=True)
def signal_kernel(ts, op, hi, lo, cl, fund_bar, fund_rate, decide, value, P, BB, S, O, FL, rows, slot_order, held,
                  CASH, QTYD, LIQM, HASM, FUNDR):  # pragma: no cover - compiled
    """The run: ``Engine.run_backtest`` with ``SimBroker.advance`` and ``SignalStrategy``; an exit code."""
    n = len(op)
    nd = len(decide)
    strict = P[P_STRICT] != 0
    path = np.empty(5)
    size = rows.shape[0]
    S[NOW] = ts[0]
    S[PRICE] = op[0]
    S[LIQ] = np.nan
    d = 0
    i = 0
    while i < n:
        pending = slot_order[PENDING_SLOT] >= 0 and S[NOPEN] > 0
        # SimBroker._skip: the next decision bar, funding with a position, or an event
        j = i
        if not pending:
            while d < nd and decide[d] < i:
                d += 1
            stop = decide[d] if d < nd else n
            if abs(S[PQ]) >= 1e-12 and S[FK] < len(fund_bar):
                stop = min(stop, fund_bar[int(S[FK])])
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
                if _quiet(S, P, rows, low, h):  # (no taker waits: it filled at the open)
                    break
            a = S[PRICE]
            b = path[seg + 1]
            kind = 0
            at = 0.0
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
                if seg == 0:
                    at = min(max(at, low), h)
                S[PRICE] = at
                if kind == 2:
                    if not _liquidate(S, P, BB, O, FL, rows, slot_order, held, CASH, QTYD, LIQM, HASM, ts, at):
                        return BAIL_CAPACITY
                else:  # never: the strategy's only order is a market order, matched at the open
                    if not _fill(S, P, BB, O, FL, rows, slot_order, held, CASH, QTYD, LIQM, HASM, ts, slot, at, True, False):
                        return BAIL_CAPACITY
                look = seg >= 1
                continue
            seg += 1
            if seg < 4:
                S[PRICE] = path[seg]
            if seg == 1:  # SimBroker._at_open: funding, then the taker waiting for the open
                _fund(S, P, BB, op, fund_bar, fund_rate, CASH, LIQM, HASM, FUNDR, i)
                if slot_order[PENDING_SLOT] >= 0:
                    code = _fill_pending(S, P, BB, O, FL, rows, slot_order, held, CASH, QTYD, LIQM, HASM, ts)
                    if code != OK:
                        return code
                look = True
        S[PRICE] = c
        if d < nd and decide[d] == i:  # the bar closed: on_bar
            code = _decide(S, P, O, rows, slot_order, held, value[d], c)
            d += 1
            if code != OK:
                return code
        i += 1
    return OK


def run_signal(broker, engine, bars, strategy):
    """Run ``strategy`` (a SignalStrategy) over ``bars`` in :func:`signal_kernel`; the RunResult,
    or None when the loop does not apply or met a case it does not implement (the event path runs)."""
    reason = why_not(broker)
    if reason is not None:
        log.info("%s: event path (%s)", engine.info.strategy, reason)
        return None
    started = time.perf_counter()
    broker.load(bars)
    inst = engine.instrument
    cfg = broker.config
    n = len(bars)
    wake = np.asarray(strategy.wake_bars(bars), dtype=bool)
    decide = np.flatnonzero(wake).astype(np.int64)
    value = np.ascontiguousarray(strategy._known[2][decide], dtype=np.float64)
    ts = np.ascontiguousarray(bars.ts, dtype=np.int64)
    op, hi, lo, cl = (np.ascontiguousarray(getattr(bars, k), dtype=np.float64) for k in ("open", "high", "low", "close"))
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
    P[P_QSCALE] = 10.0 ** inst.qty_decimals
    P[P_LOT_UNITS] = round(inst.lot_size * P[P_QSCALE])
    P[P_MINNOT] = inst.min_notional
    if abs(P[P_LOT_UNITS] / P[P_QSCALE] - inst.lot_size) > 1e-15 * max(inst.lot_size, 1.0):
        log.info("%s: event path (lot size %r is not a whole number of 10^-%d)", engine.info.strategy, inst.lot_size, inst.qty_decimals)
        return None
    BB = np.array([(b.notional_floor, b.notional_cap, b.maintenance_rate, b.maintenance_amount) for b in broker.brackets], dtype=np.float64)
    capacity = 2 * len(decide) + 64
    while True:
        S = np.zeros(NSTATE)
        S[WALLET] = cfg.initial_cash
        O = np.zeros((capacity, NO))
        FL = np.zeros((capacity, NF))
        rows = np.zeros((2, 4))
        slot_order = np.full(2, -1, dtype=np.int64)
        held = np.zeros(4)
        CASH, QTYD = np.zeros(n), np.zeros(n)
        LIQM, HASM = np.full(n, np.nan), np.zeros(n, dtype=np.bool_)
        FUNDR = np.zeros((len(fund_bar) + 1, 5))
        kernel_started = time.perf_counter()
        code = signal_kernel(ts, op, hi, lo, cl, fund_bar, fund_rate, decide, value, P, BB, S, O, FL, rows, slot_order, held,
                             CASH, QTYD, LIQM, HASM, FUNDR)
        kernel_s = time.perf_counter() - kernel_started
        if code != BAIL_CAPACITY:
            break
        capacity *= 4
    if code != OK:
        log.info("%s: compiled signal loop stopped (%s); running the event path", engine.info.strategy, BAIL_REASONS[code])
        return None
    broker.start()
    engine.plugins.call_optional("quant_on_run_start", run=engine.info)
    broker.stop()
    O, FL = O[: int(S[NORD])], FL[: int(S[NFILL])]
    tags = np.where(O[:, O_LEG] == LEG_LIQ, "liquidation", None).astype(object)
    result = build_result(engine, broker, bars, S, O, FL, CASH, QTYD, LIQM, HASM, FUNDR[: int(S[NFUND])], tags)
    result.extra["diagnostics"] = strategy.diagnostics()
    result.extra["compiled"] = True
    result.extra["compiled_kernel_s"] = kernel_s
    result.elapsed_s = time.perf_counter() - started
    engine.plugins.call_optional("quant_on_run_end", result=result)
    return result

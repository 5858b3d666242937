"""The compiled decision loop of a :class:`~btc_quant.sdk.pairs.PairGrid` over the venue core.

A pair grid asks nothing of Python between fills: each fill of a leg places the pair's other leg.
So the whole run is one numba loop: the venue core (:mod:`.venue`: bar skipping, the intrabar
path, matching by the fill model, fees, margin, liquidation, funding -- the same functions the
event-path :class:`~.broker.SimBroker` calls) plus the strategy's one decision, re-arming the
other leg. :func:`run_pairs` builds the RunResult from the core's state as the event path does.

It applies when the strategy asks for nothing else (:meth:`PairGrid.why_not`) and the broker has
no volume cap (:func:`why_not`). A case the loop does not implement -- a leg that is not post-only
crossing the price on arrival (a taker fill inside the loop, whose fill the strategy would see
before the bar goes on) -- stops it, and the event path runs. ``tests/test_sim_pairs.py`` checks
fill-for-fill equality with the event path.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from btc_quant.sdk.pairs import pair_leg

from . import venue as vc
from .venue import (
    BAIL_CAPACITY,
    F_ORDER,
    NFILL,
    NORD,
    O_LIQ,
    O_PO,
    O_STATUS,
    O_TAG0,
    O_TAG1,
    OK,
    PRICE,
    R_NONE,
    ST_FILLED,
    compiled,
    crosses,
    new_order,
    refusal,
    submit,
)

log = logging.getLogger(__name__)
LEG_ENTRY, LEG_TP = 0, 1
BAIL_TAKER = 1
BAIL_REASONS = {BAIL_TAKER: "a leg that is not post-only crossed the price on arrival (a taker fill)", BAIL_CAPACITY: "capacity"}


def why_not(broker) -> str | None:
    """Why the ``sim`` broker cannot run a pair grid in compiled code (None: it can): it needs no
    volume cap (``broker.max_volume_share``: partial fills)."""
    if broker.config.max_volume_share is not None:
        return "broker.max_volume_share (partial fills) is set"
    return None


@compiled
def _place(v, LS, LQ, LE, LT, LPO, k, leg):  # pragma: no cover - compiled
    """PairGrid._place + Engine.submit + the venue's submit for pair ``k``'s ``leg``: OK or a bail code."""
    side, price = pair_leg(LS[k], LE[k], LT[k], leg == LEG_TP)  # the strategy's rule (sdk.pairs)
    oi = new_order(v, side, price, LQ[k], LPO[k], 0.0, 0.0)
    if oi < 0:
        return BAIL_CAPACITY
    v.O[oi, O_TAG0] = k
    v.O[oi, O_TAG1] = leg
    if v.O[oi, O_PO] == 0 and crosses(v, oi) and refusal(v, oi) == R_NONE:
        return BAIL_TAKER
    if submit(v, oi, False) == vc.SUB_FULL:
        return BAIL_CAPACITY
    return OK


@compiled
def pair_kernel(ts, op, hi, lo, cl, vol, llo, lhi, fund_bar, fund_rate, LS, LQ, LE, LT, LPO, v):  # pragma: no cover - compiled
    """The run: ``Engine.run_backtest`` with the venue core and ``PairGrid``; an exit code."""
    n = len(op)
    S = v.S
    S[vc.NOW] = ts[0]
    S[PRICE] = op[0]
    for k in range(len(LQ)):  # on_start
        code = _place(v, LS, LQ, LE, LT, LPO, k, LEG_ENTRY)
        if code != OK:
            return code
    i = 0
    inside = False
    while True:  # the venue core's bar loop, stopping at each event
        fills = S[NFILL]
        code, i, inside = vc.advance(v, ts, op, hi, lo, cl, vol, llo, lhi, fund_bar, fund_rate, i, inside, n, -np.inf, np.inf)
        if code == vc.ADV_END:
            return OK
        if code == vc.ADV_ROOM:
            return BAIL_CAPACITY
        if S[NFILL] > fills:  # PairGrid.on_fill: a leg filled, place the pair's other leg
            oi = int(v.FL[int(S[NFILL]) - 1, F_ORDER])
            if v.O[oi, O_LIQ] == 0 and v.O[oi, O_STATUS] == ST_FILLED:
                other = LEG_TP if v.O[oi, O_TAG1] == LEG_ENTRY else LEG_ENTRY
                code = _place(v, LS, LQ, LE, LT, LPO, int(v.O[oi, O_TAG0]), other)
                if code != OK:
                    return code


# --- the Python side -----------------------------------------------------------------------------------
def run_pairs(broker, engine, bars, strategy):
    """Run ``strategy`` (a PairGrid) over ``bars`` in :func:`pair_kernel`; the RunResult, or None
    when the loop met a case it does not implement (the event path then runs). Whether it applies
    is :meth:`SimBroker.compiled_refusal`'s decision."""
    from btc_quant.sdk.pairs import pair_legs

    started = time.perf_counter()
    broker.load(bars)
    legs = pair_legs(list(strategy.pairs(engine.ctx)), engine.instrument)
    n = len(bars)
    arrays = bar_arrays(bars)
    fund_bar, fund_rate = broker.funding_arrays()
    llo, lhi = broker._liq_bounds()  # mark or last (venue.liquidation_bounds)
    LS, LQ, LE, LT = (np.array(a, dtype=np.float64) for a in (legs.side, legs.quantity, legs.entry_price, legs.take_profit_price))
    LPO = legs.post_only.astype(np.float64)
    v, kernel_s = run_kernel(
        engine,
        broker,
        "pair",
        BAIL_REASONS,
        max(1024, n // 8),
        lambda room: broker.new_venue(orders=room + len(legs) + 16, slots=len(legs) + 4, fills=room, funding=2 * len(fund_bar) + 4),
        lambda v: pair_kernel(*arrays, llo, lhi, fund_bar, fund_rate, LS, LQ, LE, LT, LPO, v),
    )
    if v is None:
        return None
    O = v.O[: int(v.S[NORD])]
    result = build_result(engine, broker, bars, v, pair_tags(legs, O), kernel_s)
    strategy.legs = legs
    open_ = np.flatnonzero(O[:, vc.O_SLOT] >= 0)
    ids = result.orders["client_id"].to_numpy()
    strategy._leg_of = {ids[oi]: (int(O[oi, O_TAG0]), O[oi, O_TAG1] == LEG_TP) for oi in open_.tolist()}
    result.diagnostics = strategy.diagnostics()
    result.elapsed_s = time.perf_counter() - started
    engine.plugins.call_optional("quant_on_run_end", result=result)
    return result


def bar_arrays(bars):
    """(ts, open, high, low, close, volume) as C arrays of the core's dtypes (no copy when they
    already are)."""
    return (
        np.require(bars.ts, np.int64, "C"),
        *(np.require(getattr(bars, k), np.float64, "C") for k in ("open", "high", "low", "close", "volume")),
    )


def _reasons(v, O) -> list:
    """Each order's reason text (None for most: only rejected, expired and liquidation-canceled
    orders have one)."""
    out = [None] * len(O)
    for oi in np.flatnonzero(O[:, vc.O_REASON] != vc.R_NONE).tolist():
        out[oi] = vc.reason_text(v, oi)
    return out


def _utc(ms: np.ndarray):
    return pd.to_datetime(np.asarray(ms, dtype=np.int64), unit="ms", utc=True)


def pair_tags(legs, O) -> np.ndarray:
    """Each order's tag: its leg's, or "liquidation"."""
    leg = O[:, O_TAG1].astype(np.int64)
    pair = O[:, O_TAG0].astype(np.int64)
    table = np.array(list(legs.entry_tag) + list(legs.take_profit_tag) + ["liquidation"], dtype=object)
    return table[np.where(O[:, O_LIQ] != 0, 2 * len(legs), pair + len(legs) * leg)]


def run_kernel(engine, broker, loop, reasons, room, new_venue, kernel):
    """Run ``kernel(v)`` on ``new_venue(room)``, four times the room each time it runs out; the
    venue and the seconds in the kernel, or (None, 0) when it stopped on a case it does not
    implement (logged with its text in ``reasons``; the event path runs). The run's start and stop are then observed as the
    event path's are."""
    while True:
        v = new_venue(room)
        started = time.perf_counter()
        code = kernel(v)
        kernel_s = time.perf_counter() - started
        if code != BAIL_CAPACITY:
            break
        room *= 4
    if code != OK:
        log.info("%s: compiled %s loop stopped (%s); running the event path", engine.info.strategy, loop, reasons[code])
        return None, 0.0
    broker.start()
    engine.plugins.call_optional("quant_on_run_start", run=engine.info)
    broker.stop()
    return v, kernel_s


def build_result(engine, broker, bars, v, tags, kernel_s):
    """What ``core.metrics.build_result`` returns after the event path, from a compiled loop's
    venue state (orders in creation order; ``tags`` one per order) that ran ``kernel_s`` seconds."""
    from btc_quant.core.metrics import fills_frame, orders_frame
    from btc_quant.core.results import assemble_result

    S = v.S
    O, FL = v.O[: int(S[NORD])], v.FL[: int(S[NFILL])]
    liq_order = O[:, O_LIQ] != 0
    ids = np.empty(len(O), dtype=object)
    own = np.flatnonzero(~liq_order)
    ids[own] = [engine.next_client_id() for _ in range(len(own))]  # in creation order, as the engine hands them out
    for oi in np.flatnonzero(liq_order).tolist():
        ids[oi] = f"liquidation-{int(O[oi, vc.O_REF])}"
    side = np.where(O[:, vc.O_SIDE] > 0, "buy", "sell").astype(object)
    market = np.isnan(O[:, vc.O_PRICE])
    if len(O):
        orders = pd.DataFrame(
            {
                "client_id": ids,
                "side": side,
                "type": np.where(market, "market", "limit").astype(object),
                "price": [None if p != p else p for p in O[:, vc.O_PRICE].tolist()],  # as orders_frame: None for market orders
                "quantity": O[:, vc.O_QTY],
                "filled_qty": O[:, vc.O_FILLED],
                "avg_fill_price": O[:, vc.O_AVG],
                "post_only": O[:, O_PO] != 0,
                "reduce_only": O[:, vc.O_RO] != 0,
                "status": vc.STATUS_NAMES[O[:, O_STATUS].astype(np.int64)],
                "reason": _reasons(v, O),
                "created": _utc(O[:, vc.O_CREATED]),
                "updated": _utc(O[:, vc.O_UPDATED]),
                "tag": tags,
            }
        )
    else:
        orders = orders_frame({})
    fo = FL[:, F_ORDER].astype(np.int64)
    fbar = FL[:, vc.F_BAR].astype(np.int64)
    if len(FL):
        fills = pd.DataFrame(
            {
                "ts": _utc(bars.ts[fbar]),
                "trade_id": [f"sim-{s}" for s in FL[:, vc.F_SEQ].astype(np.int64).tolist()],
                "client_id": ids[fo],
                "side": side[fo],
                "price": FL[:, vc.F_PRICE],
                "quantity": FL[:, vc.F_QTY],
                "fee": FL[:, vc.F_FEE],
                "is_maker": FL[:, vc.F_MAKER] != 0,
                "is_liquidation": FL[:, vc.F_LIQ] != 0,
                "tag": tags[fo],
            }
        )
        fills["bar"] = fbar
    else:
        fills = fills_frame([], np.empty(0, dtype=np.int64))
    broker.venue = v
    return assemble_result(
        engine.info,
        bars,
        vc.equity_curve(v, bars.close, float(broker.config.initial_cash)),
        fills,
        orders,
        initial_equity=float(broker.config.initial_cash),
        funding=broker.funding_payments(),
        rejections=int(S[vc.NREJ]),
        **broker.bar_series(),
        compiled=True,
        compiled_kernel_s=kernel_s,  # the compiled loop alone (the rest builds the RunResult)
    )

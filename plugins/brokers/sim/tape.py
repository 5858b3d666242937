"""Trade replay as a run mode of the venue core (``broker=sim broker.fill_model=queue``).

With ``fill_model=queue`` the event-path :class:`~.broker.SimBroker` walks the stored trade tape
(and best bid/offer updates where the store has them) instead of each bar's open-extremes-close
path. What is new here is only *when* a resting order fills and how much; everything else is the
venue core's (:mod:`.venue`) and is called, not copied: :func:`.venue.submit` (refusals, margin,
post-only crossing, takers), :func:`.venue.fill_up_to` (fees, position, margin, partial fills),
:func:`.venue.cancel`, :func:`.venue.amend`, :func:`.venue.liquidate`, :func:`.venue.fund`. The
queue rules are :mod:`..sim_queue`'s (:func:`~..sim_queue.join_queue`,
:func:`~..sim_queue.on_trade`, :func:`~..sim_queue.on_quote`), the same the calibration's replay uses.

Timing (the bars still drive the strategy's clock):

* bar ``i`` covers ``[ts_i, ts_i + timeframe)``. Its walk pays funding at its open (as on bars),
  then takes the tape's events with ``ts < ts_i + timeframe`` in time order: order arrivals,
  amends and cancels first, then prints, then quotes of the same millisecond (a bookTicker stamped with a
  print's millisecond shows the book after it). The strategy's ``on_bar`` runs at the close,
  when the core's clock reads ``ts_i + timeframe``; orders placed then (or from ``on_fill`` /
  ``on_order`` during the walk, at the print's time) are stamped with that time.
* an order reaches the exchange ``broker.latency_ms`` after it was placed (at once with 0). It then
  meets the book: the core's crossing test runs against the best ask for a buy and the best bid for
  a sell (the last print where no best bid/offer is known), so a post-only order that would take
  is EXPIRED (Binance GTX) and a taker fills at that price. A resting order joins the queue behind
  the displayed quantity at its price (:func:`~..sim_queue.join_queue`; ``broker.queue_qty`` where
  no quote shows it).
* a print at a resting order's price by a taker on the other side first eats the queue ahead, then
  fills the order by what is left of the print (partially if less than the order; fills are whole
  lots); a print through the price fills the rest. Quotes shorten the queue (``quote_advance``).
* a cancel takes effect ``latency_ms`` after it was asked for; the order can fill until then. An
  amend (cancel-replace, Binance PUT /fapi/v1/order) is a request like any other: it takes effect
  ``latency_ms`` after it was asked for (the order can fill at its old price and quantity until
  then), and the order joins the back of its new price's queue. An amend that arrives after the
  order was filled or canceled, or for a quantity no longer above what has filled, does nothing
  (the exchange refuses it); a second amend asked while one is on its way replaces it (its price
  and quantity, at its own arrival time).
* liquidation: a print that reaches a position's liquidation price (and, when the run has mark
  bars, a bar whose mark reached it, as on bars) liquidates it there by :func:`.venue.liquidate`,
  before the print's fills.

The state of the replay beside the core's (:class:`TapeState`): the market (best bid/offer, last
print; :func:`~..sim_queue.new_market`), the tape cursor, and per core order row its queue ahead,
arrival time, cancel time and amend on its way, and the orders still on their way to the exchange.
"""

from __future__ import annotations

import collections

import numpy as np
from numba import njit

from ..sim_queue import M_ASK, M_ASK_QTY, M_BID, M_BID_QTY, M_LAST, NEVER, join_queue, on_quote, on_trade
from . import venue as vc

#: ``M`` market (sim_queue.new_market's layout); ``CUR`` int64[2] next print, next quote; per core
#: order row: ``QA`` queue ahead, ``LIVE`` when it reaches the exchange, ``DEAD`` when its cancel
#: takes effect (NEVER: none asked), ``AMEND`` when its amend takes effect (NEVER: none on its way)
#: to ``AMEND_PRICE`` and ``AMEND_QTY``; ``PEND[:NP[0]]`` the rows still on their way.
TapeState = collections.namedtuple("TapeState", "M CUR QA LIVE DEAD AMEND AMEND_PRICE AMEND_QTY PEND NP")
#: :func:`walk_tape` needs room in the core's logs (grow, call again)
WALK_ROOM = 9


def new_tape_state(orders: int) -> TapeState:
    m = np.empty(5)
    m[M_BID], m[M_BID_QTY], m[M_ASK], m[M_ASK_QTY], m[M_LAST] = -1.0, 0.0, -1.0, 0.0, -1.0
    return TapeState(
        m,
        np.zeros(2, dtype=np.int64),
        np.zeros(orders),
        np.full(orders, NEVER, dtype=np.int64),
        np.full(orders, NEVER, dtype=np.int64),
        np.full(orders, NEVER, dtype=np.int64),
        np.zeros(orders),
        np.zeros(orders),
        np.zeros(orders, dtype=np.int64),
        np.zeros(1, dtype=np.int64),
    )


def grow_tape(tp: TapeState, orders: int) -> TapeState:
    """``tp`` with per-order arrays for at least ``orders`` core rows."""
    if len(tp.QA) >= orders:
        return tp
    n = max(orders, 2 * len(tp.QA))

    def grown(a, fill):
        out = np.full(n, fill, dtype=a.dtype)
        out[: len(a)] = a
        return out

    return tp._replace(
        QA=grown(tp.QA, 0.0),
        LIVE=grown(tp.LIVE, NEVER),
        DEAD=grown(tp.DEAD, NEVER),
        AMEND=grown(tp.AMEND, NEVER),
        AMEND_PRICE=grown(tp.AMEND_PRICE, 0.0),
        AMEND_QTY=grown(tp.AMEND_QTY, 0.0),
        PEND=grown(tp.PEND, 0),
    )


def start_market(tp: TapeState, trades, quotes, start_ms: int) -> None:
    """Put the cursor at ``start_ms``: the last print and best bid/offer before it are the market."""
    ti = int(np.searchsorted(trades.ts, start_ms, "left"))
    qi = int(np.searchsorted(quotes.ts, start_ms, "left"))
    tp.CUR[0], tp.CUR[1] = ti, qi
    if ti > 0:
        tp.M[M_LAST] = trades.price[ti - 1]
    if qi > 0:
        tp.M[M_BID], tp.M[M_BID_QTY] = quotes.bid_px[qi - 1], quotes.bid_qty[qi - 1]
        tp.M[M_ASK], tp.M[M_ASK_QTY] = quotes.ask_px[qi - 1], quotes.ask_qty[qi - 1]


@njit(cache=True, nogil=True)
def _meet_book(v, M, oi):  # pragma: no cover - compiled
    """Set the core's price to what a new order meets: the best ask for a buy, the best bid for a
    sell, else the last print; returns the price to restore."""
    before = v.S[vc.PRICE]
    if M[M_BID] > 0.0 and M[M_ASK] > 0.0:
        v.S[vc.PRICE] = M[M_ASK] if v.O[oi, vc.O_SIDE] > 0 else M[M_BID]
    elif M[M_LAST] > 0.0:
        v.S[vc.PRICE] = M[M_LAST]
    return before


@njit(cache=True, nogil=True)
def _join(v, tp, oi, tick, queue_qty):  # pragma: no cover - compiled
    M = tp.M
    ahead = join_queue(v.O[oi, vc.O_SIDE], v.O[oi, vc.O_PRICE], M[M_BID], M[M_BID_QTY], M[M_ASK], M[M_ASK_QTY], M[M_LAST], queue_qty, tick)
    tp.QA[oi] = max(ahead, 0.0)


@njit(cache=True, nogil=True)
def arrive(v, tp, oi, tick, queue_qty):  # pragma: no cover - compiled
    """Order ``oi`` reaches the exchange now: canceled if its cancel got there first, else
    :func:`.venue.submit` against the book it meets, and a resting order joins its queue.
    Returns ``SUB_*`` (``SUB_FULL``: nothing done, grow and call again)."""
    if not vc.has_room(v, 0):
        return vc.SUB_FULL
    if tp.DEAD[oi] <= tp.LIVE[oi]:
        vc._finish(v, oi, vc.ST_CANCELED, vc.R_NONE)
        return vc.SUB_REJECTED
    before = _meet_book(v, tp.M, oi)
    out = vc.submit(v, oi, True)
    if out != vc.SUB_FILLED:  # a taker's fill leaves the price where it traded
        v.S[vc.PRICE] = before
    if out == vc.SUB_RESTING:
        _join(v, tp, oi, tick, queue_qty)
    return out


@njit(cache=True, nogil=True)
def rejoin(v, tp, oi, price, qty, tick, queue_qty):  # pragma: no cover - compiled
    """Amend (cancel-replace) open order ``oi`` now: :func:`.venue.amend` against the book it
    meets, at the back of its new price's queue. Returns ``SUB_*``."""
    if not vc.has_room(v, 0):
        return vc.SUB_FULL
    before = _meet_book(v, tp.M, oi)
    out = vc.amend(v, oi, price, qty, True)
    if out != vc.SUB_FILLED:
        v.S[vc.PRICE] = before
    if out == vc.SUB_RESTING:
        _join(v, tp, oi, tick, queue_qty)
    return out


@njit(cache=True, nogil=True)
def _next_arrival(tp):  # pragma: no cover - compiled
    """(time, index in ``PEND``) of the next order to reach the exchange; (NEVER, -1): none."""
    ta = NEVER
    ka = -1
    for j in range(tp.NP[0]):
        if tp.LIVE[tp.PEND[j]] < ta:
            ta = tp.LIVE[tp.PEND[j]]
            ka = j
    return ta, ka


@njit(cache=True, nogil=True)
def _next_request(v, tp):  # pragma: no cover - compiled
    """(time, core order row, is an amend) of the next cancel or amend of an open order to reach
    the exchange (a cancel first in a tie); (NEVER, -1, False): none."""
    tc = NEVER
    kc = -1
    amend = False
    if v.S[vc.NOPEN] > 0:
        for k in range(int(v.S[vc.NSLOT])):
            if v.BOOK[k, vc.B_STATE] != 0.0:
                oi = v.BOOK_ORDER[k]
                if tp.DEAD[oi] < tc:
                    tc, kc, amend = tp.DEAD[oi], oi, False
                if tp.AMEND[oi] < tc:
                    tc, kc, amend = tp.AMEND[oi], oi, True
    return tc, kc, amend


@njit(cache=True, nogil=True)
def walk_tape(v, tp, tape, bar_end, mark_open, fund_bar, fund_rate, tick, queue_qty, quote_advance):  # pragma: no cover - compiled
    """Walk the current bar (begun with :func:`.venue.begin_bar`) on the tape until one event
    (``WALK_FILL``: fills, an arrival, an amend, a cancel; ``WALK_LIQ``), its end (``WALK_CLOSE``,
    the clock at ``bar_end``) or ``WALK_ROOM`` (grow the core's logs and call again). ``tape``:
    (print ts, price, quantity, taker side, quote ts, bid, bid quantity, ask, ask quantity). See
    the module doc.

    Speed: the book, the orders on their way and the requests pending change only where this
    returns (or at an arrival without an event, after which they are read again), so the next
    arrival, the next cancel or amend, and the book's bounds (:func:`.venue.book_bounds`: highest
    resting buy, lowest resting sell) are read once per call; a print or quote that reaches no
    resting order costs a few comparisons, as in :func:`~..sim_queue.replay`."""
    S, O, BOOK, M = v.S, v.O, v.BOOK, tp.M
    t_ts, t_px, t_qty, t_side, q_ts, q_bid, q_bid_qty, q_ask, q_ask_qty = tape
    if S[vc.SEG] == 0:  # the open: funding as on bars
        S[vc.SEG] = 1.0
        if S[vc.FK] < len(fund_bar):
            vc.fund(v, int(S[vc.BAR]), mark_open, fund_bar, fund_rate)
    n_t = len(t_ts)
    n_q = len(q_ts)
    half = 0.5 * tick
    ta, ka = _next_arrival(tp)
    tc, kc, is_amend = _next_request(v, tp)
    buy_max, sell_min, _ = vc.book_bounds(v)
    while True:
        if not vc.has_room(v, 0):
            return WALK_ROOM
        events = S[vc.NEVT]
        ti = tp.CUR[0]
        qi = tp.CUR[1]
        tt = t_ts[ti] if ti < n_t else NEVER
        tq = q_ts[qi] if qi < n_q else NEVER
        t = min(min(ta, tc), min(tt, tq))
        if t >= bar_end:
            break
        if t > S[vc.NOW]:
            S[vc.NOW] = t
        if ta == t or tc == t:
            if ta == t:  # an order reaches the exchange (before the prints of its ms)
                oi = tp.PEND[ka]
                tp.NP[0] -= 1
                tp.PEND[ka] = tp.PEND[tp.NP[0]]
                arrive(v, tp, oi, tick, queue_qty)
            elif is_amend:  # an amend reaches the exchange: at the back of its new price's queue
                tp.AMEND[kc] = NEVER
                if tp.AMEND_QTY[kc] > O[kc, vc.O_FILLED] + 1e-12:  # else Binance refuses it; the order stays
                    rejoin(v, tp, kc, tp.AMEND_PRICE[kc], tp.AMEND_QTY[kc], tick, queue_qty)
            else:  # a cancel takes effect
                vc.cancel(v, kc, vc.R_NONE)
            if S[vc.NEVT] > events:
                return vc.WALK_FILL
            ta, ka = _next_arrival(tp)
            tc, kc, is_amend = _next_request(v, tp)
            buy_max, sell_min, _ = vc.book_bounds(v)
            continue
        if tt == t:  # a print (before a quote of the same ms)
            px = t_px[ti]
            tp.CUR[0] = ti + 1
            M[M_LAST] = px
            S[vc.PRICE] = px
            for r in range(2):  # liquidation first, where the venue's price (and the mark) reach it
                liq = v.POS[r, vc.Q_LIQ]
                if liq != liq or abs(v.POS[r, vc.Q_QTY]) < 1e-12:
                    continue
                if (v.POS[r, vc.Q_LDIR] > 0 and px <= liq and S[vc.BLIQLO] <= liq) or (
                    v.POS[r, vc.Q_LDIR] < 0 and px >= liq and S[vc.BLIQHI] >= liq
                ):
                    S[vc.PRICE] = liq
                    vc.liquidate(v, r, liq)
                    S[vc.PRICE] = px
                    return vc.WALK_LIQ
            if S[vc.NOPEN] > 0 and (px <= buy_max + half or px >= sell_min - half):
                for k in range(int(S[vc.NSLOT])):
                    if BOOK[k, vc.B_STATE] != 1.0:
                        continue
                    price = BOOK[k, vc.B_PRICE]
                    if price != price:
                        continue
                    oi = v.BOOK_ORDER[k]
                    side = O[oi, vc.O_SIDE]
                    if (side > 0 and px > price + half) or (side < 0 and px < price - half):
                        continue  # the print is away from it
                    left = O[oi, vc.O_QTY] - O[oi, vc.O_FILLED]
                    filled, tp.QA[oi] = on_trade(side, price, left, tp.QA[oi], px, t_qty[ti], t_side[ti], tick)
                    if filled > 0.0:
                        vc.fill_up_to(v, oi, price, True, False, filled)
            if S[vc.NEVT] > events:
                return vc.WALK_FILL
            continue
        # a quote
        M[M_BID] = q_bid[qi]
        M[M_BID_QTY] = q_bid_qty[qi]
        M[M_ASK] = q_ask[qi]
        M[M_ASK_QTY] = q_ask_qty[qi]
        tp.CUR[1] = qi + 1
        if quote_advance and S[vc.NOPEN] > 0 and (M[M_BID] <= buy_max + half or M[M_ASK] >= sell_min - half):
            for k in range(int(S[vc.NSLOT])):
                if BOOK[k, vc.B_STATE] == 1.0 and BOOK[k, vc.B_PRICE] == BOOK[k, vc.B_PRICE]:
                    oi = v.BOOK_ORDER[k]
                    tp.QA[oi] = on_quote(
                        O[oi, vc.O_SIDE], BOOK[k, vc.B_PRICE], tp.QA[oi], M[M_BID], M[M_BID_QTY], M[M_ASK], M[M_ASK_QTY], tick
                    )
    S[vc.SEG] = 4.0
    S[vc.NOW] = bar_end
    return vc.WALK_CLOSE


@njit(cache=True, nogil=True)
def advance_tape(
    v, tp, bars, fund_bar, fund_rate, i, inside, wake_at, alert_low, alert_high, bar_ms, tape, tick, queue_qty, quote_advance
):  # pragma: no cover - compiled
    """:func:`.venue.advance` on the tape: every bar is walked (its prints move the queues) by
    :func:`walk_tape`; the same stops (``ADV_*``, with ``ADV_ROOM`` when the logs need room).
    ``bars``: (ts, open, high, low, close, volume, liquidation low, liquidation high)."""
    ts, op, hi, lo, cl, vol, liq_low, liq_high = bars
    n = len(op)
    while i < n:
        if not inside:
            vc.begin_bar(v, i, ts[i], cl[i - 1] if i > 0 else op[i], op[i], hi[i], lo[i], cl[i], vol[i], liq_low[i], liq_high[i])
            inside = True
        end = ts[i] + bar_ms
        code = walk_tape(v, tp, tape, end, op[i], fund_bar, fund_rate, tick, queue_qty, quote_advance)
        if code == WALK_ROOM:
            return vc.ADV_ROOM, i, True
        if code != vc.WALK_CLOSE:
            return vc.ADV_EVENT, i, True
        v.S[vc.PRICE] = cl[i]
        if lo[i] <= alert_low or hi[i] >= alert_high:
            return vc.ADV_ALERT, i, False
        if i >= wake_at:
            return vc.ADV_CLOSED, i, False
        i += 1
        inside = False
    return vc.ADV_END, n, False

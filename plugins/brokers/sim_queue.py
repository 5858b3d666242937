"""Queue-aware trade replay: when a resting maker order fills on a tape of trades (``fill_model=queue``).

Bars say only how far the price went; a tape says how much traded at each price. A resting limit
order does not fill because the price touched it: it waits behind the orders already displayed at
its price, and fills when the prints at its price have eaten that queue, or when the price trades
through it. The rules (pure compiled functions over numbers, one place):

* **Joining** (:func:`join_queue`), when the order reaches the exchange (placement time +
  ``latency_ms``): a buy at the best bid queues behind the bid's displayed quantity (bookTicker);
  a buy above the best bid (inside the spread) is first in line (queue 0); a buy below the best
  bid, or any order when no best bid/offer is known, queues behind ``queue_qty`` (a parameter: the
  quantity assumed displayed at a price). A post-only buy at or above the best ask (or, without
  quotes, above the last trade) would take liquidity and is rejected, as Binance's GTX does.
* **Trades** (:func:`on_trade`): a print at the order's price by a taker on the other side (a
  taker sell for a resting buy) first consumes the queue ahead, and what is left of it fills the
  order (partially, if the print is smaller than what the order has left). A print *through* the
  price (below a buy, above a sell) fills the whole remainder: the level was swept. Prints by
  takers on the order's own side never fill it.
* **Quotes** (:func:`on_quote`): the queue ahead can never be longer than what is displayed at
  the price, so a best bid at the order's price with less quantity than the queue shortens it
  (orders ahead were cancelled); a best bid that moves below the order's price means the level is
  gone, so nothing is ahead any more. Quotes never fill by themselves: only prints do.
* **Latency**: an order is live from placement + ``latency_ms``; a cancel takes effect at its
  request time + ``latency_ms``, and the order can still fill in between, as on an exchange.

A fill is at the order's limit price (a maker). Our orders are hypothetical: they do not take
quantity away from each other or from the tape (no market impact), the usual assumption of trade
replays (hftbacktest's queue models make it too).

:func:`replay` is the compiled driver over a whole tape: trades and quotes merged by time (a quote
stamped the same millisecond as a trade is applied after it: Binance's bookTicker shows the book
after the match). It runs at several million trades a second (bench/bench_trades.py).
The sim broker's run mode ``broker.fill_model=queue`` walks the tape in :mod:`.sim.tape`, calling
the three rules above per print and quote and the venue core for every booking (its resting orders
are the core's book); a test checks that it gives :func:`replay`'s fills on a real tape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from btc_quant.core.compiled import njit
from btc_quant.core.trades import QuoteArrays, TradeArrays

#: Order status codes in :func:`replay`'s output.
PENDING, RESTING, FILLED, CANCELLED, REJECTED = 0, 1, 2, 3, 4
STATUS_NAMES = ("pending", "resting", "filled", "cancelled", "rejected")
NEVER = np.iinfo(np.int64).max


@njit(cache=True, nogil=True)
def join_queue(side, price, bid_px, bid_qty, ask_px, ask_qty, last_px, queue_qty, tick):  # pragma: no cover - compiled
    """Quantity ahead of a new order at ``price`` (side +1 buy, -1 sell); -1.0 if a post-only
    order would cross. ``bid_px <= 0`` means no best bid/offer is known; ``last_px <= 0``: no trade yet."""
    half = 0.5 * tick
    if bid_px > 0.0 and ask_px > 0.0:
        if side > 0:
            if price >= ask_px - half:
                return -1.0
            if price > bid_px + half:
                return 0.0
            if price >= bid_px - half:
                return bid_qty
            return queue_qty
        if price <= bid_px + half:
            return -1.0
        if price < ask_px - half:
            return 0.0
        if price <= ask_px + half:
            return ask_qty
        return queue_qty
    if last_px > 0.0 and ((side > 0 and price > last_px + half) or (side < 0 and price < last_px - half)):
        return -1.0
    return queue_qty


@njit(cache=True, nogil=True)
def on_trade(side, price, left, queue, trade_px, trade_qty, trade_side, tick):  # pragma: no cover - compiled
    """One print against a resting order: returns (filled quantity, queue ahead after it)."""
    half = 0.5 * tick
    if side > 0:
        if trade_px < price - half:
            return left, 0.0
        if trade_side < 0 and trade_px <= price + half:
            if trade_qty <= queue:
                return 0.0, queue - trade_qty
            return min(left, trade_qty - queue), 0.0
        return 0.0, queue
    if trade_px > price + half:
        return left, 0.0
    if trade_side > 0 and trade_px >= price - half:
        if trade_qty <= queue:
            return 0.0, queue - trade_qty
        return min(left, trade_qty - queue), 0.0
    return 0.0, queue


@njit(cache=True, nogil=True)
def on_quote(side, price, queue, bid_px, bid_qty, ask_px, ask_qty, tick):  # pragma: no cover - compiled
    """The queue ahead after a best bid/offer update (never a fill)."""
    half = 0.5 * tick
    if side > 0:
        if bid_px < price - half:
            return 0.0
        if bid_px <= price + half:
            return min(queue, bid_qty)
        return queue
    if ask_px > price + half:
        return 0.0
    if ask_px >= price - half:
        return min(queue, ask_qty)
    return queue


@njit(cache=True, nogil=True)
def replay(
    t_ts,
    t_px,
    t_qty,
    t_side,
    q_ts,
    q_bid,
    q_bid_qty,
    q_ask,
    q_ask_qty,
    o_side,
    o_price,
    o_qty,
    o_place_ts,
    o_cancel_ts,
    latency_ms,
    queue_qty,
    tick,
    post_only,
    quote_advance,
):  # pragma: no cover - compiled
    """Replay orders against a tape (see the module doc).

    ``quote_advance`` False: quotes never shorten a queue (only prints do; the most pessimistic
    reading). Orders are sorted by ``o_place_ts``; ``o_cancel_ts`` is when a cancel is requested (NEVER for
    none). Returns (fill order index, fill ts, fill qty, fill count, order status, order left,
    order queue ahead at the end, order live-from ts). Fill arrays have room for one fill per print
    per order at most; only the first ``fill count`` entries are used.
    """
    n_orders = len(o_side)
    status = np.zeros(n_orders, dtype=np.int8)
    left = o_qty.copy()
    queue = np.zeros(n_orders)
    live_from = o_place_ts + latency_ms
    dead_at = np.full(n_orders, NEVER, dtype=np.int64)
    for k in range(n_orders):
        if o_cancel_ts[k] != NEVER:
            dead_at[k] = o_cancel_ts[k] + latency_ms
    cap = 16 * n_orders + 16
    f_order = np.empty(cap, dtype=np.int64)
    f_ts = np.empty(cap, dtype=np.int64)
    f_qty = np.empty(cap)
    n_fills = 0
    active = np.empty(n_orders, dtype=np.int64)  # indices of resting orders
    n_active = 0
    next_order = 0
    bid = -1.0
    bid_qty = 0.0
    ask = -1.0
    ask_qty = 0.0
    last_px = -1.0
    n_t = len(t_ts)
    n_q = len(q_ts)
    ti = 0
    qi = 0
    half = 0.5 * tick
    # Only prints and quotes that reach a resting order matter: at or below the highest resting buy,
    # at or above the lowest resting sell. Those bounds and the next cancel are recomputed only when
    # the resting set changes, so a tape far from every order costs a comparison per event.
    buy_max = -np.inf
    sell_min = np.inf
    next_dead = NEVER
    while True:
        ta = live_from[next_order] if next_order < n_orders else NEVER
        tt = t_ts[ti] if ti < n_t else NEVER
        tq = q_ts[qi] if qi < n_q else NEVER
        if tt == NEVER and tq == NEVER and ta == NEVER:
            break
        changed = False
        if ta <= tt and ta <= tq:  # an order reaches the exchange (before a print or quote of its ms)
            k = next_order
            next_order += 1
            if dead_at[k] <= live_from[k]:
                status[k] = CANCELLED
                continue
            ahead = join_queue(o_side[k], o_price[k], bid, bid_qty, ask, ask_qty, last_px, queue_qty, tick)
            if ahead < 0.0 and post_only:
                status[k] = REJECTED
                continue
            queue[k] = max(ahead, 0.0)
            status[k] = RESTING
            active[n_active] = k
            n_active += 1
            if o_side[k] > 0:
                buy_max = max(buy_max, o_price[k])
            else:
                sell_min = min(sell_min, o_price[k])
            next_dead = min(next_dead, dead_at[k])
            continue
        now = tt if tt <= tq else tq  # a print goes before a quote of the same ms
        if next_dead <= now:
            j = 0
            while j < n_active:  # cancels that took effect by now
                k = active[j]
                if dead_at[k] <= now:
                    status[k] = CANCELLED
                    n_active -= 1
                    active[j] = active[n_active]
                else:
                    j += 1
            changed = True
        if tt <= tq:
            px = t_px[ti]
            if px <= buy_max + half or px >= sell_min - half:
                j = 0
                while j < n_active:
                    k = active[j]
                    filled, queue[k] = on_trade(o_side[k], o_price[k], left[k], queue[k], px, t_qty[ti], t_side[ti], tick)
                    if filled > 0.0:
                        if n_fills == cap:
                            f_order = np.concatenate((f_order, np.empty(cap, dtype=np.int64)))
                            f_ts = np.concatenate((f_ts, np.empty(cap, dtype=np.int64)))
                            f_qty = np.concatenate((f_qty, np.empty(cap)))
                            cap *= 2
                        f_order[n_fills] = k
                        f_ts[n_fills] = now
                        f_qty[n_fills] = filled
                        n_fills += 1
                        left[k] -= filled
                        if left[k] <= 1e-12 * o_qty[k]:
                            left[k] = 0.0
                            status[k] = FILLED
                            n_active -= 1
                            active[j] = active[n_active]
                            changed = True
                            continue
                    j += 1
            last_px = px
            ti += 1
        else:
            bid = q_bid[qi]
            bid_qty = q_bid_qty[qi]
            ask = q_ask[qi]
            ask_qty = q_ask_qty[qi]
            if quote_advance and (bid <= buy_max + half or ask >= sell_min - half):
                for j in range(n_active):
                    k = active[j]
                    queue[k] = on_quote(o_side[k], o_price[k], queue[k], bid, bid_qty, ask, ask_qty, tick)
            qi += 1
        if changed:
            buy_max = -np.inf
            sell_min = np.inf
            next_dead = NEVER
            for j in range(n_active):
                k = active[j]
                if o_side[k] > 0:
                    buy_max = max(buy_max, o_price[k])
                else:
                    sell_min = min(sell_min, o_price[k])
                next_dead = min(next_dead, dead_at[k])
    return f_order[:n_fills], f_ts[:n_fills], f_qty[:n_fills], n_fills, status, left, queue, live_from


# ----------------------------------------------------------------------------------------------
# The market state a broker's tape walk keeps (plugins/brokers/sim/tape.py)


#: Slots of the market state array a tape walk keeps between prints (:mod:`.sim.tape`).
M_BID, M_BID_QTY, M_ASK, M_ASK_QTY, M_LAST = range(5)


@njit(cache=True, nogil=True)
def new_market():  # pragma: no cover - compiled
    """A tape walk's market state at its start: best bid/offer unknown, no print yet."""
    m = np.empty(5)
    m[M_BID] = -1.0
    m[M_BID_QTY] = 0.0
    m[M_ASK] = -1.0
    m[M_ASK_QTY] = 0.0
    m[M_LAST] = -1.0
    return m


# ----------------------------------------------------------------------------------------------
# The Python face


@dataclass(frozen=True)
class QueueParams:
    """Settings of the queue replay (``broker.latency_ms``, ``broker.queue_qty``)."""

    latency_ms: int = 0
    #: Quantity assumed ahead at a price when no best bid/offer shows it (base asset).
    queue_qty: float = 1.0
    tick: float = 0.1
    post_only: bool = True
    #: Let best bid/offer updates shorten the queue (cancels ahead); False: only prints advance it.
    quote_advance: bool = True


@dataclass(frozen=True)
class ReplayResult:
    fills: pd.DataFrame  # order, ts, price, qty
    orders: pd.DataFrame  # the orders with status, filled, left, queue_left, live_from


def replay_orders(
    trades: TradeArrays, orders: pd.DataFrame, params: QueueParams = QueueParams(), quotes: QuoteArrays | None = None
) -> ReplayResult:
    """Replay ``orders`` (columns side +1/-1 or "buy"/"sell", price, qty, place_ts[, cancel_ts])
    against a tape; see the module doc for the rules."""
    from btc_quant.core.trades import side_codes

    orders = orders.sort_values("place_ts", kind="stable").reset_index(drop=True)
    side = side_codes(orders["side"].to_numpy()).astype(np.int64)
    cancel = (
        orders["cancel_ts"].fillna(NEVER).astype(np.int64).to_numpy()
        if "cancel_ts" in orders.columns
        else np.full(len(orders), NEVER, dtype=np.int64)
    )
    q = quotes if quotes is not None else QuoteArrays.empty()
    f_order, f_ts, f_qty, _n, status, left, queue, live_from = replay(
        trades.ts,
        trades.price,
        trades.qty,
        trades.side.astype(np.int64),
        q.ts,
        q.bid_px,
        q.bid_qty,
        q.ask_px,
        q.ask_qty,
        side,
        orders["price"].to_numpy(np.float64),
        orders["qty"].to_numpy(np.float64),
        orders["place_ts"].to_numpy(np.int64),
        cancel,
        np.int64(params.latency_ms),
        float(params.queue_qty),
        float(params.tick),
        bool(params.post_only),
        bool(params.quote_advance),
    )
    fills = pd.DataFrame({"order": f_order, "ts": f_ts, "price": orders["price"].to_numpy()[f_order], "qty": f_qty})
    out = orders.copy()
    out["status"] = [STATUS_NAMES[s] for s in status]
    out["filled"] = orders["qty"].to_numpy() - left
    out["left"] = left
    out["queue_left"] = queue
    out["live_from"] = live_from
    return ReplayResult(fills, out)

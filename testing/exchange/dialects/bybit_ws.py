"""Bybit v5 websockets: the public kline stream (:func:`public_stream`) and the private one
(``wss://stream.bybit.com/v5/private``, here ``/stream/v5/private``) as ccxt.pro's ``bybit`` uses it for ``watch_orders``, ``watch_my_trades``, ``watch_balance`` and
``watch_positions`` on a Unified Trading Account (bybit-exchange.github.io/docs/v5/ws/connect,
/docs/v5/websocket/private/*):

* ``{"op": "auth", "args": [api key, expires ms, HMAC-SHA256(secret, "GET/realtime" + expires)]}``
  -> ``{"success": true, "op": "auth", ...}`` (an expired or wrongly signed request is refused);
* ``{"op": "subscribe", "args": ["order", "execution", "position", "wallet"], "req_id": ...}``
  -> ``{"success": true, "op": "subscribe", "req_id": ...}``; ``{"op": "ping"}`` -> ``pong``;
* pushes ``{"id", "topic", "creationTime", "data": [...]}`` for every event of the account after
  the connection authenticated, in order, on the topics subscribed: ``order`` (the order as
  ``/v5/order/realtime`` shows it, at that event), ``execution`` (one fill), ``position`` and
  ``wallet`` (after a fill, funding or margin change).

Events missed while disconnected are not replayed (as on Bybit: re-read over REST). Faults, as on
the Binance user-data stream: ``drop`` closes without a close frame, ``ws_delay`` holds an event.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import time

from aiohttp import WSMsgType, web

from ..faults import WS_KINDS
from ..http import state_of
from ..trading import fmt
from . import bybit_trading

log = logging.getLogger(__name__)
POLL_S = 0.02
_conn_ids = itertools.count(1)


def routes() -> list[web.RouteDef]:
    # the testnet's host is stream-testnet.bybit.com (ccxt sandbox mode): the same streams
    return [
        web.get("/stream/v5/private", private_stream),
        web.get("/stream-testnet/v5/private", private_stream),
        web.get("/stream/v5/public/linear", public_stream),
        web.get("/stream-testnet/v5/public/linear", public_stream),
    ]


#: Real seconds between pushes of the candle in progress (public ``kline`` topic).
PUSH_INTERVAL_S = 0.2


async def public_stream(request: web.Request) -> web.StreamResponse:
    """``wss://stream.bybit.com/v5/public/linear``: the ``kline.{interval}.{symbol}`` topic
    (docs/v5/websocket/public/kline). Every push carries the candle in progress (``confirm``
    false) and, once a candle has closed, its final state (``confirm`` true); a ``drop`` fault
    closes the socket without a close frame."""
    from .bybit import FAMILY, INTERVALS

    state = state_of(request)
    ws = web.WebSocketResponse(autoping=True, heartbeat=None)
    await ws.prepare(request)
    state.log("bybit", request.path, {}, 101)
    conn_id = f"local-{next(_conn_ids)}"
    subs: dict[str, list] = {}  # topic -> [market, interval, last candle open sent]
    pusher = asyncio.create_task(_push_klines(ws, request, state, subs))
    try:
        async for req in _requests(ws, conn_id):
            op, req_id = req.get("op"), req.get("req_id")
            if op in ("subscribe", "unsubscribe"):
                bad = None
                for topic in req.get("args") or []:
                    kind, _, rest = topic.partition(".")
                    interval, _, symbol = rest.partition(".")
                    market = state.markets.get((FAMILY, symbol))
                    if kind != "kline" or interval not in INTERVALS or market is None:
                        bad = topic
                    elif op == "subscribe":
                        subs[topic] = [market, INTERVALS[interval], None]
                    else:
                        subs.pop(topic, None)
                await ws.send_json(
                    {
                        "success": bad is None,
                        "ret_msg": "" if bad is None else f"error:handler not found,topic:{bad}",
                        "conn_id": conn_id,
                        "req_id": req_id,
                        "op": op,
                    }
                )
    finally:
        pusher.cancel()
    return ws


async def _push_klines(ws, request, state, subs: dict) -> None:
    from ..market import INTERVALS_MS

    try:
        while not ws.closed:
            await asyncio.sleep(PUSH_INTERVAL_S)
            now = state.clock.now_ms()
            for topic, (market, interval, last_open) in list(subs.items()):
                if state.faults.decide("ws", WS_KINDS[:1]) == "drop":  # the websocket channel, as the private stream
                    request.transport.close()
                    return
                tf = INTERVALS_MS[interval]
                rows = market.klines(interval, now, now - tf if last_open is None else last_open, None, 1000)
                data = [
                    {
                        "start": row[0],
                        "end": row[0] + tf - 1,
                        "interval": topic.split(".")[1],
                        "open": row[1],
                        "close": row[4],
                        "high": row[2],
                        "low": row[3],
                        "volume": row[5],
                        "turnover": row[7],
                        "confirm": row[0] + tf <= now,
                        "timestamp": now,
                    }
                    for row in rows
                ]
                for row in data:
                    await ws.send_json({"topic": topic, "data": [row], "ts": now, "type": "snapshot"})
                if rows:
                    last = rows[-1][0]
                    subs[topic][2] = last + tf if last + tf <= now else last
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    except Exception:
        log.exception("bybit kline stream push failed")


def _order_from_event(trading, account, o: dict) -> dict:
    """A ``order`` topic row from the book's order event (its state at that event)."""
    order = account.orders.get(int(o["i"]))
    row = bybit_trading.order_json(trading, account, order) if order is not None else {}
    status = bybit_trading.STATUS.get(o["X"], "New")
    cum = float(o["z"])  # a partly filled order canceled is Cancelled with its cumExecQty (linear)
    qty = float(o["q"])
    open_ = o["X"] in ("NEW", "PARTIALLY_FILLED")
    row.update(
        orderStatus=status,
        cumExecQty=fmt(cum),
        avgPrice=fmt(float(o["ap"])) if cum else "",
        cumExecValue=fmt(cum * float(o["ap"])),
        leavesQty=fmt(qty - cum if open_ else 0.0),
        updatedTime=str(o["T"]),
        category="linear",
    )
    return row


def _execution_from_event(trading, account, o: dict) -> dict:
    order = account.orders.get(int(o["i"]))
    return {
        "category": "linear",
        "symbol": o["s"],
        "execFee": o["n"],
        "execId": str(o["t"]),
        "execPrice": o["L"],
        "execQty": o["l"],
        "execType": "Trade",
        "execValue": fmt(float(o["l"]) * float(o["L"])),
        "isMaker": bool(o["m"]),
        "feeRate": fmt(trading.maker_fee if o["m"] else trading.taker_fee),
        "tradeIv": "",
        "markIv": "",
        "blockTradeId": "",
        "markPrice": o["L"],
        "indexPrice": "",
        "underlyingPrice": "",
        "leavesQty": fmt(max(float(o["q"]) - float(o["z"]), 0.0)),
        "orderId": str(o["i"]),
        "orderLinkId": o["c"],
        "orderPrice": o["p"],
        "orderQty": o["q"],
        "orderType": order.type.capitalize() if order else "Limit",
        "stopOrderType": "UNKNOWN",
        "side": o["S"].capitalize(),
        "execTime": str(o["T"]),
        "isLeverage": "0",
        "closedSize": "",
        "seq": int(o["t"]),
    }


def messages(trading, account, event: dict, topics: set[str]) -> list[dict]:
    """The Bybit pushes for one event of the book (Binance-shaped in ``account.events``)."""
    now = int(event.get("E") or trading.state.clock.now_ms())
    out: list[tuple[str, dict]] = []
    if event.get("e") == "ORDER_TRADE_UPDATE":
        o = event["o"]
        out.append(("order", _order_from_event(trading, account, o)))
        if o["x"] == "TRADE":
            out.append(("execution", _execution_from_event(trading, account, o)))
    elif event.get("e") == "BYBIT_ORDER":  # a PostOnly order Bybit accepted, then cancelled
        out.append(("order", {**event["o"], "category": "linear"}))
    elif event.get("e") == "ACCOUNT_UPDATE":
        for p in event["a"]["P"]:
            out.append(("position", {**bybit_trading._position_json(trading, account, p["s"]), "category": "linear"}))
        out.append(("wallet", bybit_trading.wallet(None, trading, account, {})["list"][0]))
    return [
        {"id": f"local-{now}-{k}", "topic": topic, "creationTime": now, "data": [row]}
        for k, (topic, row) in enumerate(out)
        if topic in topics
    ]


async def _requests(ws, conn_id: str):
    """The JSON requests a client sends on a Bybit v5 socket (public or private); pings are
    answered here, anything that is not a JSON text frame is ignored."""
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        try:
            req = json.loads(msg.data)
        except ValueError:
            continue
        if req.get("op") == "ping":
            await ws.send_json({"success": True, "ret_msg": "pong", "conn_id": conn_id, "req_id": req.get("req_id"), "op": "ping"})
            continue
        yield req


async def private_stream(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    trading = state.trading
    ws = web.WebSocketResponse(autoping=True, heartbeat=None)
    await ws.prepare(request)
    conn_id = f"local-{next(_conn_ids)}"
    account, topics, pusher = None, set(), None
    try:
        async for req in _requests(ws, conn_id):
            op, req_id = req.get("op"), req.get("req_id")
            if op == "auth":
                account = _authenticate(trading, req.get("args") or [])
                await ws.send_json(
                    {
                        "success": account is not None,
                        "ret_msg": "" if account else "Invalid apikey or sign",
                        "op": "auth",
                        "conn_id": conn_id,
                        "req_id": req_id,
                    }
                )
                if account is not None and pusher is None:
                    with trading.lock:
                        cursor = len(account.events)
                    state.log("bybit", request.path, {}, 101)  # following events from here (tests wait for it)
                    pusher = asyncio.create_task(_push(ws, request, state, account, topics, cursor))
            elif op == "subscribe":
                ok = account is not None
                if ok:
                    topics.update(req.get("args") or [])
                await ws.send_json(
                    {
                        "success": ok,
                        "ret_msg": "" if ok else "Request not authorized",
                        "conn_id": conn_id,
                        "req_id": req_id,
                        "op": "subscribe",
                    }
                )
    finally:
        if pusher is not None:
            pusher.cancel()
    return ws


def _authenticate(trading, args: list):
    if len(args) != 3:
        return None
    key, expires, signature = (str(a) for a in args)
    account = trading.accounts.get(key)
    if account is None or not expires.isdigit() or int(expires) < time.time() * 1000:
        return None
    want = hmac.new(account.secret.encode(), f"GET/realtime{expires}".encode(), hashlib.sha256).hexdigest()
    return account if hmac.compare_digest(want, signature.lower()) else None


async def _push(ws, request, state, account, topics: set[str], cursor: int) -> None:
    trading = state.trading
    held: list[asyncio.Task] = []
    try:
        while not ws.closed:
            await asyncio.sleep(POLL_S)
            with trading.lock:
                fresh = account.events[cursor:]
                batches = [messages(trading, account, event, topics) for _, event in fresh]
            for batch in batches:
                cursor += 1
                for message in batch:
                    fault = state.faults.decide("ws", WS_KINDS)
                    if fault == "drop":
                        request.transport.close()
                        return
                    if fault == "ws_delay":
                        held.append(asyncio.create_task(_later(ws, message, state.faults.ws_delay_s)))
                        continue
                    await ws.send_json(message)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    except Exception:
        log.exception("bybit private stream push failed")
    finally:
        for task in held:
            if not task.done():
                task.cancel()


async def _later(ws, message: dict, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    if not ws.closed:
        try:
            await ws.send_json(message)
        except ConnectionResetError:
            pass

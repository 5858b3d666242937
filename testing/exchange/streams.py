"""Binance market websocket streams (kline, aggTrade) as ccxt.pro subscribes to them.

ccxt.pro connects to ``<ws base>/<n>`` and sends ``{"method": "SUBSCRIBE", "params":
["btcusdt@kline_1m"], "id": 1}``; the answer is ``{"result": null, "id": 1}`` and then kline events
for the candle in progress (``"x": false``) and, when it closes, its final state (``"x": true``).

Where the streams live locally (``exchange.url`` maps each websocket host's first DNS label to the
first path segment): spot ``wss://stream.binance.com:9443/ws`` -> ``/stream/ws``; USD-M
``wss://fstream.binance.com/ws`` -> ``/fstream/ws``, which ccxt.pro rewrites to
``/fstream/market/ws`` for market streams.
"""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
from aiohttp import WSMsgType, web

from .faults import WS_KINDS
from .http import state_of
from .market import INTERVALS_MS, BinanceError, _num

log = logging.getLogger(__name__)

#: Real seconds between pushes of the candle in progress.
PUSH_INTERVAL_S = 0.2


def routes() -> list[web.RouteDef]:
    return [
        web.get("/stream/ws", spot_stream),
        web.get("/stream/ws/{n}", spot_stream),
        web.get("/fstream/ws", usdm_stream),
        web.get("/fstream/ws/{n}", usdm_stream),
        web.get("/fstream/market/ws", usdm_stream),
        web.get("/fstream/market/ws/{n}", usdm_stream),
    ]


async def spot_stream(request: web.Request) -> web.WebSocketResponse:
    return await _serve(request, "spot")


async def usdm_stream(request: web.Request) -> web.WebSocketResponse:
    return await _serve(request, "usdm")


def _event(market, interval: str, row: list, closed: bool, now_ms: int) -> dict:
    return {
        "e": "kline",
        "E": now_ms,
        "s": market.symbol_id,
        "k": {
            "t": row[0],
            "T": row[6],
            "s": market.symbol_id,
            "i": interval,
            "f": 0,
            "L": 0,
            "o": row[1],
            "c": row[4],
            "h": row[2],
            "l": row[3],
            "v": row[5],
            "n": 0,
            "x": closed,
            "q": row[7],
            "V": "0",
            "Q": "0",
            "B": "0",
        },
    }


async def _serve(request: web.Request, family: str) -> web.WebSocketResponse:
    state = state_of(request)
    ws = web.WebSocketResponse(autoping=True)
    await ws.prepare(request)
    state.log(family, request.path, dict(request.query), 101)
    subs: dict[str, tuple] = {}  # stream name -> (market, interval, last bucket open sent)
    pusher = asyncio.create_task(_push(ws, request, state, subs))
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                req = json.loads(msg.data)
                method, params, req_id = req.get("method"), req.get("params") or [], req.get("id")
            except (ValueError, AttributeError):
                await ws.send_json({"error": {"code": 3, "msg": "Invalid JSON"}})
                continue
            if method == "SUBSCRIBE":
                try:
                    for name in params:
                        subs[name] = _subscription(state, family, name)
                except BinanceError as exc:
                    await ws.send_json({"error": {"code": exc.code, "msg": exc.msg}, "id": req_id})
                    continue
                await ws.send_json({"result": None, "id": req_id})
            elif method == "UNSUBSCRIBE":
                for name in params:
                    subs.pop(name, None)
                await ws.send_json({"result": None, "id": req_id})
            elif method == "LIST_SUBSCRIPTIONS":
                await ws.send_json({"result": sorted(subs), "id": req_id})
            else:
                await ws.send_json({"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": req_id})
    finally:
        pusher.cancel()
    return ws


def _subscription(state, family: str, name: str) -> tuple:
    symbol, _, channel = name.partition("@")
    if channel == "aggTrade":  # aggregate trades of the attached tape (see .tapes), from now on
        market = state.market(family, symbol.upper())
        agg = state.agg_tape(family, market.symbol_id)
        return (market, "aggTrade", int(np.searchsorted(agg.ts, state.clock.now_ms(), "right")))
    kind, _, interval = channel.partition("_")
    if kind != "kline" or interval not in INTERVALS_MS:
        raise BinanceError(2, f"Invalid request: stream {name!r} is not served by the local exchange")
    return (state.market(family, symbol.upper()), interval, None)


async def _push(ws: web.WebSocketResponse, request: web.Request, state, subs: dict) -> None:
    try:
        while not ws.closed:
            await asyncio.sleep(PUSH_INTERVAL_S)
            now = state.clock.now_ms()
            for name, (market, interval, last_open) in list(subs.items()):
                if state.faults.decide(request.path, WS_KINDS[:1]) == "drop":
                    # an abrupt drop: the TCP connection goes away without a close frame
                    request.transport.close()
                    return
                if interval == "aggTrade":
                    subs[name] = (market, interval, await _push_trades(ws, state, market.family, market, last_open, now))
                    continue
                tf = INTERVALS_MS[interval]
                start = now - tf if last_open is None else last_open
                rows = market.klines(interval, now, start, None, 1000)
                for row in rows:
                    closed = row[0] + tf <= now
                    await ws.send_json(_event(market, interval, row, closed, now))
                if rows:
                    # resume at the candle in progress, or after the last one if it has closed
                    last = rows[-1][0]
                    subs[name] = (market, interval, last + tf if last + tf <= now else last)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    except Exception:  # a bug here must be visible in the test log, not a silent dead stream
        log.exception("kline stream push failed")


async def _push_trades(ws: web.WebSocketResponse, state, family: str, market, sent: int, now: int) -> int:
    """Aggregate-trade events (Binance ``<symbol>@aggTrade``) of the tape's prints up to ``now``
    not sent yet; returns how many of the tape's rows have been sent."""
    from .tapes import FIRST_AGG_ID

    agg = state.agg_tape(family, market.symbol_id)
    upto = int(np.searchsorted(agg.ts, now, "right"))
    for i in range(sent, upto):
        await ws.send_json(
            {
                "e": "aggTrade",
                "E": now,
                "s": market.symbol_id,
                "a": FIRST_AGG_ID + i,
                "p": _num(float(agg.price[i])),
                "q": _num(float(agg.qty[i])),
                "f": int(agg.trade_id[i]),
                "l": int(agg.last_id[i]),
                "T": int(agg.ts[i]),
                "m": bool(agg.side[i] < 0),
            }
        )
    return max(upto, sent)

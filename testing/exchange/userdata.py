"""The USD-M user-data websocket: order and account updates for one listen key.

ccxt.pro (``watch_orders``, ``watch_my_trades``, ``watch_balance``, ``watch_positions``) first
calls ``POST /fapi/v1/listenKey`` and then connects to ``wss://fstream.binance.com/private/ws?
listenKey=KEY``, which ``exchange.url`` maps to ``/fstream/private/ws?listenKey=KEY`` here (the
older ``/fstream/ws/KEY`` form is answered too). Nothing is sent by the client; the server pushes
every event of the account that happens after the connection opened, in order:

* ``ORDER_TRADE_UPDATE`` (``x`` = ``NEW``, ``TRADE``, ``CANCELED``, ``EXPIRED``) with the order in ``o``;
* ``ACCOUNT_UPDATE`` (``a.m`` = ``ORDER``, ``FUNDING_FEE``, ``MARGIN_TRANSFER``) with the USDT
  balance in ``a.B`` and the changed position in ``a.P``;
* ``listenKeyExpired`` when the key is closed (``DELETE /fapi/v1/listenKey``) or expires (no
  ``POST``/``PUT`` keep-alive for ``Trading.listen_key_ttl_s`` real seconds, 60 minutes as on
  Binance), then the socket closes; connecting with a dead key is answered -1125.

Events missed while disconnected are not replayed (as on Binance): a client re-reads state over
REST after reconnecting. Faults (:class:`~.faults.FaultPlan`, websocket kinds, decided once per
pushed event; the account's own plan if it has one): ``drop`` closes the connection without a
close frame; ``ws_delay`` holds the event back for ``FaultPlan.ws_delay_s`` (later events overtake
it, so they arrive out of order); ``silent`` stops pushing on this connection, which stays open.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .faults import WS_KINDS
from .http import state_of

log = logging.getLogger(__name__)

#: Real seconds between two looks at the account's event list.
POLL_S = 0.02


def routes() -> list[web.RouteDef]:
    return [
        web.get("/fstream/private/ws", user_stream),
        web.get("/fstream/ws/{listen_key:[0-9a-f]{64}}", user_stream),
    ]


async def user_stream(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    trading = state.trading
    key = request.query.get("listenKey") or request.match_info.get("listen_key", "")
    api_key = trading.listen_keys.get(key) if trading.listen_key_alive(key) else None
    if api_key is None:
        return web.json_response({"code": -1125, "msg": "This listenKey does not exist."}, status=400)
    account = trading.account(api_key)
    ws = web.WebSocketResponse(autoping=True, heartbeat=None)
    await ws.prepare(request)
    with trading.lock:
        cursor = len(account.events)  # index of the first event this connection gets (events only grow)
    state.log("usdm", request.path, {}, 101)  # logged once events are being followed (tests wait for it)
    pusher = asyncio.create_task(_push(ws, request, state, account, key, cursor))
    try:
        async for _ in ws:  # clients send nothing we answer; pings are handled by aiohttp
            pass
    finally:
        pusher.cancel()
    return ws


async def _push(ws: web.WebSocketResponse, request: web.Request, state, account, key: str, cursor: int) -> None:
    trading = state.trading
    plan = trading.plan_for(account.api_key)
    held: list[asyncio.Task] = []
    silent = False
    try:
        while not ws.closed:
            await asyncio.sleep(POLL_S)
            with trading.lock:
                fresh = account.events[cursor:]
                alive = trading.listen_key_alive(key)
            for _, event in fresh:
                cursor += 1
                if silent:
                    continue
                fault = plan.decide("ws", WS_KINDS)
                if fault == "silent":  # the socket stays open, nothing more is pushed on it
                    silent = True
                    continue
                if fault == "drop":
                    request.transport.close()  # abrupt: no close frame
                    return
                if fault == "ws_delay":
                    held.append(asyncio.create_task(_later(ws, event, plan.ws_delay_s)))
                    continue
                await ws.send_json(event)
            if not alive and not silent:
                await ws.send_json({"e": "listenKeyExpired", "E": state.clock.now_ms(), "listenKey": key})
                await ws.close()
                return
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    except Exception:
        log.exception("user-data stream push failed")
    finally:
        for task in held:
            if not task.done():
                task.cancel()


async def _later(ws: web.WebSocketResponse, event: dict, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    if not ws.closed:
        try:
            await ws.send_json(event)
        except ConnectionResetError:
            pass

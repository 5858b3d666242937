"""Test-only control endpoints under ``/_control`` (not part of any Binance API).

``GET /_control/state``  clock, request counts per path and status, faults injected so far.
``POST /_control/clock`` ``{"start_ms": ..., "speed": ...}`` sets the exchange clock.
``POST /_control/faults`` ``{"seed": 7, "rates": {...}, "script": [["klines", "rate_limit"], ...]}``
replaces the fault plan (other :class:`~.faults.FaultPlan` fields may be given too).
``POST /_control/inject`` ``{"script": [["order", "accepted_timeout"], ["ws", "drop"]]}`` queues
scripted faults on the current plan (its seeded streams and counts carry on).
``POST /_control/faults/paused`` ``{"paused": true}`` holds every fault plan's faults off (its
seeded streams and counts carry on) until ``{"paused": false}``.

Trading (``api_key`` defaults to the test account ``local-test-key``; answers are JSON):

``GET /_control/truth?api_key=K``  the exchange's truth for an account: ``now_ms``, ``wallet``,
    ``available``, ``open_orders`` (as ``GET /fapi/v1/order`` answers them), ``orders`` (count),
    ``positions`` (``{symbol: {amt, entry, isolated_wallet, liquidation_price}}``, non-zero only),
    ``fills`` (as ``GET /fapi/v1/userTrades`` rows), ``leverage``, ``margin_type``.
``POST /_control/advance`` ``{"ms": 60000}`` (or ``{"to_ms": T}``) moves the clock forward (the
    speed is kept) and matches resting orders along the real price path up to the new time.
``POST /_control/cancel`` ``{"order_id": N}`` or ``{"client_order_id": "..."}`` cancels an open
    order as if the user did it in the exchange's web page (``ORDER_TRADE_UPDATE`` ``CANCELED``).
``POST /_control/partial_fill`` ``{"order_id": N, "qty": 0.004}`` fills part of a resting order
    now, at its price, as maker.
``POST /_control/account`` ``{"api_key": K, "secret": S, "usdt": 10000}`` opens another account.
``POST /_control/skew`` ``{"ms": 2000}`` shifts the clock the recvWindow check uses (-1021).

They let a test drive an exchange running in another process the way an in-process test changes
``server.state`` directly.
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from .faults import FaultPlan
from .http import state_of
from .market import BinanceError
from .trading import TEST_API_KEY, TEST_SECRET, order_json


def routes() -> list[web.RouteDef]:
    return [
        web.get("/_control/state", get_state),
        web.post("/_control/clock", set_clock),
        web.post("/_control/faults", set_faults),
        web.post("/_control/faults/paused", pause_faults),
        web.post("/_control/inject", inject),
        web.get("/_control/truth", truth),
        web.post("/_control/advance", advance),
        web.post("/_control/cancel", cancel),
        web.post("/_control/partial_fill", partial_fill),
        web.post("/_control/account", add_account),
        web.post("/_control/skew", skew),
    ]


async def get_state(request: web.Request) -> web.Response:
    state = state_of(request)
    with state.lock:
        counts = Counter(f"{path} {status}" for _, path, _, status in state.requests)
    return web.json_response(
        {"now_ms": state.clock.now_ms(), "speed": state.clock.speed, "requests": dict(counts), "faults": state.faults.counts()}
    )


async def set_clock(request: web.Request) -> web.Response:
    body = await request.json()
    state = state_of(request)
    state.clock.set(int(body.get("start_ms", state.clock.now_ms())), body.get("speed"))
    return web.json_response({"now_ms": state.clock.now_ms()})


async def inject(request: web.Request) -> web.Response:
    body = await request.json()
    plan = state_of(request).faults
    try:
        for path, *kinds in body.get("script", []):
            plan.script(path, *kinds)
    except (TypeError, ValueError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({"ok": True})


async def set_faults(request: web.Request) -> web.Response:
    body = dict(await request.json())
    script = body.pop("script", [])
    if "paths" in body and body["paths"] is not None:
        body["paths"] = tuple(body["paths"])
    try:
        plan = FaultPlan(**body)
        for path, *kinds in script:
            plan.script(path, *kinds)
    except (TypeError, ValueError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    state_of(request).faults = plan
    return web.json_response({"ok": True})


async def pause_faults(request: web.Request) -> web.Response:
    paused = (await request.json()).get("paused")
    if not isinstance(paused, bool):
        return web.json_response({"error": "paused: true or false"}, status=400)
    state = state_of(request)
    with state.trading.lock:
        plans = [state.faults, *state.trading.plans.values()]
    for plan in plans:
        plan.paused = paused
    return web.json_response({"paused": paused})


def _answer(call):
    try:
        return web.json_response(call())
    except BinanceError as exc:
        return web.json_response({"code": exc.code, "msg": exc.msg}, status=exc.status)


async def truth(request: web.Request) -> web.Response:
    trading = state_of(request).trading
    return _answer(lambda: trading.truth(request.query.get("api_key", TEST_API_KEY)))


async def advance(request: web.Request) -> web.Response:
    body = await request.json()
    state = state_of(request)
    with state.trading.lock:
        now = state.clock.now_ms()
        target = int(body["to_ms"]) if "to_ms" in body else now + int(body.get("ms", 0))
        if target < now:
            return web.json_response({"error": "advance cannot move the clock back; use /_control/clock"}, status=400)
        state.clock.set(target)
        state.trading.sync(target)
    return web.json_response({"now_ms": state.clock.now_ms()})


async def cancel(request: web.Request) -> web.Response:
    body = await request.json()
    trading = state_of(request).trading
    api_key = body.get("api_key", TEST_API_KEY)

    def run():
        order = trading.find(trading.account(api_key), body.get("order_id"), body.get("client_order_id"))
        if order is None:
            raise BinanceError(-2011, "Unknown order sent.")
        return order_json(trading.cancel(api_key, {"symbol": order.symbol, "orderId": order.order_id}))

    return _answer(run)


async def partial_fill(request: web.Request) -> web.Response:
    body = await request.json()
    trading = state_of(request).trading
    return _answer(lambda: order_json(trading.partial_fill(body.get("api_key", TEST_API_KEY), int(body["order_id"]), float(body["qty"]))))


async def add_account(request: web.Request) -> web.Response:
    body = await request.json()
    trading = state_of(request).trading
    account = trading.add_account(body.get("api_key", TEST_API_KEY), body.get("secret", TEST_SECRET), float(body.get("usdt", 10_000)))
    return web.json_response({"api_key": account.api_key, "wallet": account.wallet})


async def skew(request: web.Request) -> web.Response:
    body = await request.json()
    state_of(request).trading.clock_skew_ms = int(body.get("ms", 0))
    return web.json_response({"ms": state_of(request).trading.clock_skew_ms})

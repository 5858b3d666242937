"""Test-only control endpoints under ``/_control`` (not part of any Binance API).

``GET /_control/state``  clock, request counts per path and status, faults injected so far.
``POST /_control/clock`` ``{"start_ms": ..., "speed": ...}`` sets the exchange clock.
``POST /_control/faults`` ``{"seed": 7, "rates": {...}, "script": [["klines", "rate_limit"], ...]}``
replaces the fault plan (other :class:`~.faults.FaultPlan` fields may be given too).

They let a test drive an exchange running in another process the way an in-process test changes
``server.state`` directly.
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from .faults import FaultPlan
from .http import state_of


def routes() -> list[web.RouteDef]:
    return [
        web.get("/_control/state", get_state),
        web.post("/_control/clock", set_clock),
        web.post("/_control/faults", set_faults),
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

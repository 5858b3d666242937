"""The local exchange's aiohttp app and two ways to run it.

* In-process, on a background thread (for pytest fixtures and notebooks)::

      with ExchangeServer(binance_state()) as server:
          exchange = ccxt.binance({"options": LOCAL_OPTIONS["binance"]})
          point_ccxt_at(exchange, server.url)

* As a subprocess that a test can SIGKILL and restart::

      python -m btc_quant.testing.exchange --port 0 --speed 60
      # prints one JSON line: {"url": "http://127.0.0.1:PORT", "port": PORT, ...}

The app is a thin layer: the route tables of each API dialect the state's markets need
(:mod:`.dialects`: Binance :mod:`.spot`/:mod:`.usdm`/..., Bybit, Coinbase), :mod:`.streams`, the
test-only ``/_control``, and one middleware that applies the :class:`~.faults.FaultPlan`, turns
:class:`~.market.BinanceError` into Binance's error answers and logs every request on the
:class:`~.market.ExchangeState`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from email.utils import formatdate

from aiohttp import web

from . import control, dialects, streams
from .dialects import family_of
from .http import FAULT, STATE
from .market import BinanceError, ExchangeState


def _rate_limited(plan, banned: bool) -> web.Response:
    if banned:
        until = int((time.time() + plan.ban_s) * 1000)
        return web.json_response(
            {
                "code": -1003,
                "msg": f"Way too many requests; IP banned until {until}. Please use the websocket for live updates to avoid bans.",
            },
            status=418,
            headers={"Retry-After": f"{max(plan.ban_s, 0):g}"},
        )
    return web.json_response(
        {"code": -1003, "msg": "Too many requests; current limit of IP is 2400 requests per minute."},
        status=429,
        headers={"Retry-After": f"{max(plan.retry_after_s, 0):g}"},
    )


async def _handle(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BinanceError as exc:
        return web.json_response({"code": exc.code, "msg": exc.msg}, status=exc.status)


@web.middleware
async def exchange_middleware(request: web.Request, handler) -> web.StreamResponse:
    state: ExchangeState = request.app[STATE]
    if request.headers.get("Upgrade", "").lower() == "websocket" or request.path.startswith("/_control"):
        return await handler(request)
    api_key = request.headers.get("X-MBX-APIKEY")
    plan = state.trading.plan_for(api_key)
    fault = plan.decide(request.path)
    gated = plan.gate(time.monotonic(), fault) if plan.eligible(request.path) else fault
    if gated in ("still_limited", "escalated_ban", "banned"):
        plan.record(request.path, "rate_limit" if gated == "still_limited" else "ip_ban")
        fault = "rate_limit" if gated == "still_limited" else "ip_ban"
    request[FAULT] = fault
    response: web.StreamResponse
    dialect = dialects.dialect_of(request.path)
    shaped = dialect.fault_response(fault, plan) if dialect is not None and dialect.fault_response and fault else None
    if shaped is not None and fault not in ("accepted_error", "accepted_timeout"):
        response = shaped  # the dialect's own 429/403/5xx answer
    elif fault in ("rate_limit", "ip_ban"):
        response = _rate_limited(plan, banned=fault == "ip_ban")
    elif fault == "recv_window":
        response = web.json_response({"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}, status=400)
    elif fault == "late_execution":
        await request.read()  # the body, kept for the late run
        task = asyncio.get_running_loop().create_task(_late(request, handler, plan))
        _LATE.add(task)
        task.add_done_callback(_LATE.discard)
        await asyncio.sleep(plan.timeout_s)  # the client gives up first (and the wait is cancelled)
        response = web.json_response(
            {"code": -1007, "msg": "Timeout waiting for response from backend server. Send status unknown; execution status unknown."},
            status=plan.status,
        )
    elif fault == "server_error":
        response = web.json_response(
            {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}, status=plan.status
        )
    elif fault in ("accepted_error", "accepted_timeout"):
        response = await _handle(request, handler)  # executed: the exchange's state has changed
        if fault == "accepted_timeout":
            await asyncio.sleep(plan.timeout_s)  # the client gives up first (and the wait is cancelled)
        elif shaped is not None:
            response = shaped
        else:
            response = web.json_response(
                {"code": -1007, "msg": "Timeout waiting for response from backend server. Send status unknown; execution status unknown."},
                status=plan.status,
            )
    else:
        if fault == "clock_skew":
            plan.skew()
        if fault in ("timeout", "slow"):
            await asyncio.sleep(plan.timeout_s if fault == "timeout" else plan.slow_s)
        response = await _handle(request, handler)
    # the exchange's clock, as real servers send it (what a client can measure its offset with)
    response.headers["Date"] = formatdate(time.time() + state.trading.skew_ms(api_key) / 1000, usegmt=True)
    state.log(family_of(request.path), request.path, dict(request.query), response.status, request.method)
    return response


#: late executions under way (kept referenced until they ran)
_LATE: set = set()


async def _late(request: web.Request, handler, plan) -> None:
    """A ``late_execution`` fault: the request reaches the book ``late_s`` after it arrived; the
    signed request's ``timestamp + recvWindow`` is checked then, as Binance does on arrival."""
    await asyncio.sleep(plan.late_s)
    try:
        response = await _handle(request, handler)
    except Exception:  # noqa: BLE001 - the client is long gone; the fault's outcome is what counts
        logging.getLogger(__name__).exception("late execution failed")
        return
    refused = response.status == 400 and b"-1021" in (getattr(response, "body", b"") or b"")
    plan.record(request.path, "late_refused" if refused else "late_executed")


#: Real seconds between two runs of the matcher (fills, funding, liquidations as the clock runs).
MATCH_INTERVAL_S = 0.05


async def _matcher(app: web.Application):
    """Background task: keep matching resting orders against the price path while time runs."""
    state: ExchangeState = app[STATE]

    async def run() -> None:
        while True:
            await asyncio.sleep(MATCH_INTERVAL_S)
            try:
                state.trading.sync()
            except Exception:  # a bug here must show in the log, not stop matching silently
                logging.getLogger(__name__).exception("matching failed")

    task = asyncio.create_task(run())
    yield
    task.cancel()


def build_app(state: ExchangeState) -> web.Application:
    app = web.Application(middlewares=[exchange_middleware])
    app[STATE] = state
    families = state.families()
    for dialect in dialects.serving(families):  # Binance, Bybit, Coinbase: see .dialects
        app.add_routes(dialect.routes(families))
    if state.trading.family in families:  # the trading book's market is listed: match as time runs
        app.cleanup_ctx.append(_matcher)
    app.add_routes(streams.routes())
    app.add_routes(control.routes())
    return app


class ExchangeServer:
    """Runs the app on 127.0.0.1 (port 0 = any free port) in a background thread."""

    def __init__(self, state: ExchangeState, host: str = "127.0.0.1", port: int = 0):
        self.state = state
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ExchangeServer:
        self._thread = threading.Thread(target=self._run, name="local-exchange", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    async def _serve(self) -> None:
        self._runner = web.AppRunner(build_app(self.state), shutdown_timeout=1.0, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
            self._loop = None

    def __enter__(self) -> ExchangeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def serve_forever(state: ExchangeState, host: str, port: int, announce) -> None:
    """Serve until cancelled; ``announce(port)`` is called once the socket is listening."""
    runner = web.AppRunner(build_app(state), shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    announce(site._server.sockets[0].getsockname()[1])
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()

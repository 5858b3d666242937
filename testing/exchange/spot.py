"""Binance spot market-data endpoints (``/api/v3``) as ccxt's ``binance`` calls them."""

from __future__ import annotations

from aiohttp import web

from .http import cut, int_param, required, state_of


def routes() -> list[web.RouteDef]:
    from . import tapes  # aggTrades of an attached trade tape

    return [
        web.get("/api/v3/ping", ping),
        web.get("/api/v3/time", server_time),
        web.get("/api/v3/exchangeInfo", exchange_info),
        web.get("/api/v3/klines", klines),
        *tapes.routes("spot"),
    ]


async def ping(request: web.Request) -> web.Response:
    return web.json_response({})


async def server_time(request: web.Request) -> web.Response:
    return web.json_response({"serverTime": state_of(request).clock.now_ms()})


async def exchange_info(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).exchange_info("spot"))


async def klines(request: web.Request, family: str = "spot", max_limit: int = 1000) -> web.Response:
    state = state_of(request)
    market = state.market(family, required(request, "symbol"))
    interval = required(request, "interval")
    limit = int_param(request, "limit", 500, low=1, high=max_limit)
    rows = market.klines(interval, state.clock.now_ms(), int_param(request, "startTime"), int_param(request, "endTime"), limit)
    return web.json_response(cut(rows, request))

"""Binance USD-M futures market-data endpoints (``/fapi/v1``) as ccxt's ``binanceusdm`` calls them."""

from __future__ import annotations

from aiohttp import web

from . import spot
from .http import cut, int_param, state_of


def routes() -> list[web.RouteDef]:
    return [
        web.get("/fapi/v1/ping", spot.ping),
        web.get("/fapi/v1/time", spot.server_time),
        web.get("/fapi/v1/exchangeInfo", exchange_info),
        web.get("/fapi/v1/klines", klines),
        web.get("/fapi/v1/fundingRate", funding_rate),
    ]


async def exchange_info(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).exchange_info("usdm"))


async def klines(request: web.Request) -> web.Response:
    # USD-M allows up to 1500 candles per request (spot: 1000)
    return await spot.klines(request, family="usdm", max_limit=1500)


async def funding_rate(request: web.Request) -> web.Response:
    state = state_of(request)
    market = state.market("usdm", request.query.get("symbol") or "BTCUSDT")
    limit = int_param(request, "limit", 100, low=1, high=1000)
    rows = market.funding(state.clock.now_ms(), int_param(request, "startTime"), int_param(request, "endTime"), limit)
    return web.json_response(cut(rows, request))

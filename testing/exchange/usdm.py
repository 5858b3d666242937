"""Binance USD-M futures market-data endpoints (``/fapi/v1``) as ccxt's ``binanceusdm`` calls them.

Tickers come from the recorded bars: ``ticker/24hr`` aggregates the last 24 hours of 1m bars up to
now (``fetch_ticker``), ``ticker/price`` is the last price of the replayed path, and
``premiumIndex`` (``fetch_funding_rate``, ``fetch_mark_price``) gives that price as mark and index
price (the data has no separate mark/index series) with the recorded rate of the next funding
time. There is no order book (``depth``): the exchange matches against the last traded price.
"""

from __future__ import annotations

import numpy as np
from aiohttp import web

from . import spot
from .http import cut, int_param, required, state_of
from .market import BinanceError, _num


def routes() -> list[web.RouteDef]:
    from . import tapes  # aggTrades of an attached trade tape

    return [
        web.get("/fapi/v1/ping", spot.ping),
        web.get("/fapi/v1/time", spot.server_time),
        web.get("/fapi/v1/exchangeInfo", exchange_info),
        web.get("/fapi/v1/klines", klines),
        web.get("/fapi/v1/markPriceKlines", mark_price_klines),
        web.get("/fapi/v1/fundingRate", funding_rate),
        web.get("/fapi/v1/ticker/24hr", ticker_24hr),
        web.get("/fapi/v1/ticker/price", ticker_price),
        web.get("/fapi/v1/premiumIndex", premium_index),
        *tapes.routes("usdm"),
    ]


async def exchange_info(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).exchange_info("usdm"))


async def klines(request: web.Request) -> web.Response:
    # USD-M allows up to 1500 candles per request (spot: 1000)
    return await spot.klines(request, family="usdm", max_limit=1500)


async def mark_price_klines(request: web.Request) -> web.Response:
    """``fetch_mark_ohlcv``: the recorded mark-price klines (:meth:`.market.Market.mark_klines`)."""
    state = state_of(request)
    market = state.market("usdm", required(request, "symbol"))
    limit = int_param(request, "limit", 500, low=1, high=1500)
    rows = market.mark_klines(
        required(request, "interval"), state.clock.now_ms(), int_param(request, "startTime"), int_param(request, "endTime"), limit
    )
    return web.json_response(cut(rows, request))


async def funding_rate(request: web.Request) -> web.Response:
    state = state_of(request)
    market = state.market("usdm", request.query.get("symbol") or "BTCUSDT")
    limit = int_param(request, "limit", 100, low=1, high=1000)
    rows = market.funding(state.clock.now_ms(), int_param(request, "startTime"), int_param(request, "endTime"), limit)
    return web.json_response(cut(rows, request))


def _market(request: web.Request):
    return state_of(request).market("usdm", request.query.get("symbol") or "BTCUSDT")


async def ticker_24hr(request: web.Request) -> web.Response:
    state = state_of(request)
    market = _market(request)
    now = state.clock.now_ms()
    rows = market.klines("1m", now, now - 86_400_000, None, 1500)
    if not rows:
        raise BinanceError(-1121, "Invalid symbol.")
    first, last = float(rows[0][1]), float(rows[-1][4])
    volume = sum(float(r[5]) for r in rows)
    quote = sum(float(r[7]) for r in rows)
    return web.json_response(
        {
            "symbol": market.symbol_id,
            "priceChange": _num(last - first),
            "priceChangePercent": f"{(last / first - 1) * 100:.3f}",
            "weightedAvgPrice": _num(quote / volume if volume else last),
            "lastPrice": _num(last),
            "lastQty": "0",
            "openPrice": _num(first),
            "highPrice": _num(max(float(r[2]) for r in rows)),
            "lowPrice": _num(min(float(r[3]) for r in rows)),
            "volume": _num(volume),
            "quoteVolume": _num(quote),
            "openTime": rows[0][0],
            "closeTime": now,
            "firstId": 0,
            "lastId": 0,
            "count": 0,
        }
    )


async def ticker_price(request: web.Request) -> web.Response:
    state = state_of(request)
    market = _market(request)
    now = state.clock.now_ms()
    return web.json_response({"symbol": market.symbol_id, "price": _num(market.price_at(now) or 0.0), "time": now})


async def premium_index(request: web.Request) -> web.Response:
    state = state_of(request)
    market = _market(request)
    now = state.clock.now_ms()
    price = _num(market.price_at(now) or 0.0)
    upcoming = np.flatnonzero(market.funding_ts > now)
    rate, next_time = (f"{market.funding_rate[upcoming[0]]:.8f}", int(market.funding_ts[upcoming[0]])) if len(upcoming) else ("0", 0)
    return web.json_response(
        {
            "symbol": market.symbol_id,
            "markPrice": price,
            "indexPrice": price,
            "estimatedSettlePrice": price,
            "lastFundingRate": rate,
            "interestRate": "0.00010000",
            "nextFundingTime": next_time,
            "time": now,
        }
    )

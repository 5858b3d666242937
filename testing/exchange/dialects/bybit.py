"""Bybit v5 public market data of the linear USDT perpetual, as ccxt's ``bybit`` client calls it,
and the Bybit venue set-up (:func:`bybit_state`; trading: :mod:`.bybit_trading`, :mod:`.bybit_ws`).

What ccxt 4.5 asks for (with ``options.fetchMarkets.types = ["linear"]``, which
:func:`btc_quant.plugins.exchanges.ccxt_client.market_options` sets for a data client), answered
here from the venue's recorded bars and funding rates:

* ``load_markets``: ``GET /v5/market/instruments-info?category=linear&limit=1000`` and the same with
  ``status=PreLaunch`` (none here);
* ``fetch_time``: ``GET /v5/market/time``;
* ``fetch_ohlcv``: ``GET /v5/market/kline?category=linear&symbol=BTCUSDT&interval=1&start=..&limit=..``.
  Rows are ``[startTime, open, high, low, close, volume, turnover]`` as strings, **newest first**;
  ``limit`` is 1..1000 (default 200). With ``start`` the page holds the first ``limit`` candles from
  the candle containing ``start`` (ccxt pages forward this way); with only ``end``, the last
  ``limit`` up to ``end``; the candle in progress is included as it stands;
* ``fetch_funding_rate_history``: ``GET /v5/market/funding/history`` (``startTime``/``endTime``,
  ``limit`` 1..200, newest first);
* ``fetch_ticker`` / mark price: ``GET /v5/market/tickers?category=linear&symbol=BTCUSDT`` (last,
  mark and index price are the replayed path's last price: the data has no separate mark/index).

Every answer is ``{"retCode", "retMsg", "result", "retExtInfo", "time"}``; an error is HTTP 200
with a non-zero ``retCode`` (10001 parameter error, 10006 too many visits), except the IP limit
(HTTP 403 "access too frequent") and gateway failures (HTTP 502), as Bybit's v5 docs describe
(bybit-exchange.github.io/docs/v5/error, /docs/v5/rate-limit). Formats follow
bybit-exchange.github.io/docs/v5/market/* and the responses ccxt records for Bybit;
``tests/test_exchange_dialects.py`` compares them field by field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiohttp import web

from btc_quant.core.data import SAMPLE, read_bars_file

from ..http import FAULT, state_of
from ..market import DEFAULT_FUNDING_FILE, BinanceError, Clock, ExchangeState, Market, _num, read_funding_file

FAMILY = "bybit"
#: Bybit's kline intervals -> the venue's interval names.
INTERVALS = {
    "1": "1m",
    "3": "3m",
    "5": "5m",
    "15": "15m",
    "30": "30m",
    "60": "1h",
    "120": "2h",
    "240": "4h",
    "360": "6h",
    "720": "12h",
    "D": "1d",
    "W": "1w",
}
MAX_KLINE_LIMIT = 1000
MAX_FUNDING_LIMIT = 200
#: BTCUSDT on Bybit: funding every 480 minutes, leverage 1..100 in 0.01 steps
#: (GET /v5/market/instruments-info, category=linear).
FUNDING_INTERVAL_MIN = 480
MAX_LEVERAGE = 100


#: Bybit's non-VIP USDT-perpetual fees (Bybit "Trading Fee Structure": maker 0.0200 %, taker 0.0550 %).
MAKER_FEE = 0.0002
TAKER_FEE = 0.00055


@dataclass
class BybitBook:
    """What the Bybit dialect keeps beside the venue's trading book."""

    #: BTCUSDT risk-limit tiers (core/data/bybit_linear_risk_limits.json)
    risk_limits: tuple
    max_leverage: int = MAX_LEVERAGE
    #: api key -> order id -> PostOnly orders accepted and then cancelled (Bybit's way)
    rejects: dict = field(default_factory=dict)


def _liquidation(trading, account, symbol: str) -> float:
    """The venue's liquidation check on Bybit: Bybit's formula (:func:`btc_quant.core.margin.bybit_liquidation_price`)."""
    from btc_quant.core import margin as mm

    pos = account.position(symbol)
    tiers = trading.dialect_books["bybit"].risk_limits
    isolated = account.isolated(symbol)
    wallet = pos.isolated_wallet if isolated else trading.cross_wallet(account)
    return max(mm.bybit_liquidation_price(pos.amt, pos.entry, wallet, tiers, isolated=isolated) or 0.0, 0.0)


class BybitError(Exception):
    """A v5 error answer: HTTP 200 with ``retCode`` != 0 and ``retMsg``."""

    def __init__(self, ret_code: int, ret_msg: str):
        super().__init__(ret_msg)
        self.ret_code, self.ret_msg = ret_code, ret_msg


def envelope(result, now_ms: int, ret_code: int = 0, ret_msg: str = "OK") -> dict:
    return {"retCode": ret_code, "retMsg": ret_msg, "result": result, "retExtInfo": {}, "time": now_ms}


def fault_response(kind: str, plan) -> web.Response | None:
    """Injected faults in Bybit's shape: 10006 "Too many visits!", 403 IP limit, 502 gateway."""
    now = int(time.time() * 1000)
    if kind == "rate_limit":
        reset = now + int(max(plan.retry_after_s, 0) * 1000)
        return web.json_response(
            envelope({}, now, 10006, "Too many visits!"),
            headers={
                "X-Bapi-Limit": "600",
                "X-Bapi-Limit-Status": "0",
                "X-Bapi-Limit-Reset-Timestamp": str(reset),
                "Retry-After": f"{max(plan.retry_after_s, 0):g}",
            },
        )
    if kind == "ip_ban":
        return web.Response(text="access too frequent", status=403, headers={"Retry-After": f"{max(plan.ban_s, 0):g}"})
    if kind in ("server_error", "accepted_error"):
        return web.Response(text="<html><body><h1>502 Bad Gateway</h1></body></html>", status=502, content_type="text/html")
    return None


def _answer(handler):
    async def route(request: web.Request) -> web.Response:
        now = state_of(request).clock.now_ms()
        try:
            return web.json_response(envelope(await handler(request), now))
        except BybitError as exc:
            return web.json_response(envelope({}, now, exc.ret_code, exc.ret_msg))
        except BinanceError as exc:  # a venue-level refusal: Bybit's parameter error
            return web.json_response(envelope({}, now, 10001, f"params error: {exc.msg}"))

    return route


def routes() -> list[web.RouteDef]:
    from . import bybit_trading, bybit_ws

    return (
        bybit_trading.routes()
        + bybit_ws.routes()
        + [
            web.get("/v5/market/time", time_route),
            web.get("/v5/market/instruments-info", _answer(instruments_info)),
            web.get("/v5/market/kline", _answer(kline)),
            web.get("/v5/market/funding/history", _answer(funding_history)),
            web.get("/v5/market/tickers", _answer(tickers)),
        ]
    )


async def time_route(request: web.Request) -> web.Response:
    now = state_of(request).clock.now_ms()
    return web.json_response(envelope({"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}, now))


def _category(request: web.Request) -> str:
    category = request.query.get("category", "")
    if category != "linear":
        raise BybitError(10001, f"params error: category {category or '(empty)'} is not served here (linear only)")
    return category


def _int(request: web.Request, name: str, default: int | None = None, low: int | None = None, high: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BybitError(10001, f"params error: {name} invalid") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise BybitError(10001, f"params error: {name} out of range [{low}, {high}]")
    return value


def _market(request: web.Request) -> Market:
    symbol = request.query.get("symbol", "")
    market = state_of(request).markets.get((FAMILY, symbol))
    if market is None:
        raise BybitError(10001, "params error: Symbol Invalid")
    return market


def _decimals(step: float) -> int:
    text = f"{step:.10f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def instrument_json(market: Market) -> dict:
    """One row of ``instruments-info`` (category ``linear``)."""
    return {
        "symbol": market.symbol_id,
        "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": market.base,
        "quoteCoin": market.quote,
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(_decimals(market.tick_size)),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": f"{MAX_LEVERAGE:.2f}", "leverageStep": "0.01"},
        "priceFilter": {"minPrice": f"{market.tick_size:.2f}", "maxPrice": "1999999.80", "tickSize": f"{market.tick_size:.2f}"},
        "lotSizeFilter": {
            "maxOrderQty": "1190.000",
            "minOrderQty": f"{market.lot_size:.3f}",
            "qtyStep": f"{market.lot_size:.3f}",
            "postOnlyMaxOrderQty": "1190.000",
            "maxMktOrderQty": "119.000",
            "minNotionalValue": _num(market.min_notional),
        },
        "unifiedMarginTrade": True,
        "fundingInterval": FUNDING_INTERVAL_MIN,
        "settleCoin": market.quote,
        "copyTrading": "both",
        "upperFundingRate": "0.005",
        "lowerFundingRate": "-0.005",
        "isPreListing": False,
        "preListingInfo": None,
        "riskParameters": {"priceLimitRatioX": "0.005", "priceLimitRatioY": "0.01"},
        "displayName": "",
    }


async def instruments_info(request: web.Request) -> dict:
    category = _category(request)
    state = state_of(request)
    rows = []
    if request.query.get("status", "Trading") == "Trading":
        rows = [instrument_json(m) for (family, _), m in sorted(state.markets.items()) if family == FAMILY]
        if request.query.get("symbol"):
            rows = [r for r in rows if r["symbol"] == request.query["symbol"]]
    return {"category": category, "list": rows, "nextPageCursor": ""}


async def kline(request: web.Request) -> dict:
    category = _category(request)
    state = state_of(request)
    market = _market(request)
    raw_interval = request.query.get("interval", "")
    if raw_interval not in INTERVALS:
        raise BybitError(10001, "params error: Invalid period!")
    interval = INTERVALS[raw_interval]
    limit = _int(request, "limit", 200, 1, MAX_KLINE_LIMIT)
    start, end = _int(request, "start"), _int(request, "end")
    rows = market.klines(interval, state.clock.now_ms(), start, end, limit)
    fault = request.get(FAULT)
    if fault == "empty_page":
        rows = []
    elif fault == "short_page":
        rows = rows[: len(rows) // 2]
    out = [[str(r[0]), r[1], r[2], r[3], r[4], r[5], r[7]] for r in reversed(rows)]  # newest first
    return {"symbol": market.symbol_id, "category": category, "list": out}


async def funding_history(request: web.Request) -> dict:
    category = _category(request)
    state = state_of(request)
    market = _market(request)
    limit = _int(request, "limit", MAX_FUNDING_LIMIT, 1, MAX_FUNDING_LIMIT)
    start, end = _int(request, "startTime"), _int(request, "endTime")
    if start is not None and end is None:
        # Bybit: "Passing only startTime returns an error" (docs/v5/market/history-fund-rate)
        raise BybitError(10001, "params error: endTime is required when startTime is given")
    now = state.clock.now_ms()
    ts, rates = market.funding_ts, market.funding_rate
    upper = now if end is None else min(now, end)
    hi = int(np.searchsorted(ts, upper, "right"))
    lo = 0 if start is None else int(np.searchsorted(ts, start, "left"))
    idx = list(range(lo, hi))[-limit:]
    rows = [
        {
            "symbol": market.symbol_id,
            "fundingRate": f"{rates[i]:.8f}".rstrip("0").rstrip(".") or "0",
            "fundingRateTimestamp": str(int(ts[i])),
        }
        for i in reversed(idx)
    ]
    fault = request.get(FAULT)
    if fault == "empty_page":
        rows = []
    elif fault == "short_page":
        rows = rows[: len(rows) // 2]
    return {"category": category, "list": rows}


async def tickers(request: web.Request) -> dict:
    category = _category(request)
    state = state_of(request)
    now = state.clock.now_ms()
    markets = [_market(request)] if request.query.get("symbol") else [m for (f, _), m in sorted(state.markets.items()) if f == FAMILY]
    rows = []
    for market in markets:
        day = market.klines("1m", now, now - 86_400_000, None, 1500)
        last = market.price_at(now) or 0.0
        first = float(day[0][1]) if day else last
        upcoming = np.flatnonzero(market.funding_ts > now)
        rate = f"{market.funding_rate[upcoming[0]]:.8f}" if len(upcoming) else "0"
        next_time = str(int(market.funding_ts[upcoming[0]])) if len(upcoming) else "0"
        rows.append(
            {
                "symbol": market.symbol_id,
                "lastPrice": _num(last),
                "indexPrice": _num(last),
                "markPrice": _num(last),
                "prevPrice24h": _num(first),
                "price24hPcnt": f"{(last / first - 1) if first else 0:.6f}",
                "highPrice24h": _num(max((float(r[2]) for r in day), default=last)),
                "lowPrice24h": _num(min((float(r[3]) for r in day), default=last)),
                "prevPrice1h": _num(first),
                "openInterest": "0",
                "openInterestValue": "0",
                "turnover24h": _num(sum(float(r[7]) for r in day)),
                "volume24h": _num(sum(float(r[5]) for r in day)),
                "fundingRate": rate,
                "nextFundingTime": next_time,
                "predictedDeliveryPrice": "",
                "basisRate": "",
                "deliveryFeeRate": "",
                "deliveryTime": "0",
                "ask1Size": "0",
                "bid1Price": _num(last),
                "ask1Price": _num(last),
                "bid1Size": "0",
                "basis": "",
            }
        )
    return {"category": category, "list": rows}


def bybit_state(
    *,
    bars_file: Path | str | None = None,
    funding_file: Path | str | None = DEFAULT_FUNDING_FILE,
    clock_start_ms: int | None = None,
    speed: float = 0.0,
    faults=None,
    usdt: float = 10_000.0,
) -> ExchangeState:
    """A Bybit listing the linear perpetual BTCUSDT, replaying real 1-minute bars (default: the
    bundled January-2022 perpetual sample) and the venue's recorded funding rates.

    BTCUSDT's filters are Bybit's: tick 0.10 USDT, quantity step and minimum 0.001 BTC, minimum
    order value 5 USDT (instruments-info). The clock defaults to one minute after the last bar,
    frozen. The trading book runs on Bybit's rules: its fees, its risk-limit tiers and liquidation
    formula; one Unified Trading Account exists (API key ``local-test-key``, secret
    ``local-test-secret``, ``usdt`` USDT), traded through :mod:`.bybit_trading`.
    """
    from btc_quant.core.instruments import instrument_for

    market = Market("BTCUSDT", FAMILY, "BTC", "USDT", read_bars_file(bars_file or SAMPLE.path), 0.1, 0.001, 5.0)
    if funding_file is not None:
        market.funding_ts, market.funding_rate = read_funding_file(funding_file)
    state = ExchangeState([market], Clock(0), faults)
    state.clock.set(state.end_ms if clock_start_ms is None else clock_start_ms, speed)
    trading = state.trading
    trading.family = FAMILY
    trading.maker_fee, trading.taker_fee = MAKER_FEE, TAKER_FEE
    trading.liquidation_rule = _liquidation
    trading.dialect_books["bybit"] = BybitBook(instrument_for("bybit", "BTC/USDT:USDT").margin_brackets)
    trading.add_account(usdt=usdt)
    return state


__all__ = ["BybitError", "INTERVALS", "bybit_state", "routes"]

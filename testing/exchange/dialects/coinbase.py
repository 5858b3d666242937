"""Coinbase Advanced Trade public market data, as ccxt's ``coinbase`` client calls it.

What ccxt 4.5 asks for, and what is answered here from the venue's recorded bars:

* ``load_markets``: ``GET /v2/currencies``, ``/v2/currencies/crypto`` and ``/v2/exchange-rates``
  (ccxt's ``fetch_currencies``; it runs whenever the exchange has currencies) and
  ``GET /api/v3/brokerage/market/products`` twice (spot, then ``product_type=FUTURE``, which lists
  none here);
* ``fetch_time``: ``GET /v2/time`` (``{"data": {"iso", "epoch"}}``; seconds) or
  ``/api/v3/brokerage/time``;
* ``fetch_ohlcv``: ``GET /api/v3/brokerage/market/products/{product_id}/candles`` with
  ``granularity`` (``ONE_MINUTE`` ...), ``start`` and ``end`` in **seconds**. Coinbase answers the
  candles whose start lies in ``[start, end)``, newest first, at most 350 per request (more is
  ``400 INVALID_ARGUMENT``; ccxt asks for 300), and has no candle for a minute without trades
  (the recorded data has those holes too). Prices and sizes are decimal strings.

Formats follow Coinbase's Advanced Trade API reference
(docs.cdp.coinbase.com/api-reference/advanced-trade-api/rest-api/public/) and the responses ccxt
records for it; ``tests/test_exchange_dialects.py`` compares them field by field. Public market
trades (``.../ticker``) are not served: there is no recorded Coinbase trade tape to replay.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from btc_quant.core.data import read_bars_file

from ..http import FAULT, state_of
from ..market import BinanceError, Clock, ExchangeState, Market, _num

FAMILY = "coinbase"
#: Coinbase's granularities and their length in ms (ccxt ``coinbase.timeframes``).
GRANULARITIES = {
    "ONE_MINUTE": ("1m", 60_000),
    "FIVE_MINUTE": ("5m", 300_000),
    "FIFTEEN_MINUTE": ("15m", 900_000),
    "THIRTY_MINUTE": ("30m", 1_800_000),
    "ONE_HOUR": ("1h", 3_600_000),
    "TWO_HOUR": ("2h", 7_200_000),
    "SIX_HOUR": ("6h", 21_600_000),
    "ONE_DAY": ("1d", 86_400_000),
}
#: Most candles one request may ask for (Coinbase: "number of candles requested should be less than 350").
MAX_CANDLES = 350


class CoinbaseError(Exception):
    """An Advanced Trade error answer: HTTP ``status`` with ``{"error", "error_details", "message"}``."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message

    def response(self) -> web.Response:
        return web.json_response({"error": self.error, "error_details": self.message, "message": self.message}, status=self.status)


def fault_response(kind: str, plan) -> web.Response | None:
    """Injected faults in Coinbase's shape (429 ``rate_limit_exceeded``; 5xx from the gateway)."""
    if kind in ("rate_limit", "ip_ban"):
        return web.json_response(
            {"errors": [{"id": "rate_limit_exceeded", "message": "Too many requests"}]},
            status=429,
            headers={"Retry-After": f"{max(plan.retry_after_s, 0):g}"},
        )
    if kind in ("server_error", "accepted_error"):
        # an outage answers from the gateway, not the API: no JSON error body (ccxt: ExchangeNotAvailable)
        return web.Response(text="503 Service Temporarily Unavailable", status=plan.status, content_type="text/plain")
    return None


def _answer(handler):
    async def route(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except CoinbaseError as exc:
            return exc.response()
        except BinanceError as exc:  # a venue-level refusal (unknown interval...): Coinbase's bad-argument answer
            return CoinbaseError(400, "INVALID_ARGUMENT", exc.msg).response()

    return route


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v2/time", _answer(time_v2)),
        web.get("/v2/currencies", _answer(currencies)),
        web.get("/v2/currencies/crypto", _answer(crypto_currencies)),
        web.get("/v2/exchange-rates", _answer(exchange_rates)),
        web.get("/api/v3/brokerage/time", _answer(time_v3)),
        web.get("/api/v3/brokerage/market/products", _answer(products)),
        web.get("/api/v3/brokerage/market/products/{product_id}", _answer(product)),
        web.get("/api/v3/brokerage/market/products/{product_id}/candles", _answer(candles)),
    ]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def time_v2(request: web.Request) -> web.Response:
    now = state_of(request).clock.now_ms()
    return web.json_response({"data": {"iso": _iso(now), "epoch": now // 1000}})


async def time_v3(request: web.Request) -> web.Response:
    now = state_of(request).clock.now_ms()
    return web.json_response({"iso": _iso(now), "epochSeconds": str(now // 1000), "epochMillis": str(now)})


def _markets(request: web.Request) -> list[Market]:
    state = state_of(request)
    return [m for (family, _), m in sorted(state.markets.items()) if family == FAMILY]


async def currencies(request: web.Request) -> web.Response:
    quotes = sorted({m.quote for m in _markets(request)})
    return web.json_response({"data": [{"id": q, "name": q, "min_size": "0.01"} for q in quotes]})


async def crypto_currencies(request: web.Request) -> web.Response:
    bases = sorted({m.base for m in _markets(request)})
    return web.json_response(
        {
            "data": [
                {
                    "asset_id": f"local-{b.lower()}",
                    "code": b,
                    "name": b,
                    "color": "#F7931A",
                    "sort_index": "100",
                    "exponent": "8",
                    "type": "crypto",
                    "address_regex": "",
                }
                for b in bases
            ]
        }
    )


async def exchange_rates(request: web.Request) -> web.Response:
    state = state_of(request)
    now = state.clock.now_ms()
    rates = {m.base: _num(1.0 / price) for m in _markets(request) if (price := m.price_at(now))}
    return web.json_response({"data": {"currency": "USD", "rates": {"USD": "1", **rates}}})


def _product_json(market: Market, now_ms: int) -> dict:
    price = market.price_at(now_ms)
    return {
        "product_id": market.symbol_id,
        "price": _num(price) if price else "",
        "price_percentage_change_24h": "0",
        "volume_24h": "0",
        "volume_percentage_change_24h": "0",
        "base_increment": _num(market.lot_size),
        "quote_increment": _num(market.tick_size),
        "quote_min_size": _num(market.min_notional),
        "quote_max_size": "150000000",
        "base_min_size": _num(market.lot_size),
        "base_max_size": "3400",
        "base_name": market.base,
        "quote_name": market.quote,
        "watched": False,
        "is_disabled": False,
        "new": False,
        "status": "online",
        "cancel_only": False,
        "limit_only": False,
        "post_only": False,
        "trading_disabled": False,
        "auction_mode": False,
        "product_type": "SPOT",
        "quote_currency_id": market.quote,
        "base_currency_id": market.base,
        "fcm_trading_session_details": None,
        "mid_market_price": "",
        "alias": "",
        "alias_to": [],
        "base_display_symbol": market.base,
        "quote_display_symbol": market.quote,
        "view_only": False,
        "price_increment": _num(market.tick_size),
        "display_name": market.symbol_id,
        "product_venue": "CBE",
    }


async def products(request: web.Request) -> web.Response:
    now = state_of(request).clock.now_ms()
    kind = request.query.get("product_type", "SPOT").upper()
    rows = [_product_json(m, now) for m in _markets(request)] if kind == "SPOT" else []
    return web.json_response({"products": rows, "num_products": str(len(rows))})


def _market(request: web.Request) -> Market:
    product_id = request.match_info["product_id"]
    market = state_of(request).markets.get((FAMILY, product_id))
    if market is None:
        raise CoinbaseError(404, "NOT_FOUND", f"ProductID {product_id} could not be found")
    return market


async def product(request: web.Request) -> web.Response:
    return web.json_response(_product_json(_market(request), state_of(request).clock.now_ms()))


def _seconds(request: web.Request, name: str) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        raise CoinbaseError(400, "INVALID_ARGUMENT", f"{name} is required")
    try:
        return int(raw)
    except ValueError:
        raise CoinbaseError(400, "INVALID_ARGUMENT", f"invalid {name}: {raw}") from None


async def candles(request: web.Request) -> web.Response:
    state = state_of(request)
    market = _market(request)
    granularity = request.query.get("granularity", "")
    if granularity not in GRANULARITIES:
        raise CoinbaseError(400, "INVALID_ARGUMENT", f"invalid granularity: {granularity}")
    interval, step = GRANULARITIES[granularity]
    start_ms, end_ms = _seconds(request, "start") * 1000, _seconds(request, "end") * 1000
    if end_ms < start_ms:
        raise CoinbaseError(400, "INVALID_ARGUMENT", "start must be before end")
    if (end_ms - start_ms) // step > MAX_CANDLES:
        raise CoinbaseError(400, "INVALID_ARGUMENT", f"number of candles requested should be less than {MAX_CANDLES}")
    rows = market.klines(interval, state.clock.now_ms(), start_ms, end_ms - 1, MAX_CANDLES + 1)
    rows = [r for r in rows if start_ms <= r[0] < end_ms]
    fault = request.get(FAULT)
    if fault == "empty_page":
        rows = []
    elif fault == "short_page":
        rows = rows[: len(rows) // 2]
    out = [
        {"start": str(r[0] // 1000), "low": r[3], "high": r[2], "open": r[1], "close": r[4], "volume": r[5]}
        for r in reversed(rows)  # newest first, as Coinbase answers
    ]
    return web.json_response({"candles": out})


#: The recorded Coinbase BTC-USD minutes of the shared data set (nine real days, 2016-2018).
SHARED_COINBASE_FILE = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "coinbase_btcusd_1m_days_2016-2018.parquet"


def coinbase_state(bars_file: Path | str, *, clock_start_ms: int | None = None, speed: float = 0.0, faults=None) -> ExchangeState:
    """A Coinbase serving one spot product, BTC-USD, from a file of real 1-minute bars.

    The clock defaults to one minute after the last bar, frozen (a historical exchange). BTC-USD's
    increments are Coinbase's: price 0.01 USD, size 0.00000001 BTC, minimum order 1 USD.
    """
    market = Market("BTC-USD", FAMILY, "BTC", "USD", read_bars_file(bars_file), 0.01, 0.00000001, 1.0)
    state = ExchangeState([market], Clock(0), faults)
    state.clock.set(state.end_ms if clock_start_ms is None else clock_start_ms, speed)
    return state

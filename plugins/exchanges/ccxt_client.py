"""Building ccxt clients from the ``exchange.*`` config, shared by the data source and live trading.

``exchange.url`` points every endpoint of a ccxt exchange at another origin, for a local test
exchange or a recording proxy (never needed against the real exchange)::

    quant data fetch exchange=binance exchange.url=http://127.0.0.1:40123 ...

The rewrite (:func:`point_at`): every REST URL in ``exchange.urls['api']`` keeps its path and gets
the new origin (``https://fapi.binance.com/fapi/v1`` -> ``http://127.0.0.1:40123/fapi/v1``;
Binance's API families have distinct paths, so one server can answer them all); every websocket URL
becomes ``ws://`` + the origin + ``/<first label of the host>`` + its path
(``wss://stream.binance.com:9443/ws`` -> ``ws://127.0.0.1:40123/stream/ws``,
``wss://fstream.binance.com/ws`` -> ``ws://127.0.0.1:40123/fstream/ws``), because different hosts
share paths like ``/ws``.

``load_markets`` options: a data source for ``binance`` needs spot markets only and one for
``binanceusdm`` USD-M only, so :data:`MARKET_TYPES` limits ccxt's ``fetchMarkets`` to those
(``exchangeInfo`` of one family instead of spot + USD-M + COIN-M), and ``fetchCurrencies`` /
``fetchMargins`` are off (with API keys they call ``/sapi`` capital and margin endpoints that
market data does not need). With these, ccxt 4.5's ``load_markets`` calls exactly
``GET /api/v3/exchangeInfo`` (binance) or ``GET /fapi/v1/exchangeInfo`` (binanceusdm). A ``bybit``
client loads the linear (USDT perpetual) markets only: ``GET /v5/market/instruments-info`` with
``category=linear`` (twice: trading and pre-launch), instead of spot, inverse and six option
chains. ``coinbase`` has no such switch: its ``load_markets`` always asks for the currencies
(``/v2/currencies``, ``/v2/currencies/crypto``, ``/v2/exchange-rates``) and the products.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import ccxt

from btc_quant.sdk import ConfigError

#: ccxt ``fetchMarkets`` types a market-data client of each exchange needs.
MARKET_TYPES = {"binance": ["spot"], "binanceusdm": ["linear"], "binancecoinm": ["inverse"], "bybit": ["linear"]}


def market_options(exchange_id: str) -> dict[str, Any]:
    """ccxt ``options`` that keep ``load_markets`` to the requests a data client needs."""
    options: dict[str, Any] = {"fetchCurrencies": False, "fetchMargins": False}
    if exchange_id in MARKET_TYPES:
        options["fetchMarkets"] = {"types": list(MARKET_TYPES[exchange_id])}
    return options


def _rewrite(url: str, origin: str) -> str:
    parts = urlsplit(url)
    target = urlsplit(origin)
    if parts.scheme in ("http", "https"):
        return f"{target.scheme}://{target.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    if parts.scheme in ("ws", "wss"):
        scheme = "wss" if target.scheme == "https" else "ws"
        label = (parts.hostname or "").split(".")[0]
        return f"{scheme}://{target.netloc}/{label}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    return url


def _rewrite_tree(node: Any, origin: str) -> Any:
    if isinstance(node, str):
        return _rewrite(node, origin)
    if isinstance(node, dict):
        return {key: _rewrite_tree(value, origin) for key, value in node.items()}
    if isinstance(node, list):
        return [_rewrite_tree(value, origin) for value in node]
    return node


#: Binance API families by path prefix, for ccxt's per-market-type error tables.
_BINANCE_FAMILIES = (
    ("/fapi", "linear"),
    ("/dapi", "inverse"),
    ("/eapi", "option"),
    ("/papi", "portfolioMargin"),
    ("/api", "spot"),
    ("/sapi", "spot"),
)


def _keep_error_tables(exchange: Any, origin: str) -> None:
    """ccxt's Binance picks the error table of a market type (-2019 -> InsufficientFunds, -4116
    -> InvalidOrder, -5022 -> OrderNotFillable on USD-M) by matching the URL against Binance's own
    hosts; at another origin it would fall back to the generic table (ExchangeError). Choose the
    table by the path instead, so errors from a local exchange are the classes the real one gives."""
    original = getattr(exchange, "get_exceptions_by_url", None)
    if original is None:
        return
    prefix = f"{urlsplit(origin).scheme}://{urlsplit(origin).netloc}"

    def by_url(url, exact_or_broad):
        if url and url.startswith(prefix):
            path = url[len(prefix) :]
            for start, kind in _BINANCE_FAMILIES:
                if path.startswith(start + "/"):
                    return exchange.safe_dict(exchange.safe_dict(exchange.exceptions, kind, {}), exact_or_broad, {})
            return {}
        return original(url, exact_or_broad)

    exchange.get_exceptions_by_url = by_url


def point_at(exchange: Any, origin: str) -> Any:
    """Send every request of ccxt ``exchange`` (REST and websocket) to ``origin`` (see module doc)."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"exchange.url: expected http(s)://host:port, got {origin!r}")
    exchange.urls["api"] = _rewrite_tree(exchange.urls["api"], origin)
    _keep_error_tables(exchange, origin)
    return exchange


def make_exchange(
    exchange_id: str,
    *,
    url: str | None = None,
    timeout_ms: int = 10_000,
    pro: bool = False,
    options: dict[str, Any] | None = None,
    credentials: dict[str, str] | None = None,
    rate_limit_ms: int | None = None,
) -> Any:
    """A ccxt (or ccxt.pro) client for ``exchange_id`` with the rate limiter on (``rate_limit_ms``:
    ccxt ``rateLimit``, default the exchange's; ccxt builds its throttle from it in the
    constructor, so it cannot be changed afterwards)."""
    module = ccxt
    if pro:
        import ccxt.pro as module  # noqa: F811 - the websocket flavour of the same classes
    cls = getattr(module, exchange_id, None)
    if cls is None or exchange_id not in ccxt.exchanges:
        raise ConfigError(
            f"exchange: ccxt has no exchange {exchange_id!r}{'' if not pro else ' with websocket support'}",
            hint="see ccxt.exchanges for the ids, e.g. binance, binanceusdm, coinbase, kraken, okx",
        )
    params: dict[str, Any] = {
        "enableRateLimit": True,
        "timeout": int(timeout_ms),
        "options": {**market_options(exchange_id), **(options or {})},
    }
    if rate_limit_ms:
        params["rateLimit"] = int(rate_limit_ms)
    params.update(credentials or {})
    exchange = cls(params)
    if url:
        point_at(exchange, url)
    return exchange

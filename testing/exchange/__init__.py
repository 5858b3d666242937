"""A local exchange on 127.0.0.1 for tests and demos: one venue, several API dialects
(:mod:`.dialects`: Binance spot ``/api/v3`` and USD-M ``/fapi/v1``, Bybit v5, Coinbase Advanced
Trade market data). What follows describes the Binance dialect, the first one.

It answers the endpoints the real ccxt client calls for ``load_markets``, ``fetch_time``,
``fetch_ohlcv`` and ``fetch_funding_rate_history``, and the kline websocket streams ccxt.pro's
``watch_ohlcv`` subscribes to, from real recorded bars and funding rates, with deterministic fault
injection (429 with Retry-After, 5xx, timeouts, slow answers, short and empty pages, dropped
websockets).

It is also a Binance USD-M *trading* exchange for the real ccxt ``binanceusdm`` client (REST and
ccxt.pro): signed order placement/cancel/query, open orders, trades, positions, balances,
leverage, margin type, isolated margin, listen key and the user-data websocket
(``ORDER_TRADE_UPDATE``/``ACCOUNT_UPDATE``), matching orders against the replayed real price path.
Test credentials: API key ``local-test-key``, secret ``local-test-secret`` (10,000 USDT).

Layout:

* :mod:`.market` - the state (:class:`ExchangeState`: markets, clock, request log), no web code;
* :mod:`.trading` - the trading book (accounts, orders, matching, positions, margin, funding,
  liquidation; what is modelled and what is not is listed there), no web code;
* :mod:`.faults` - the seeded :class:`FaultPlan`;
* :mod:`.spot`, :mod:`.usdm`, :mod:`.usdm_trading`, :mod:`.streams`, :mod:`.userdata`,
  :mod:`.control` - one route table per API family (:mod:`.control` documents the test-only
  control API: truth, advance, cancel "by the user", partial fills, accounts);
* :mod:`.server` - the aiohttp app (fault middleware) and :class:`ExchangeServer` (background
  thread); ``python -m btc_quant.testing.exchange`` runs it as a process.

Point ccxt at it with the ``exchange.url`` setting (see ``btc_quant.plugins.exchanges.ccxt_client``).
"""

from .faults import KINDS, FaultPlan
from .market import BinanceError, Clock, ExchangeState, Market, binance_state
from .server import ExchangeServer, build_app

__all__ = ["KINDS", "BinanceError", "Clock", "ExchangeServer", "ExchangeState", "FaultPlan", "Market", "binance_state", "build_app"]

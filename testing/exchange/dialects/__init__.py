"""The local exchange's API dialects: one venue, spoken the way each real exchange speaks.

The venue (:mod:`..market`: markets with real bars and funding, the clock, the fault plan;
:mod:`..trading`: the USD-M trading book) knows nothing about any API. A *dialect* is the set of
routes that answers one exchange's REST API from it, in that exchange's formats, with its limits and
error answers, exactly as the real ccxt client of that exchange calls them:

* ``binance`` - Binance spot ``/api/v3`` and USD-M ``/fapi/v1`` (market data, trading, user-data
  stream), in the modules one level up (:mod:`..spot`, :mod:`..usdm`, :mod:`..usdm_trading`,
  :mod:`..userdata`);
* ``bybit`` - Bybit v5 of the linear USDT perpetual: public market data (:mod:`.bybit`), signed
  REST trading on a Unified Trading Account (:mod:`.bybit_trading`) and the private websocket
  (:mod:`.bybit_ws`), over the same trading book with Bybit's fees, tiers and liquidation rule;
* ``coinbase`` - Coinbase Advanced Trade public market data (``/api/v3/brokerage/market/*``) and the
  ``/v2`` time/currency endpoints ccxt's ``load_markets`` calls (:mod:`.coinbase`).

The paths of the three never collide, so one server can speak all of them at once; each market of
the state belongs to one family (``spot``/``usdm`` Binance, ``bybit``, ``coinbase``) and a dialect
answers only for its own families. :func:`dialect_of` tells which dialect owns a request path (the
fault middleware answers injected 429s and 5xx in that dialect's shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class Dialect:
    """One exchange API spoken by the local exchange."""

    name: str
    #: market families (``Market.family``) this dialect serves
    families: tuple[str, ...]
    #: URL path prefixes it owns (longest match wins)
    prefixes: tuple[str, ...]
    #: ``routes(families present in the state)`` -> aiohttp route table
    routes: Callable[[set], list]
    #: ``fault_response(kind, plan)`` -> the answer to an injected http fault, or None for Binance's
    fault_response: Callable[[str, object], web.Response | None] | None = None
    #: ccxt id -> what the test suite runs through the real ccxt client against this dialect
    #: (``quant exchanges`` shows it; keep it to what tests really do)
    exercised: dict = field(default_factory=dict)


def _binance_routes(families: set) -> list:
    from .. import spot, usdm, usdm_trading, userdata

    out = []
    if "spot" in families:
        out += spot.routes()
    if "usdm" in families:
        out += usdm.routes() + usdm_trading.routes() + userdata.routes()
    return out


def _bybit_routes(families: set) -> list:
    from . import bybit

    return bybit.routes()


def _coinbase_routes(families: set) -> list:
    from . import coinbase

    return coinbase.routes()


def _bybit_fault(kind: str, plan) -> web.Response | None:
    from . import bybit

    return bybit.fault_response(kind, plan)


def _coinbase_fault(kind: str, plan) -> web.Response | None:
    from . import coinbase

    return coinbase.fault_response(kind, plan)


DIALECTS: dict[str, Dialect] = {
    # tests/test_ccxt_source.py, test_data_cli.py, test_collect.py, test_live_paper.py, test_live_broker.py, test_live_soak.py
    "binance": Dialect(
        "binance",
        ("spot", "usdm"),
        ("/api", "/sapi", "/fapi", "/stream", "/fstream"),
        _binance_routes,
        exercised={"binance": ("data",), "binanceusdm": ("data", "paper", "live", "post_only")},
    ),
    # tests/test_data_bybit_coinbase.py, test_exchange_dialects.py, test_exchange_bybit_trading.py,
    # test_live_bybit.py (paper and live), test_live_soak.py
    "bybit": Dialect(
        "bybit",
        ("bybit",),
        ("/v5", "/stream/v5", "/stream-testnet/v5"),
        _bybit_routes,
        _bybit_fault,
        exercised={"bybit": ("data", "paper", "live", "post_only")},
    ),
    "coinbase": Dialect(
        "coinbase", ("coinbase",), ("/api/v3/brokerage", "/v2"), _coinbase_routes, _coinbase_fault, exercised={"coinbase": ("data",)}
    ),
}


def dialect_of(path: str) -> Dialect | None:
    """The dialect whose path prefix is the longest match for ``path`` (None: no API's path)."""
    best: tuple[int, Dialect] | None = None
    for dialect in DIALECTS.values():
        for prefix in dialect.prefixes:
            if (path == prefix or path.startswith(prefix + "/")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), dialect)
    return best[1] if best else None


def family_of(path: str) -> str:
    """The request-log family of a path: ``spot``/``usdm`` for Binance, else the dialect's name."""
    if path.startswith(("/fapi", "/fstream")):
        return "usdm"
    dialect = dialect_of(path)
    if dialect is None:
        return "other"
    return "spot" if dialect.name == "binance" else dialect.name


def serving(families: set) -> list[Dialect]:
    """The dialects that have a market family in ``families``."""
    return [d for d in DIALECTS.values() if set(d.families) & families]

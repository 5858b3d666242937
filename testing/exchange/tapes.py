"""Trade endpoints of the local exchange: Binance's aggregate trades list (``aggTrades``), the
endpoint ccxt's ``fetch_trades`` calls by default (``/api/v3/aggTrades`` spot,
``/fapi/v1/aggTrades`` USD-M).

A market serves trades only when a tape is attached (``state.tapes[(family, "BTCUSDT")] =
TradeArrays``, or ``--trades FILE`` / ``--usdm-trades FILE`` on the command line): real prints,
e.g. the tapes in ``shared/data/trades``. Only prints up to the exchange clock's ``now`` exist.

As Binance documents it (https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints,
"Compressed/Aggregate trades list"): consecutive prints at the same time, price and taker side
are one aggregate trade ``{"a": agg id, "p": price, "q": summed qty, "f": first trade id, "l": last
trade id, "T": time, "m": buyer was the maker}`` (spot adds ``"M"``, best match). Parameters:
``fromId`` (agg id, inclusive), ``startTime``/``endTime`` (inclusive; both given must lie within an
hour, else error -1127), ``limit`` (default 500, at most 1000); with none of them, the latest ones.
"""

from __future__ import annotations

import numpy as np
from aiohttp import web

from btc_quant.core.trades import TradeArrays

from .http import cut, int_param, required, state_of
from .market import BinanceError, _num

#: Agg ids of a served tape start here (any number works; clients page by them).
FIRST_AGG_ID = 1_000_000
HOUR_MS = 3_600_000


def routes(family: str) -> list[web.RouteDef]:
    path = "/api/v3/aggTrades" if family == "spot" else "/fapi/v1/aggTrades"

    async def handler(request: web.Request) -> web.Response:
        return await agg_trades(request, family)

    return [web.get(path, handler)]


def aggregate(trades: TradeArrays) -> TradeArrays:
    """Consecutive prints with the same time, price and taker side as one row (Binance's aggTrades):
    ``trade_id`` the first trade id, ``last_id`` the last one, ``qty`` summed."""
    n = len(trades)
    if n == 0:
        return trades
    new = np.ones(n, dtype=bool)
    new[1:] = (trades.ts[1:] != trades.ts[:-1]) | (trades.price[1:] != trades.price[:-1]) | (trades.side[1:] != trades.side[:-1])
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], n] - 1
    return TradeArrays(
        trades.ts[starts],
        trades.trade_id[starts],
        trades.last_id[ends],
        trades.price[starts],
        np.add.reduceat(trades.qty, starts),
        trades.side[starts],
    )


async def agg_trades(request: web.Request, family: str) -> web.Response:
    state = state_of(request)
    market = state.market(family, required(request, "symbol"))
    limit = int_param(request, "limit", 500, low=1, high=1000)
    from_id, start, end = int_param(request, "fromId"), int_param(request, "startTime"), int_param(request, "endTime")
    if start is not None and end is not None and end - start > HOUR_MS:
        raise BinanceError(-1127, "More than 1 hours between startTime and endTime.")
    agg = state.agg_tape(family, market.symbol_id)
    visible = int(np.searchsorted(agg.ts, state.clock.now_ms(), "right"))
    if from_id is not None:
        lo = max(from_id - FIRST_AGG_ID, 0)
        hi = min(lo + limit, visible)
        if end is not None:
            hi = min(hi, int(np.searchsorted(agg.ts, end, "right")))
    elif start is not None or end is not None:
        lo = 0 if start is None else int(np.searchsorted(agg.ts, start, "left"))
        stop = visible if end is None else min(visible, int(np.searchsorted(agg.ts, end, "right")))
        if start is None:  # only endTime: the latest before it
            lo = max(stop - limit, 0)
        hi = min(lo + limit, stop)
    else:
        lo, hi = max(visible - limit, 0), visible
    rows = []
    for i in range(lo, max(hi, lo)):
        row = {
            "a": FIRST_AGG_ID + i,
            "p": _num(float(agg.price[i])),
            "q": _num(float(agg.qty[i])),
            "f": int(agg.trade_id[i]),
            "l": int(agg.last_id[i]),
            "T": int(agg.ts[i]),
            "m": bool(agg.side[i] < 0),
        }
        if family == "spot":
            row["M"] = True
        rows.append(row)
    return web.json_response(cut(rows, request))

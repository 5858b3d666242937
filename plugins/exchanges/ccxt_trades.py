"""Trade prints from any ccxt exchange into the store: ``quant data fetch ... kind=trades``.

:func:`fetch_trades` pages through ccxt's ``fetch_trades`` and writes every page as it arrives, so
a fetch that is stopped (even with SIGKILL) resumes from the last stored print on the next run;
re-fetched prints replace themselves (the store de-duplicates by trade id).

* Binance (``binance``, ``binanceusdm``, ``binancecoinm``): ccxt calls the aggregate-trades
  endpoint. The first page is asked by time (``since``: Binance answers the first hour after it),
  later pages by aggregate id (``fromId`` = last id + 1), so a burst of more than a page in one
  millisecond is never skipped. An hour without a print moves the time window on. Each aggregate
  trade is stored under its first trade id with ``last_id`` its last (``info.f``/``info.l``), like
  Binance's ``aggTrades`` archive files.
* Other exchanges: pages by time (``since`` = the last print's time; overlaps are de-duplicated);
  a page with nothing new ends the fetch. Trade ids must be integers.

Retries, backoff and errors are :meth:`CcxtSource.call`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from btc_quant.core.trades import TradeArrays
from btc_quant.sdk import DataError

BINANCE = {"binance", "binanceusdm", "binancecoinm"}
HOUR_MS = 3_600_000
PAGE = 1000


@dataclass
class TradeFetchReport:
    exchange: str
    symbol: str
    written: int = 0
    requests: int = 0
    retries: int = 0
    first_ms: int | None = None
    last_ms: int | None = None


def to_arrays(exchange_id: str, trades: list[dict]) -> TradeArrays:
    """ccxt trade structures -> :class:`TradeArrays` (aggregate trades by their first/last trade id)."""
    n = len(trades)
    ts = np.empty(n, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    last = np.empty(n, dtype=np.int64)
    price = np.empty(n)
    qty = np.empty(n)
    side = np.empty(n, dtype=np.int8)
    for i, t in enumerate(trades):
        info = t.get("info") or {}
        try:
            if exchange_id in BINANCE and "f" in info:
                first[i], last[i] = int(info["f"]), int(info["l"])
            else:
                first[i] = last[i] = int(t["id"])
        except (TypeError, ValueError):
            raise DataError(f"{exchange_id}: trade id {t.get('id')!r} is not an integer; its trades cannot be stored") from None
        ts[i], price[i], qty[i] = int(t["timestamp"]), float(t["price"]), float(t["amount"])
        side[i] = 1 if t.get("side") == "buy" else -1 if t.get("side") == "sell" else 0
    if (side == 0).any():
        raise DataError(f"{exchange_id}: a trade without a taker side (trade id {int(first[np.flatnonzero(side == 0)[0]])})")
    return TradeArrays(ts, first, last, price, qty, side)


def fetch_trades(
    source, store, symbol: str, start_ms: int, end_ms: int | None = None, progress: Callable[[int, int], None] | None = None
) -> TradeFetchReport:
    """Fetch prints with ``start_ms <= ts < end_ms`` (default: up to now) that come after the last
    stored one (see module doc). ``progress(ms_covered, written)`` after each page."""
    ex = source.exchange_id
    source.market(symbol)
    end = source.now_ms() if end_ms is None else end_ms
    report = TradeFetchReport(ex, symbol)
    span = store.trade_span(ex, symbol)
    since = start_ms if span is None or span[1] < start_ms else span[1]  # resume at the last stored print
    covered = since

    def page(arrays: TradeArrays) -> None:
        nonlocal covered
        keep = arrays[(arrays.ts >= start_ms) & (arrays.ts < end)]
        report.written += store.write_trades(ex, symbol, keep)
        if len(keep):
            report.first_ms = int(keep.ts[0]) if report.first_ms is None else report.first_ms
            report.last_ms = int(keep.ts[-1])
        reached = min(int(arrays.ts[-1]), end) if len(arrays) else covered
        if progress is not None and reached > covered:
            progress(reached - covered, report.written)
        covered = max(covered, reached)

    def ask(*args, **kwargs) -> list[dict]:
        rows = source.call("fetch_trades", symbol, *args, **kwargs)
        report.requests += 1
        return rows

    limit = source.config.page_limit or PAGE
    if ex in BINANCE:
        rows: list[dict] = []
        while since < end and not rows:  # find the first aggregate trade at or after `since`
            rows = ask(since, limit)
            if not rows:
                since += HOUR_MS
                if progress is not None:
                    progress(min(HOUR_MS, end - covered), report.written)
                covered = since
        while rows and not source.stop.is_set():
            page(to_arrays(ex, rows))
            if int(rows[-1]["timestamp"]) >= end:
                break
            # An empty page by id ends it (nothing newer yet); a short one may be cut, so ask on.
            rows = ask(None, limit, {"fromId": int(rows[-1]["id"]) + 1})
        return report
    seen_last = -1
    while since < end and not source.stop.is_set():
        rows = ask(since, limit)
        arrays = to_arrays(ex, rows) if rows else TradeArrays.empty()
        new = arrays[arrays.trade_id > seen_last] if len(arrays) else arrays
        if len(new) == 0:
            break
        page(new)
        seen_last = int(new.trade_id.max())
        since = int(new.ts[-1])
    return report


def collect_trades(source, store, symbol: str, start_ms: int, stop, on_event=None):
    """``quant collect ... kind=trades``: keep the store's tape current until ``stop`` is set.

    A REST catch-up first (:func:`fetch_trades`, resuming at the last stored print), then live
    prints over ccxt.pro ``watch_trades`` (Binance: the ``aggTrade`` stream, so live rows and REST
    rows are the same aggregate trades), each batch written as it arrives; else REST polling every
    ``poll_s``. Whenever the live stream may have missed prints -- on (re)connecting, after a
    websocket error, or when an aggregate id is skipped -- a REST catch-up runs before the batch
    is written, so a dropped connection, or a SIGKILL and restart, never leaves a hole.
    """
    import asyncio

    from .ccxt_source import CollectStats, _has_pro

    say = on_event or (lambda text: None)
    stats = CollectStats()
    source.stop = stop
    source.sleep = stop.wait  # retry pauses end at once on stop
    stats.rest += fetch_trades(source, store, symbol, start_ms).written
    say(f"caught up: {stats.rest:,} trades over REST")
    if source.config.websocket and _has_pro(source.exchange_id):
        asyncio.run(_watch_trades(source, store, symbol, start_ms, stop, stats, say))
    else:
        say(f"polling {source.exchange_id} every {source.config.poll_s:g}s over REST")
        while not stop.wait(source.config.poll_s):
            stats.rest += fetch_trades(source, store, symbol, start_ms).written
    _final_catch_up(source, store, symbol, start_ms, stats, say)
    return stats


def _final_catch_up(source, store, symbol: str, start_ms: int, stats, say, bound_s: float = 30.0) -> None:
    """On a graceful stop, one last REST catch-up to the exchange's now: prints still in flight on
    the websocket (or between two polls) when the stop came are stored too, so the tape ends where
    the collector stopped instead of wherever its last batch happened to end. Bounded in time; an
    exchange that does not answer leaves the tape as it is (the next collect resumes from it)."""
    import threading

    from btc_quant.sdk import ExchangeError

    final = threading.Event()
    timer = threading.Timer(bound_s, final.set)
    timer.daemon = True
    timer.start()
    source.stop, source.sleep = final, final.wait
    try:
        written = fetch_trades(source, store, symbol, start_ms).written
    except ExchangeError as exc:  # source.call wraps every ccxt failure in it
        say(f"stopping: last REST catch-up failed ({type(exc).__name__}); the next collect resumes")
        return
    finally:
        timer.cancel()
    stats.rest += written
    if written:
        say(f"stopping: {written:,} trades caught up over REST")


async def _watch_trades(source, store, symbol, start_ms, stop, stats, say) -> None:
    import asyncio

    import ccxt

    from .ccxt_client import make_exchange
    from .ccxt_source import _connection, _one_line

    ex = source.exchange_id
    client = make_exchange(ex, url=source.config.url, timeout_ms=source.config.timeout_ms, pro=True)
    params = {"name": "aggTrade"} if ex in BINANCE else {}
    last_id: int | None = None  # last aggregate id written from the stream; None: catch up first
    watch = None
    failures = 0
    seen_connection = None
    say(f"watching {ex} {symbol} trades over websocket")
    try:
        while not stop.is_set():
            if watch is None:
                watch = asyncio.ensure_future(client.watch_trades(symbol, None, None, params))
            done, _ = await asyncio.wait({watch}, timeout=0.5)
            if not done:
                continue
            watch = None
            try:
                batch = done.pop().result()
                failures = 0
            except ccxt.BaseError as exc:
                failures += 1
                stats.reconnects += 1
                say(f"websocket: {_one_line(exc)}; catching up over REST and reconnecting")
                stats.rest += fetch_trades(source, store, symbol, start_ms).written
                last_id = None
                await asyncio.sleep(min(source.config.backoff_s * 2 ** min(failures, 6), source.config.max_backoff_s))
                continue
            connection = _connection(client)
            if connection is not seen_connection:  # a new socket: ccxt.pro may reconnect by itself
                if seen_connection is not None:
                    stats.reconnects += 1
                    say("websocket reconnected; catching up over REST")
                seen_connection = connection
                last_id = None
            ids = [int(t["id"]) for t in batch] if ex in BINANCE else []
            if ex in BINANCE and last_id:
                batch = [t for t, i in zip(batch, ids) if i > last_id]
                ids = [i for i in ids if i > last_id]
            if not batch:
                continue
            joined = last_id is None
            if joined or (ex in BINANCE and ids[0] > last_id + 1):
                # joined late, reconnected, or an id was skipped: REST fills up to now first
                stats.rest += fetch_trades(source, store, symbol, start_ms).written
            stats.websocket += store.write_trades(ex, symbol, to_arrays(ex, batch))
            if joined:
                say(f"live: trades arriving over websocket ({stats.websocket:,} so far)")
            last_id = max(ids) if ids else 0
    finally:
        if watch is not None:
            watch.cancel()
        await client.close()

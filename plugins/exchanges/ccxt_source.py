"""Historical and live market data from any ccxt exchange into a store.

``quant data fetch`` and ``quant collect`` use :class:`CcxtSource`. It is registered as a data
source under every ccxt exchange id (``exchange=binance``, ``binanceusdm``, ``coinbase``,
``kraken``...), all with the same settings (:class:`CcxtSourceConfig`).

How a fetch never loses a range silently (:meth:`CcxtSource.fetch_bars`):

* what to ask for is planned from the store: before the first stored bar, the holes the store has
  not explained, and after the last stored bar up to the last *closed* bar, so a re-run resumes
  where the last one stopped (also after SIGKILL: every page is written as it arrives);
* pages are asked with ``since``/``limit``; the next page starts after the last bar received, so a
  page cut short by the exchange only costs another request;
* minutes a page skipped (it started later than asked, or has holes) and pages that came back empty
  (asked twice) are recorded in the store (``record_page``); ``quant data gaps`` lists them as
  "exchange has none" and later fetches do not ask again;
* 429, 5xx, timeouts and dropped connections are retried with exponential backoff (at least the
  ``Retry-After`` the exchange asked for), on top of ccxt's own rate limiter (``enableRateLimit``);
  other errors (unknown symbol, bad key) stop with one line.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ccxt
import pandas as pd
from pydantic import Field, SecretStr

from btc_quant.sdk import DataError, ExchangeError, QuantModel, hookimpl, timeframe_ms

from .ccxt_client import make_exchange

log = logging.getLogger(__name__)

#: Largest ``limit`` each exchange's klines endpoint accepts (Binance spot 1000, USD-M 1500, Bybit v5
#: 1000; Coinbase 350 per request, of which ccxt asks for 300).
PAGE_LIMITS = {"binance": 1000, "binanceusdm": 1500, "binancecoinm": 1500, "bybit": 1000, "coinbase": 300, "coinbaseexchange": 300}
#: Largest ``limit`` of each exchange's funding-history endpoint (Binance 1000, Bybit v5 200).
FUNDING_LIMITS = {"bybit": 200}
#: Exchanges whose klines endpoint answers the first bars at or after ``since`` (however far on).
SCANS_FORWARD = {"binance", "binanceusdm", "binancecoinm"}
#: Empty answers in a row after which a page is believed to be empty.
EMPTY_CONFIRMATIONS = 3
#: Errors worth another try: rate limits, 5xx, timeouts, dropped connections.
TRANSIENT = (ccxt.OperationFailed,)  # NetworkError (429, 5xx, timeouts) and Binance -1001 "try again"


class CcxtSourceConfig(QuantModel):
    """Settings of a ccxt exchange (``exchange.*``)."""

    url: str | None = Field(None, description="send every request to this origin instead (a local test exchange or a proxy)")
    timeout_ms: int = Field(10_000, gt=0, description="per-request timeout")
    page_limit: int | None = Field(None, gt=0, description="bars per request; default: the exchange's maximum")
    retries: int = Field(8, ge=0, description="retries of a request after a transient error (429, 5xx, timeout)")
    backoff_s: float = Field(0.5, ge=0, description="first retry wait; doubles each retry")
    max_backoff_s: float = Field(30.0, gt=0, description="longest retry wait")
    poll_s: float = Field(10.0, gt=0, description="quant collect: seconds between REST polls when websockets are unavailable")
    websocket: bool = Field(True, description="quant collect: use ccxt.pro websockets when the exchange has them")
    api_key: SecretStr | None = Field(None, description="API key (secret; not needed for market data)")
    secret: SecretStr | None = Field(None, description="API secret (secret)")
    password: SecretStr | None = Field(None, description="API passphrase where the exchange uses one (secret)")


@dataclass
class FetchReport:
    """What a fetch did: bars written, requests, retries, ranges the exchange had no bars for."""

    exchange: str
    symbol: str
    timeframe: str
    written: int = 0
    requests: int = 0
    retries: int = 0
    empty: list[tuple[int, int]] = field(default_factory=list)
    funding: int = 0


class CcxtSource:
    """Market data of one ccxt exchange (see module doc)."""

    Config = CcxtSourceConfig

    def __init__(self, config: CcxtSourceConfig | None = None, runtime: Any = None, *, exchange_id: str = "binance"):
        self.config = config or CcxtSourceConfig()
        self.exchange_id = exchange_id
        credentials = {
            key: value.get_secret_value()
            for key, value in (("apiKey", self.config.api_key), ("secret", self.config.secret), ("password", self.config.password))
            if value is not None
        }
        self.client = make_exchange(exchange_id, url=self.config.url, timeout_ms=self.config.timeout_ms, credentials=credentials)
        self._markets_loaded = False
        self.sleep: Callable[[float], None] = time.sleep
        #: Set to stop a fetch between pages (``quant collect`` on SIGTERM).
        self.stop = threading.Event()
        self._ohlcv = "fetch_ohlcv"  # the ccxt call for klines: fetch_mark_ohlcv for mark prices (fetch_bars)

    # -- requests -----------------------------------------------------------------------------

    def call(self, method: str, *args, report: FetchReport | None = None, **kwargs) -> Any:
        """``client.<method>(*args, **kwargs)`` with retries of transient errors and backoff."""
        wait = self.config.backoff_s
        for attempt in range(self.config.retries + 1):
            try:
                if report is not None:
                    report.requests += 1
                return getattr(self.client, method)(*args, **kwargs)
            except TRANSIENT as exc:
                if attempt == self.config.retries or self.stop.is_set():
                    raise ExchangeError(
                        f"{self.exchange_id}: {method} still failing after {self.config.retries} retries: {_one_line(exc)}",
                        hint="the exchange may be down or limiting you; run the same command again later to resume",
                    ) from exc
                pause = min(max(wait, self._retry_after()), self.config.max_backoff_s)
                log.info("%s: %s: %s; retry %d in %.1fs", self.exchange_id, method, type(exc).__name__, attempt + 1, pause)
                if report is not None:
                    report.retries += 1
                self.sleep(pause)
                wait = min(wait * 2, self.config.max_backoff_s) if wait else 0.0
            except ccxt.BadSymbol as exc:
                raise DataError(f"{self.exchange_id}: no market {args[0] if args else ''!s}: {_one_line(exc)}") from exc
            except ccxt.BaseError as exc:
                raise ExchangeError(f"{self.exchange_id}: {method} failed: {_one_line(exc)}") from exc
        raise AssertionError("unreachable")

    def _retry_after(self) -> float:
        headers = getattr(self.client, "last_response_headers", None) or {}
        value = {k.lower(): v for k, v in headers.items()}.get("retry-after")
        try:
            return float(value) if value is not None else 0.0
        except ValueError:
            return 0.0

    def load_markets(self) -> dict:
        if not self._markets_loaded:
            self.call("load_markets")
            self._markets_loaded = True
        return self.client.markets

    def market(self, symbol: str) -> dict:
        markets = self.load_markets()
        if symbol not in markets:
            near = [s for s in markets if s.split(":")[0] == symbol.split(":")[0]][:5]
            raise DataError(
                f"{self.exchange_id}: no market {symbol!r}",
                hint=f"did you mean {', '.join(near)}?" if near else "symbols use ccxt notation: BTC/USDT spot, BTC/USDT:USDT perpetual",
            )
        return markets[symbol]

    def now_ms(self) -> int:
        """Exchange time if it tells it, else the local clock."""
        if self.client.has.get("fetchTime"):
            try:
                return int(self.call("fetch_time"))
            except ExchangeError:
                pass
        return int(time.time() * 1000)

    def page_limit(self) -> int:
        return self.config.page_limit or PAGE_LIMITS.get(self.exchange_id, 500)

    # -- bars ---------------------------------------------------------------------------------

    def plan(self, store, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
        """Ranges ``[a, b)`` of bars to ask for: everything in ``[start_ms, end_ms)`` not yet stored
        and not known to be missing at the exchange."""
        step = timeframe_ms(timeframe)
        start_ms = -(-start_ms // step) * step
        if start_ms >= end_ms:
            return []
        span = store.first_last(self.exchange_id, symbol, timeframe)
        if span is None:
            wanted = [(start_ms, end_ms)]
        else:
            first, last = span
            wanted = []
            if start_ms < first:
                wanted.append((start_ms, min(first, end_ms)))
            wanted += [
                (g.start_ms, g.end_ms)
                for g in store.gaps(self.exchange_id, symbol, timeframe, start_ms, end_ms)
                if g.reason == "not fetched"
            ]
            if last + step < end_ms:
                wanted.append((max(last + step, start_ms), end_ms))
        known_empty = [(a, b) for a, b, _e, received in store.short_pages(self.exchange_id, symbol, timeframe)]
        return [piece for a, b in sorted(wanted) for piece in _subtract((a, b), known_empty) if piece[1] - piece[0] >= step]

    def fetch_bars(
        self,
        store,
        symbol: str,
        timeframe: str,
        start_ms: int,
        end_ms: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        report: FetchReport | None = None,
        price: str = "trade",
    ) -> FetchReport:
        """Fetch closed bars in ``[start_ms, end_ms)`` (default: up to now) that the store lacks.

        ``price="mark"``: mark-price klines (ccxt ``fetch_mark_ohlcv``, Binance
        ``/fapi/v1/markPriceKlines``) into a store switched to them (``store.prices("mark")``).
        ``progress(ms_covered, bars_written_so_far)`` is called after every page."""
        step = timeframe_ms(timeframe)
        self.market(symbol)
        if price == "mark" and not self.client.has.get("fetchMarkOHLCV"):
            raise ExchangeError(f"{self.exchange_id} has no mark-price klines (ccxt fetchMarkOHLCV)")
        self._ohlcv = "fetch_mark_ohlcv" if price == "mark" else "fetch_ohlcv"
        closed_end = self.now_ms() // step * step  # bars starting before this are closed
        end = closed_end if end_ms is None else min(end_ms, closed_end)
        report = report or FetchReport(self.exchange_id, symbol, timeframe)
        for lo, hi in self.plan(store, symbol, timeframe, start_ms, end):
            self._fetch_range(store, symbol, timeframe, step, lo, hi, progress, report)
        return report

    def total_ms(self, store, symbol: str, timeframe: str, start_ms: int, end_ms: int | None = None) -> int:
        """How much time the next fetch would cover (for a progress bar)."""
        step = timeframe_ms(timeframe)
        end = self.now_ms() // step * step if end_ms is None else end_ms
        return sum(b - a for a, b in self.plan(store, symbol, timeframe, start_ms, end))

    def _fetch_range(self, store, symbol, timeframe, step, lo, hi, progress, report) -> None:
        since = lo
        limit_max = self.page_limit()
        empty_tries = 0
        missing: list[int] = []  # [start, end] of the run of missing bars not yet recorded

        def miss(a: int, b: int) -> None:
            if missing and missing[1] == a:
                missing[1] = b
            else:
                flush()
                missing[:] = [a, b]

        def flush() -> None:
            if missing:
                self._record_missing(store, symbol, timeframe, step, missing[0], missing[1], report)
                missing.clear()

        while since < hi and not self.stop.is_set():
            limit = int(min(limit_max, (hi - since) // step))
            rows = self.call(self._ohlcv, symbol, timeframe, since=since, limit=limit, report=report)
            rows = [r for r in rows if since <= r[0] < hi and (r[0] - since) % step == 0]
            if not rows:
                if not self._really_empty(symbol, timeframe, since, empty_tries, report):
                    empty_tries += 1
                    continue
                # Binance answers "the first bars at or after startTime": empty means none up to now.
                until = hi if self.exchange_id in SCANS_FORWARD else min(since + limit * step, hi)
                miss(since, until)
                _advance(progress, until - since, report)
                since, empty_tries = until, 0
                continue
            empty_tries = 0
            rows.sort(key=lambda r: r[0])
            expected = since
            for row in rows:  # minutes the exchange skipped before or inside the page
                if row[0] > expected:
                    miss(expected, row[0])
                expected = row[0] + step
            flush()
            frame = pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close", "volume"]).drop_duplicates("ts")
            frame["volume"] = frame["volume"].fillna(0.0)
            report.written += store.write_bars(self.exchange_id, symbol, timeframe, frame)
            new_since = int(rows[-1][0]) + step
            _advance(progress, new_since - since, report)
            since = new_since
        flush()

    def _really_empty(self, symbol, timeframe, since, tries, report) -> bool:
        """Is an empty page the exchange's answer, or a hiccup to ask again about?

        Exchanges that scan forward from ``since`` are asked for their latest bar: one before ``since``
        proves the page right; one at or after it proves it wrong (asked again, up to ``retries``
        times). When the exchange shows no recent bar either (a market that stopped trading), or for
        other exchanges, the page is believed after :data:`EMPTY_CONFIRMATIONS` empty answers in a row.
        """
        if self.exchange_id in SCANS_FORWARD:
            latest = self.call(self._ohlcv, symbol, timeframe, limit=1, report=report)
            if latest and latest[-1][0] < since:
                return True
            if latest:
                if tries >= self.config.retries:
                    raise ExchangeError(
                        f"{self.exchange_id}: {symbol} {timeframe} pages from {since} keep coming back empty although "
                        "the exchange has later bars; stopped without recording a gap",
                        hint="run the same command again later to resume",
                    )
                report.retries += 1
                self.sleep(min(self.config.backoff_s * 2**tries, self.config.max_backoff_s))
                return False
        return tries + 1 >= EMPTY_CONFIRMATIONS

    def _record_missing(self, store, symbol, timeframe, step, a, b, report) -> None:
        store.record_page(self.exchange_id, symbol, timeframe, a, b, (b - a) // step, 0)
        report.empty.append((a, b))
        log.info("%s %s %s: the exchange has no bars for %s .. %s", self.exchange_id, symbol, timeframe, a, b)

    # -- funding ------------------------------------------------------------------------------

    def is_perpetual(self, symbol: str) -> bool:
        market = self.market(symbol)
        return bool(market.get("swap")) and bool(self.client.has.get("fetchFundingRateHistory"))

    def fetch_funding(self, store, symbol: str, start_ms: int, end_ms: int | None = None, report: FetchReport | None = None) -> FetchReport:
        """Funding rates of a perpetual from the last stored one (or ``start_ms``) to ``end_ms``/now."""
        report = report or FetchReport(self.exchange_id, symbol, "funding")
        if not self.is_perpetual(symbol):
            return report
        span = store.funding_span(self.exchange_id, symbol)
        end = end_ms if end_ms is not None else self.now_ms()
        if span is None:
            ranges = [(start_ms, end)]
        else:  # before the first stored rate (funding times jitter by a few ms: a minute of slack), after the last
            ranges = [(start_ms, span[0])] if start_ms < span[0] - 60_000 else []
            ranges.append((max(start_ms, span[1] + 1), end))
        for since, until in ranges:
            self._fetch_funding_range(store, symbol, since, until, report)
        return report

    def _fetch_funding_range(self, store, symbol: str, since: int, end: int, report: FetchReport) -> None:
        while since < end:
            limit = FUNDING_LIMITS.get(self.exchange_id, 1000)
            rows = self.call("fetch_funding_rate_history", symbol, since=since, limit=limit, report=report)
            rows = [r for r in rows if since <= r["timestamp"] < end]
            if not rows:
                break
            frame = pd.DataFrame({"ts": [int(r["timestamp"]) for r in rows], "rate": [float(r["fundingRate"]) for r in rows]})
            report.funding += store.write_funding(self.exchange_id, symbol, frame)
            since = int(frame["ts"].max()) + 1

    # -- live collection --------------------------------------------------------------------

    def collect(
        self, store, symbol: str, timeframe: str, start_ms: int, stop: threading.Event, on_event: Callable[[str], None] | None = None
    ) -> CollectStats:
        """Keep the store current until ``stop`` is set (``quant collect``).

        First a REST catch-up from ``start_ms`` (resuming after the last stored bar, so any downtime
        is filled), then websocket klines through ccxt.pro when the exchange has them (each candle is
        written once it has closed: when a later candle appears), else REST polling every
        ``poll_s``. After a websocket error, and whenever a closed candle does not follow the last
        stored one, the missing range is fetched over REST before going on, so a dropped connection
        never leaves a hole. On ``stop`` the closed candles seen are written and it returns; the
        candle still forming is left to the next run's catch-up.
        """
        say = on_event or (lambda text: log.info("%s", text))
        stats = CollectStats()
        self.stop = stop
        self.sleep = stop.wait  # retry pauses end at once on stop
        self.market(symbol)
        stats.rest += self.fetch_bars(store, symbol, timeframe, start_ms).written
        say(f"caught up: {stats.rest:,} bars over REST")
        use_ws = self.config.websocket and _has_pro(self.exchange_id)
        if use_ws:
            asyncio.run(self._watch(store, symbol, timeframe, start_ms, stop, stats, say))
        else:
            say(f"polling {self.exchange_id} every {self.config.poll_s:g}s over REST")
            while not stop.wait(self.config.poll_s):
                stats.rest += self.fetch_bars(store, symbol, timeframe, start_ms).written
        return stats

    async def _watch(self, store, symbol, timeframe, start_ms, stop, stats, say) -> None:
        step = timeframe_ms(timeframe)
        client = make_exchange(self.exchange_id, url=self.config.url, timeout_ms=self.config.timeout_ms, pro=True)
        span = store.first_last(self.exchange_id, symbol, timeframe)
        last = span[1] if span else start_ms - step
        pending: dict[int, list] = {}
        watch: asyncio.Task | None = None
        seen_connection = None
        failures = 0
        say(f"watching {self.exchange_id} {symbol} {timeframe} klines over websocket")

        def flush(closed_before: int) -> None:
            nonlocal last
            ready = sorted(ts for ts in pending if last < ts < closed_before)
            if not ready:
                return
            if ready[0] > last + step:  # candles missed (connection dropped, or joined late): REST first
                stats.rest += self.fetch_bars(store, symbol, timeframe, start_ms, ready[0]).written
            rows = [pending[ts] for ts in ready]
            frame = pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close", "volume"])
            stats.websocket += store.write_bars(self.exchange_id, symbol, timeframe, frame)
            last = ready[-1]
            for ts in [t for t in pending if t <= last]:
                del pending[ts]

        try:
            while not stop.is_set():
                if watch is None:
                    watch = asyncio.ensure_future(client.watch_ohlcv(symbol, timeframe))
                done, _ = await asyncio.wait({watch}, timeout=0.5)
                if not done:
                    continue
                candles, watch = None, None
                try:
                    candles = done.pop().result()
                    failures = 0
                except ccxt.BaseError as exc:
                    failures += 1
                    stats.reconnects += 1
                    say(f"websocket: {_one_line(exc)}; catching up over REST and reconnecting")
                    # A candle seen before the drop may have closed unseen: its last values are not final.
                    pending.clear()
                    seen_connection = None
                    stats.rest += self.fetch_bars(store, symbol, timeframe, start_ms).written
                    span = store.first_last(self.exchange_id, symbol, timeframe)
                    last = span[1] if span else last
                    await asyncio.sleep(min(self.config.backoff_s * 2 ** min(failures, 6), self.config.max_backoff_s))
                    continue
                connection = _connection(client)
                if connection is not seen_connection:
                    # A new socket (first, or after a drop ccxt.pro may have handled quietly): a candle
                    # seen on the old one may have closed unseen, and ccxt's candle cache may hand back
                    # such stale candles now. Only the newest candle is trusted; REST fills the rest.
                    if seen_connection is not None:
                        stats.reconnects += 1
                    pending.clear()
                    seen_connection = connection
                    newest_ts = max((int(c[0]) for c in candles), default=None)
                    candles = [c for c in candles if int(c[0]) == newest_ts]
                for candle in candles:
                    pending[int(candle[0])] = list(candle)
                newest = max(pending) if pending else None
                if newest is not None:
                    flush(newest)  # every candle before the newest has closed
        finally:
            if watch is not None:
                watch.cancel()
            await client.close()
        if pending:
            newest = max(pending)
            flush(newest)

    def fetch_trades(
        self, store, symbol: str, start_ms: int, end_ms: int | None = None, progress: Callable[[int, int], None] | None = None
    ):
        """Trade prints into the store (``quant data fetch ... kind=trades``); see :mod:`.ccxt_trades`."""
        from .ccxt_trades import fetch_trades

        return fetch_trades(self, store, symbol, start_ms, end_ms, progress)

    def collect_trades(
        self, store, symbol: str, start_ms: int, stop: threading.Event, on_event: Callable[[str], None] | None = None
    ) -> CollectStats:
        """``quant collect ... kind=trades`` (see :func:`.ccxt_trades.collect_trades`)."""
        from .ccxt_trades import collect_trades

        return collect_trades(self, store, symbol, start_ms, stop, on_event)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # a sync client has nothing to close
                pass


@dataclass
class CollectStats:
    """Bars ``quant collect`` wrote from each path, and websocket reconnects."""

    rest: int = 0
    websocket: int = 0
    reconnects: int = 0


def _has_pro(exchange_id: str) -> bool:
    """Does ccxt.pro stream this exchange's klines? (Coinbase's ccxt.pro client has no ``watchOHLCV``.)"""
    try:
        import ccxt.pro
    except ImportError:
        return False
    if exchange_id not in getattr(ccxt.pro, "exchanges", []):
        return False
    return bool(getattr(ccxt.pro, exchange_id)().has.get("watchOHLCV"))


def _connection(client) -> Any:
    """The websocket connection ccxt.pro is using now (a new object after every reconnect)."""
    clients = getattr(client, "clients", None) or {}
    return next(iter(clients.values()), None)


def _advance(progress, amount: int, report: FetchReport) -> None:
    if progress is not None and amount > 0:
        progress(amount, report.written)


def _subtract(piece: tuple[int, int], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``piece`` minus the union of ``holes``."""
    out = [piece]
    for ha, hb in holes:
        nxt = []
        for a, b in out:
            if hb <= a or ha >= b:
                nxt.append((a, b))
                continue
            if a < ha:
                nxt.append((a, ha))
            if hb < b:
                nxt.append((hb, b))
        out = nxt
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


def source_factory(exchange_id: str):
    """The registered factory for one ccxt id: ``factory(config, runtime)`` -> :class:`CcxtSource`."""

    def build(config: CcxtSourceConfig | None = None, runtime: Any = None) -> CcxtSource:
        return CcxtSource(config, runtime, exchange_id=exchange_id)

    build.Config = CcxtSourceConfig
    build.description = f"market data from {exchange_id} through ccxt"
    build.exchange_id = exchange_id
    return build


@hookimpl
def quant_register_data_sources(register):
    for exchange_id in ccxt.exchanges:
        register(exchange_id, source_factory(exchange_id))

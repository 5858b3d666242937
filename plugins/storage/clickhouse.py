"""Market data in ClickHouse: the embedded ``chdb`` store (default) and a ``clickhouse`` server.

Both speak SQL through clickhouse-connect, so everything below the client is one code path:
``clickhouse_connect.get_client(dsn="chdb:///path")`` runs the real ClickHouse engine in-process
(chDB), ``get_client(host=..., port=...)`` talks to a server over HTTP(S).

Schema (version in ``schema_version``; :data:`MIGRATIONS` brings any older database up to date):

* ``klines``: one row per (exchange, symbol, timeframe, ts) after de-duplication. A
  ReplacingMergeTree ordered by that key with ``ingested`` as the version, so re-importing or
  re-fetching a range never duplicates it, and the latest ingestion of a bar wins. Every read goes
  through ``FINAL``, so rows not yet merged in the background are de-duplicated too.
* ``funding``: funding rates of perpetuals, same idea, keyed by (exchange, symbol, ts).
* ``mark_klines`` and ``mark_fetch_pages``: the same two tables for **mark-price** klines (Binance
  ``/fapi/v1/markPriceKlines``, ccxt ``fetch_mark_ohlcv``; volume is 0). Every klines method works
  on them inside ``with store.prices("mark"):`` (``quant data fetch|import|gaps|export price=mark``);
  :meth:`ClickHouseStore.read_mark_bars` is what a run reads.
* ``fetch_pages``: pages the data source asked for and got fewer bars than the range holds
  (including none). They explain gaps: ``gaps()`` marks a hole the exchange itself has no bars for,
  so ``quant data fetch`` does not ask for it again and ``quant data gaps`` says why it is there.

Timestamps are int64 milliseconds UTC (the bar's open time), as in ccxt and Binance. Timeframes
above 1m that are not stored themselves are resampled from 1m in SQL (:meth:`read_bars`).

The chdb store is one process at a time: ClickHouse locks its data directory. A second process
gets a one-line error naming the directory (stop the other ``quant`` first, or use a server).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field, SecretStr

from btc_quant.sdk import BarArrays, DataError, Store, StoreConfig, StoreError, hookimpl, timeframe_ms

from .clickhouse_trades import TradeTables

log = logging.getLogger(__name__)

BAR_COLUMNS = ("ts", "open", "high", "low", "close", "volume")
MINUTE_MS = 60_000
#: Weekly bars start on Monday 00:00 UTC (Binance, ccxt); the epoch was a Thursday.
WEEK_OFFSET_MS = 4 * 86_400_000

#: (version, statements). Never edit an applied step; append a new one. ``{db}`` is the database.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE IF NOT EXISTS {db}.klines (
            exchange LowCardinality(String), symbol LowCardinality(String), timeframe LowCardinality(String),
            ts Int64 CODEC(Delta, ZSTD), open Float64, high Float64, low Float64, close Float64, volume Float64,
            ingested DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(ingested) ORDER BY (exchange, symbol, timeframe, ts)""",
            """CREATE TABLE IF NOT EXISTS {db}.funding (
            exchange LowCardinality(String), symbol LowCardinality(String), ts Int64, rate Float64,
            ingested DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(ingested) ORDER BY (exchange, symbol, ts)""",
        ),
    ),
    (
        2,
        (
            """CREATE TABLE IF NOT EXISTS {db}.fetch_pages (
            exchange LowCardinality(String), symbol LowCardinality(String), timeframe LowCardinality(String),
            since Int64, until Int64, expected UInt32, received UInt32,
            at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(at) ORDER BY (exchange, symbol, timeframe, since, until)""",
        ),
    ),
    (
        3,
        (
            """CREATE TABLE IF NOT EXISTS {db}.mark_klines (
            exchange LowCardinality(String), symbol LowCardinality(String), timeframe LowCardinality(String),
            ts Int64 CODEC(Delta, ZSTD), open Float64, high Float64, low Float64, close Float64, volume Float64,
            ingested DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(ingested) ORDER BY (exchange, symbol, timeframe, ts)""",
            """CREATE TABLE IF NOT EXISTS {db}.mark_fetch_pages (
            exchange LowCardinality(String), symbol LowCardinality(String), timeframe LowCardinality(String),
            since Int64, until Int64, expected UInt32, received UInt32,
            at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(at) ORDER BY (exchange, symbol, timeframe, since, until)""",
        ),
    ),
)
#: Kinds of klines the store keeps: last-trade prices (``klines``) and mark prices (``mark_klines``).
PRICES = {"trade": ("klines", "fetch_pages"), "mark": ("mark_klines", "mark_fetch_pages")}
SCHEMA_VERSION = MIGRATIONS[-1][0]


@dataclass(frozen=True)
class Series:
    """One stored series, as ``quant data ls`` lists it."""

    exchange: str
    symbol: str
    timeframe: str
    first_ms: int
    last_ms: int
    rows: int
    gaps: int
    price: str = "trade"  # "trade" (last-price klines) or "mark" (mark-price klines)


@dataclass(frozen=True)
class Gap:
    """Bars missing between ``start_ms`` (first missing bar) and ``end_ms`` (exclusive)."""

    start_ms: int
    end_ms: int
    bars: int
    #: ``"exchange has none"`` when a fetched page came back without them, else ``"not fetched"``.
    reason: str


class ClickHouseStore(TradeTables, Store):
    """The SQL layer both store plugins share; subclasses only build the client."""

    #: Name shown in messages.
    label: ClassVar[str] = "clickhouse"

    def __init__(self, config: StoreConfig, runtime: Any = None):
        self.config = config
        self.runtime = runtime
        self.db = getattr(config, "database", "btc_quant")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.db):
            raise DataError(f"store.database: {self.db!r} is not a plain identifier")
        self._lock = threading.RLock()
        self.client = None
        self._sessions = 0  # open session() blocks: a lazy store stays open between their reads
        self.price = "trade"  # which klines the klines methods work on (see prices())
        if not self.lazy:
            self._open()

    #: Connect on first use instead of in the constructor (and again after :meth:`close`).
    lazy: ClassVar[bool] = False

    def _open(self) -> None:
        self.client = self._connect()
        self.migrate()

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> Any:  # pragma: no cover - subclasses
        raise NotImplementedError

    def where(self) -> str:
        """Where the data lives, for messages (never with a password)."""
        return self.label

    def close(self) -> None:
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            client.close()

    @contextmanager
    def session(self):
        """Within the block, a lazy store (chDB) opened by a read stays open for the next reads (one
        connection and one migration check, not one per read), and is closed at its end unless it
        was open before. Held only across a run's loads: ClickHouse lets one process at a time open
        the directory, so other runs and ``quant collect`` wait only that long."""
        was_open = self.client is not None
        self._sessions += 1
        try:
            yield self
        finally:
            self._sessions -= 1
            if self.lazy and not was_open and not self._sessions:
                self.close()

    def __enter__(self) -> ClickHouseStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _command(self, sql: str, **params) -> Any:
        with self._lock:
            return self._guard(lambda: self.client.command(sql, parameters=params or None))

    def _query(self, sql: str, **params) -> list[tuple]:
        with self._lock:
            return self._guard(lambda: self.client.query(sql, parameters=params or None).result_rows)

    def _arrow(self, sql: str, **params) -> pa.Table:
        with self._lock:
            return self._guard(lambda: self.client.query_arrow(sql, parameters=params or None))

    def _guard(self, call):
        if self.client is None:
            if not self.lazy:
                raise StoreError(f"{self.where()}: the store is closed")
            self._open()
        try:
            return call()
        except StoreError:
            raise
        except Exception as exc:  # clickhouse-connect raises its own DatabaseError family
            raise StoreError(f"{self.where()}: {_first_line(exc)}") from exc

    # -- schema -------------------------------------------------------------------------------

    def schema_version(self) -> int:
        rows = self._query(f"SELECT max(version) FROM {self.db}.schema_version")
        return int(rows[0][0] or 0)

    def migrate(self, target: int = SCHEMA_VERSION) -> int:
        """Apply the migrations after the stored version up to ``target``; returns the version."""
        self._command(f"CREATE DATABASE IF NOT EXISTS {self.db}")
        self._command(
            f"CREATE TABLE IF NOT EXISTS {self.db}.schema_version (version UInt32, "
            "applied DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version"
        )
        current = self.schema_version()
        for version, statements in MIGRATIONS:
            if current < version <= target:
                for statement in statements:
                    self._command(statement.format(db=self.db))
                self._command(f"INSERT INTO {self.db}.schema_version (version) VALUES ({int(version)})")
                log.debug("%s: schema migrated to version %d", self.where(), version)
                current = version
        self.migrate_trades()  # trades and best bid/offer: their own track (clickhouse_trades.py)
        return current

    # -- bars ---------------------------------------------------------------------------------

    @property
    def _klines(self) -> str:
        return PRICES[self.price][0]

    @property
    def _pages(self) -> str:
        return PRICES[self.price][1]

    @contextmanager
    def prices(self, price: str):
        """Within the block, every klines method (write/read bars, first_last, gaps, pages, series
        counts) works on ``price`` klines: ``"trade"`` (default) or ``"mark"``."""
        if price not in PRICES:
            raise DataError(f"price: {price!r} is not one of {', '.join(PRICES)}")
        before, self.price = self.price, price
        try:
            yield self
        finally:
            self.price = before

    def read_mark_bars(
        self, exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[tuple[str, BarArrays]]:
        """Stored mark-price klines of every timeframe in ``[start_ms, end_ms)``, finest first."""
        rows = self._query(
            f"SELECT DISTINCT timeframe FROM {self.db}.mark_klines WHERE exchange = {{e:String}} AND symbol = {{s:String}}",
            e=exchange,
            s=symbol,
        )
        out = []
        with self.prices("mark"):
            for (timeframe,) in sorted(rows, key=lambda r: timeframe_ms(r[0])):
                out.append((timeframe, ClickHouseStore.read_bars(self, exchange, symbol, timeframe, start_ms, end_ms)))
        return out

    def write_bars(self, exchange: str, symbol: str, timeframe: str, bars: BarArrays | pd.DataFrame) -> int:
        """Insert bars (validated); rows already stored are replaced, never duplicated."""
        timeframe_ms(timeframe)
        if isinstance(bars, pd.DataFrame):
            bars = BarArrays.from_frame(bars, source=f"{exchange} {symbol} {timeframe}")
        n = len(bars)
        if n == 0:
            return 0

        def tag(value: str) -> pa.DictionaryArray:
            return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value]))

        table = pa.table(
            {
                "exchange": tag(exchange),
                "symbol": tag(symbol),
                "timeframe": tag(timeframe),
                **{c: pa.array(getattr(bars, c)) for c in BAR_COLUMNS},
            }
        )
        with self._lock:
            self._guard(lambda: self.client.insert_arrow(f"{self.db}.{self._klines}", table))
        return n

    def _series_filter(self, timeframe: str = "{timeframe:String}") -> str:
        return f"exchange = {{exchange:String}} AND symbol = {{symbol:String}} AND timeframe = {timeframe}"

    def _range_filter(self, start_ms: int | None, end_ms: int | None, column: str = "ts") -> str:
        parts = []
        if start_ms is not None:
            parts.append(f"{column} >= {int(start_ms)}")
        if end_ms is not None:
            parts.append(f"{column} < {int(end_ms)}")
        return "".join(f" AND {p}" for p in parts)

    def has_series(self, exchange: str, symbol: str, timeframe: str) -> bool:
        rows = self._query(
            f"SELECT count() FROM (SELECT 1 FROM {self.db}.{self._klines} WHERE {self._series_filter()} LIMIT 1)",
            exchange=exchange,
            symbol=symbol,
            timeframe=timeframe,
        )
        return rows[0][0] > 0

    def read_bars(self, exchange: str, symbol: str, timeframe: str, start_ms: int | None = None, end_ms: int | None = None) -> BarArrays:
        """Stored bars of ``timeframe``; if none are stored and it is above 1m, 1m bars resampled in SQL.

        A resampled bar: open of its first minute, high/low the extremes, close of its last minute,
        summed volume; minutes missing inside it are simply absent (as on the exchange when nothing
        traded). The last bucket is returned only once its final minute is stored, so a bar that is
        still forming is never presented as closed.
        """
        step = timeframe_ms(timeframe)
        if timeframe != "1m" and step > MINUTE_MS and not self.has_series(exchange, symbol, timeframe):
            return self._resampled(exchange, symbol, timeframe, step, start_ms, end_ms)
        table = self._arrow(
            f"SELECT ts, open, high, low, close, volume FROM {self.db}.{self._klines} FINAL "
            f"WHERE {self._series_filter()}{self._range_filter(start_ms, end_ms)} ORDER BY ts",
            exchange=exchange,
            symbol=symbol,
            timeframe=timeframe,
        )
        return _bar_arrays(table)

    def _resampled(self, exchange, symbol, timeframe, step, start_ms, end_ms) -> BarArrays:
        offset = WEEK_OFFSET_MS if timeframe.endswith("w") else 0
        bucket = f"(intDiv(ts - {offset}, {step}) * {step} + {offset})"
        # Whole buckets only: widen the 1m range to bucket edges, then keep buckets inside the request.
        lo = None if start_ms is None else (start_ms - offset) // step * step + offset
        table = self._arrow(
            f"""
            WITH last_minute AS (SELECT max(ts) FROM {self.db}.{self._klines}
                                 WHERE {self._series_filter("'1m'")})
            SELECT {bucket} AS b, argMin(open, ts) AS open, max(high) AS high, min(low) AS low,
                   argMax(close, ts) AS close, sum(volume) AS volume
            FROM {self.db}.{self._klines} FINAL
            WHERE {self._series_filter("'1m'")}{self._range_filter(lo, end_ms)}
            GROUP BY b
            HAVING b + {step} <= (SELECT * FROM last_minute) + {MINUTE_MS}
               {"" if start_ms is None else f"AND b >= {int(start_ms)}"}
            ORDER BY b
            """,
            exchange=exchange,
            symbol=symbol,
        )
        return _bar_arrays(table.rename_columns(list(BAR_COLUMNS)))

    def first_last(self, exchange: str, symbol: str, timeframe: str) -> tuple[int, int] | None:
        rows = self._query(
            f"SELECT min(ts), max(ts), count() FROM {self.db}.{self._klines} WHERE {self._series_filter()}",
            exchange=exchange,
            symbol=symbol,
            timeframe=timeframe,
        )
        first, last, count = rows[0]
        return None if count == 0 else (int(first), int(last))

    def count_rows(self, exchange: str, symbol: str, timeframe: str) -> tuple[int, int]:
        """(de-duplicated rows, physical rows): equal once ClickHouse has merged, or after OPTIMIZE."""
        rows = self._query(
            f"SELECT (SELECT count() FROM {self.db}.{self._klines} FINAL WHERE {self._series_filter()}), "
            f"(SELECT count() FROM {self.db}.{self._klines} WHERE {self._series_filter()})",
            exchange=exchange,
            symbol=symbol,
            timeframe=timeframe,
        )
        return int(rows[0][0]), int(rows[0][1])

    def series(self) -> list[Series]:
        """Every stored series (trade klines, then mark-price klines) with its span, row count and number of gaps."""
        out = []
        for price in PRICES:
            with self.prices(price):
                rows = self._query(
                    f"SELECT exchange, symbol, timeframe, min(ts), max(ts), count() FROM {self.db}.{self._klines} FINAL "
                    "GROUP BY exchange, symbol, timeframe ORDER BY exchange, symbol, timeframe"
                )
                out += [
                    Series(ex, sym, tf, int(first), int(last), int(n), len(self.gaps(ex, sym, tf)), price)
                    for ex, sym, tf, first, last, n in rows
                ]
        return out

    # -- gaps and fetch pages -----------------------------------------------------------------

    def record_page(self, exchange: str, symbol: str, timeframe: str, since_ms: int, until_ms: int, expected: int, received: int) -> None:
        """Remember that a fetch of ``[since_ms, until_ms)`` returned fewer bars than the range holds."""
        self._command(
            f"INSERT INTO {self.db}.{self._pages} (exchange, symbol, timeframe, since, until, expected, received) "
            "VALUES ({exchange:String}, {symbol:String}, {timeframe:String}, {since:Int64}, {until:Int64}, "
            "{expected:UInt32}, {received:UInt32})",
            exchange=exchange,
            symbol=symbol,
            timeframe=timeframe,
            since=int(since_ms),
            until=int(until_ms),
            expected=int(expected),
            received=int(received),
        )

    def short_pages(self, exchange: str, symbol: str, timeframe: str) -> list[tuple[int, int, int, int]]:
        """Recorded short or empty pages: ``(since_ms, until_ms, expected, received)``."""
        return [
            tuple(int(v) for v in row)
            for row in self._query(
                f"SELECT since, until, expected, received FROM {self.db}.{self._pages} FINAL WHERE {self._series_filter()} ORDER BY since",
                exchange=exchange,
                symbol=symbol,
                timeframe=timeframe,
            )
        ]

    def holes(
        self, exchange: str, symbol: str, timeframe: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[tuple[int, int]]:
        """``[(first missing ts, next stored ts), ...]`` between stored bars, found by a query."""
        step = timeframe_ms(timeframe)
        rows = self._query(
            f"""
            SELECT prev + {step}, ts FROM (
                SELECT ts, lagInFrame(ts, 1, toInt64(-1)) OVER (ORDER BY ts ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS prev
                FROM (SELECT DISTINCT ts FROM {self.db}.{self._klines}
                      WHERE {self._series_filter()}{self._range_filter(start_ms, end_ms)})
            ) WHERE prev >= 0 AND ts - prev > {step} ORDER BY ts
            """,
            exchange=exchange,
            symbol=symbol,
            timeframe=timeframe,
        )
        return [(int(a), int(b)) for a, b in rows]

    def gaps(self, exchange: str, symbol: str, timeframe: str, start_ms: int | None = None, end_ms: int | None = None) -> list[Gap]:
        """Missing bars: holes between stored bars, and ranges a fetch found empty at the exchange.

        A hole fully covered by recorded short pages is ``"exchange has none"``; other holes are
        ``"not fetched"`` (``quant data fetch`` fills those). Recorded empty ranges outside the stored
        span are listed too, so an exchange that returned nothing never looks like complete data.
        """
        step = timeframe_ms(timeframe)
        pages = self.short_pages(exchange, symbol, timeframe)
        out = []
        for a, b in self.holes(exchange, symbol, timeframe, start_ms, end_ms):
            reason = "exchange has none" if _covered(a, b, pages) else "not fetched"
            out.append(Gap(a, b, (b - a) // step, reason))
        span = self.first_last(exchange, symbol, timeframe)
        for since, until, _expected, _received in pages:
            lo, hi = since, until
            if span is not None:  # only the part outside the stored span; inside it, holes cover it
                if since <= span[0]:
                    hi = min(until, span[0])
                elif until > span[1] + step:
                    lo = max(since, span[1] + step)
                else:
                    continue
            if start_ms is not None:
                lo = max(lo, start_ms)
            if end_ms is not None:
                hi = min(hi, end_ms)
            if hi - lo >= step:
                out.append(Gap(lo, hi, (hi - lo) // step, "exchange has none"))
        return sorted(out, key=lambda g: g.start_ms)

    # -- funding ------------------------------------------------------------------------------

    def write_funding(self, exchange: str, symbol: str, frame: pd.DataFrame) -> int:
        """Insert funding rates (columns ``ts`` ms, ``rate``); re-inserting replaces."""
        if len(frame) == 0:
            return 0
        ts = np.asarray(frame["ts"], dtype=np.int64)
        rate = np.asarray(frame["rate"], dtype=np.float64)
        if not np.isfinite(rate).all():
            raise DataError(f"{exchange} {symbol} funding: non-finite rate at row {int(np.flatnonzero(~np.isfinite(rate))[0])}")
        n = len(ts)
        table = pa.table(
            {
                "exchange": pa.array([exchange] * n),
                "symbol": pa.array([symbol] * n),
                "ts": pa.array(ts),
                "rate": pa.array(rate),
            }
        )
        with self._lock:
            self._guard(lambda: self.client.insert_arrow(f"{self.db}.funding", table))
        return n

    def read_funding(self, exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None) -> pd.DataFrame:
        table = self._arrow(
            f"SELECT ts, rate FROM {self.db}.funding FINAL "
            f"WHERE exchange = {{exchange:String}} AND symbol = {{symbol:String}}{self._range_filter(start_ms, end_ms)} ORDER BY ts",
            exchange=exchange,
            symbol=symbol,
        )
        return pd.DataFrame(
            {
                "ts": np.asarray(table.column("ts").to_numpy(), dtype=np.int64),
                "rate": np.asarray(table.column("rate").to_numpy(), dtype=np.float64),
            }
        )

    def funding_span(self, exchange: str, symbol: str) -> tuple[int, int, int] | None:
        rows = self._query(
            f"SELECT min(ts), max(ts), count() FROM {self.db}.funding FINAL WHERE exchange = {{e:String}} AND symbol = {{s:String}}",
            e=exchange,
            s=symbol,
        )
        first, last, n = rows[0]
        return None if n == 0 else (int(first), int(last), int(n))

    def funding_series(self) -> list[tuple[str, str, int, int, int]]:
        """``(exchange, symbol, first ts, last ts, rows)`` of every stored funding series."""
        return [
            (ex, sym, int(a), int(b), int(n))
            for ex, sym, a, b, n in self._query(
                f"SELECT exchange, symbol, min(ts), max(ts), count() FROM {self.db}.funding FINAL "
                "GROUP BY exchange, symbol ORDER BY exchange, symbol"
            )
        ]

    def optimize(self) -> None:
        """Merge parts now (ClickHouse does it in the background anyway); reads never need it."""
        for table in ("klines", "funding", "fetch_pages", "mark_klines", "mark_fetch_pages"):
            self._command(f"OPTIMIZE TABLE {self.db}.{table} FINAL")


def _covered(a: int, b: int, pages: Iterable[tuple[int, int, int, int]]) -> bool:
    """Is ``[a, b)`` inside the union of the pages' ranges?"""
    pos = a
    for since, until, _e, _r in sorted(pages):
        if since > pos:
            break
        pos = max(pos, until)
        if pos >= b:
            return True
    return pos >= b


def _locked_by_other_process(status: Path) -> bool:
    """Does another process hold the lock ClickHouse takes on ``<data dir>/status``?"""
    import fcntl

    if not status.exists():
        return False
    with open(status, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _bar_arrays(table: pa.Table) -> BarArrays:
    return BarArrays(*(np.ascontiguousarray(table.column(c).to_numpy(), dtype=np.int64 if c == "ts" else np.float64) for c in BAR_COLUMNS))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:400]
    return text[:400]


# ----------------------------------------------------------------------------------------------
# The two plugins


class ChdbConfig(StoreConfig):
    path: Path | None = Field(None, description="data directory of the embedded store; default: <user data dir>/chdb")
    database: str = Field("btc_quant", description="database holding the tables")
    lock_wait_s: float = Field(10.0, ge=0, description="how long to wait for another process to release the store")


class ChdbStore(ClickHouseStore):
    """ClickHouse in-process (chDB): zero set-up, data under the user data dir.

    ClickHouse lets one process at a time open a data directory, and chDB one directory per
    process. So the engine is opened on first use, and a read by a store that was not already open
    (a backtest loading its bars) closes it again at once: many runs can read the same store one
    after another, and a store that was never written is not even created. Opening waits up to
    ``lock_wait_s`` for another process to let go.
    """

    Config = ChdbConfig
    label = "chdb"
    lazy = True

    def __init__(self, config: ChdbConfig | None = None, runtime: Any = None):
        config = config or ChdbConfig()
        if config.path is not None:
            self.path = Path(config.path).expanduser()
        else:
            from btc_quant.core.paths import data_dir

            self.path = (runtime.data_dir if runtime is not None else data_dir()) / "chdb"
        super().__init__(config, runtime)

    def _exists(self) -> bool:
        """Has a ClickHouse engine ever run here (its ``metadata`` folder outlives it)?"""
        return (self.path / "metadata").is_dir()

    def read_bars(self, exchange, symbol, timeframe, start_ms=None, end_ms=None) -> BarArrays:
        read = super().read_bars
        empty = BarArrays(np.empty(0, dtype=np.int64), *(np.empty(0) for _ in range(5)))
        return self._read_once(lambda: read(exchange, symbol, timeframe, start_ms, end_ms), empty)

    def read_funding(self, exchange, symbol, start_ms=None, end_ms=None) -> pd.DataFrame:
        read = super().read_funding
        return self._read_once(lambda: read(exchange, symbol, start_ms, end_ms), lambda: Store.read_funding(self, exchange, symbol))

    def read_mark_bars(self, exchange, symbol, start_ms=None, end_ms=None) -> list[tuple[str, BarArrays]]:
        read = super().read_mark_bars
        return self._read_once(lambda: read(exchange, symbol, start_ms, end_ms), [])

    def where(self) -> str:
        return f"chdb store {self.path}"

    def _connect(self) -> Any:
        import clickhouse_connect

        self.path.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.config.lock_wait_s
        while _locked_by_other_process(self.path / "status") and time.monotonic() < deadline:
            time.sleep(0.2)
        if _locked_by_other_process(self.path / "status"):
            raise StoreError(
                f"{self.where()} is in use by another process (ClickHouse locks its data directory)",
                hint="stop the other quant process (e.g. a running quant collect), or use store=clickhouse with a server",
            )
        try:
            return clickhouse_connect.get_client(dsn=f"chdb://{self.path}")
        except Exception as exc:
            text = str(exc)
            if "Cannot lock file" in text or "already running" in text:
                raise StoreError(
                    f"{self.where()} is in use by another process (ClickHouse locks its data directory)",
                    hint="stop the other quant process (e.g. a running quant collect), or use store=clickhouse with a server",
                ) from exc
            if "already initialized with path" in text:
                raise StoreError(f"{self.where()}: this process already has another chdb store open; close it first") from exc
            raise StoreError(f"{self.where()}: cannot open it: {_first_line(exc)}") from exc


class ServerConfig(StoreConfig):
    url: str = Field("http://localhost:8123", description="ClickHouse HTTP(S) interface, http(s)://host:port")
    user: str = Field("default", description="ClickHouse user")
    password: SecretStr = Field(SecretStr(""), description="ClickHouse password (secret; prefer QUANT_STORE__PASSWORD)")
    database: str = Field("btc_quant", description="database holding the tables (created if missing)")
    connect_timeout_s: float = Field(10.0, gt=0, description="seconds to wait for the server to answer")


class ServerStore(ClickHouseStore):
    """A ClickHouse server or cluster reached over HTTP(S) with clickhouse-connect."""

    Config = ServerConfig
    label = "clickhouse"

    def where(self) -> str:
        return f"clickhouse store {self.config.url}"

    def _connect(self) -> Any:
        import clickhouse_connect

        parts = urlsplit(self.config.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"store.url: expected http(s)://host:port, got {self.config.url!r}")
        if parts.username or parts.password:
            raise StoreError("store.url: put the user and password in store.user / store.password, not in the URL")
        quiet = logging.getLogger("clickhouse_connect")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # it logs a traceback before raising; the error below says it in one line
        try:
            return clickhouse_connect.get_client(
                host=parts.hostname,
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                secure=parts.scheme == "https",
                username=self.config.user,
                password=self.config.password.get_secret_value(),
                connect_timeout=self.config.connect_timeout_s,
                send_receive_timeout=300,
                query_retries=2,
            )
        except Exception as exc:
            text = _first_line(exc)
            if "516" in text or "AUTHENTICATION" in text.upper() or "password" in text.lower():
                raise StoreError(
                    f"{self.where()}: the server refused user {self.config.user!r} (wrong user or password)",
                    hint="check store.user and store.password (QUANT_STORE__PASSWORD)",
                ) from exc
            raise StoreError(
                f"{self.where()}: cannot reach the server ({text})",
                hint="is ClickHouse running and store.url its HTTP port (8123, or 8443 for https)?",
            ) from exc
        finally:
            quiet.setLevel(level)


@hookimpl
def quant_register_stores(register):
    register("chdb", ChdbStore)
    register("clickhouse", ServerStore)

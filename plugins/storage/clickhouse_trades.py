"""Trades and best bid/offer in the ClickHouse stores (chDB and server): tables, writes, reads.

Kept apart from the klines schema in :mod:`.clickhouse` (its own migration track, table
``trade_schema_version``), so the two evolve without renumbering each other.

* ``trades``: one row per (exchange, symbol, trade_id) after de-duplication: a ReplacingMergeTree
  with ``ingested`` as the version, so re-importing or re-fetching never duplicates a print. Binance
  aggTrades are stored under their first trade id with ``last_id`` their last one. ``side`` is the
  taker's (+1 buy, -1 sell). A minmax index on ``ts`` keeps time-range reads from scanning a series.
* ``quotes``: best bid/offer updates (Binance ``bookTicker``), keyed by (exchange, symbol, ts,
  update_id).
* :meth:`TradeTables.trade_bars` builds klines from trades in SQL (open = first print by
  (ts, trade_id), close = last, volume = summed qty), as the exchange builds its klines.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from btc_quant.core.trades import QUOTE_COLUMNS, TRADE_COLUMNS, QuoteArrays, TradeArrays
from btc_quant.sdk import BarArrays, timeframe_ms

log = logging.getLogger(__name__)

#: (version, statements) of the trades track. Never edit an applied step; append a new one.
TRADE_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE IF NOT EXISTS {db}.trades (
            exchange LowCardinality(String), symbol LowCardinality(String),
            trade_id Int64, last_id Int64, ts Int64 CODEC(Delta, ZSTD), price Float64, qty Float64, side Int8,
            ingested DateTime64(3, 'UTC') DEFAULT now64(3),
            INDEX ts_range ts TYPE minmax GRANULARITY 4
        ) ENGINE = ReplacingMergeTree(ingested) ORDER BY (exchange, symbol, trade_id)""",
            """CREATE TABLE IF NOT EXISTS {db}.quotes (
            exchange LowCardinality(String), symbol LowCardinality(String),
            ts Int64 CODEC(Delta, ZSTD), update_id Int64, bid_px Float64, bid_qty Float64, ask_px Float64, ask_qty Float64,
            ingested DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(ingested) ORDER BY (exchange, symbol, ts, update_id)""",
        ),
    ),
)
TRADE_SCHEMA_VERSION = TRADE_MIGRATIONS[-1][0]


def _tag(value: str, n: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value]))


class TradeTables:
    """The trades half of :class:`~.clickhouse.ClickHouseStore` (it mixes this in)."""

    def _read_once(self, call, empty):
        """Run a read; a lazy store (chDB) that was not open is closed again after it (unless a
        :meth:`~.clickhouse.ClickHouseStore.session` holds it), and one that was never created
        reads as empty (``empty``, or what it returns when it is a function: built only then)."""
        exists = getattr(self, "_exists", None)
        if self.client is None and exists is not None and not exists():
            return empty() if callable(empty) else empty
        held = self.client is not None
        try:
            return call()
        finally:
            if not held and self.lazy and not self._sessions:
                self.close()

    def migrate_trades(self) -> int:
        """Apply the trades track's migrations; returns its version."""
        self._command(
            f"CREATE TABLE IF NOT EXISTS {self.db}.trade_schema_version (version UInt32, "
            "applied DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version"
        )
        current = int(self._query(f"SELECT max(version) FROM {self.db}.trade_schema_version")[0][0] or 0)
        for version, statements in TRADE_MIGRATIONS:
            if current < version:
                for statement in statements:
                    self._command(statement.format(db=self.db))
                self._command(f"INSERT INTO {self.db}.trade_schema_version (version) VALUES ({int(version)})")
                log.debug("%s: trades schema migrated to version %d", self.where(), version)
                current = version
        return current

    # -- writes -------------------------------------------------------------------------------

    def write_trades(self, exchange: str, symbol: str, trades: TradeArrays) -> int:
        """Insert trade prints; a trade id already stored is replaced, never duplicated."""
        n = len(trades)
        if n == 0:
            return 0
        table = pa.table(
            {"exchange": _tag(exchange, n), "symbol": _tag(symbol, n), **{c: pa.array(getattr(trades, c)) for c in TRADE_COLUMNS}}
        )
        with self._lock:
            self._guard(lambda: self.client.insert_arrow(f"{self.db}.trades", table))
        return n

    def write_quotes(self, exchange: str, symbol: str, quotes: QuoteArrays) -> int:
        """Insert best bid/offer updates; re-inserting replaces."""
        n = len(quotes)
        if n == 0:
            return 0
        table = pa.table(
            {"exchange": _tag(exchange, n), "symbol": _tag(symbol, n), **{c: pa.array(getattr(quotes, c)) for c in QUOTE_COLUMNS}}
        )
        with self._lock:
            self._guard(lambda: self.client.insert_arrow(f"{self.db}.quotes", table))
        return n

    # -- reads --------------------------------------------------------------------------------

    def read_trades(self, exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None) -> TradeArrays:
        """De-duplicated prints with ``start_ms <= ts < end_ms``, sorted by (ts, trade_id)."""

        def read() -> TradeArrays:
            table = self._arrow(
                f"SELECT {', '.join(TRADE_COLUMNS)} FROM {self.db}.trades FINAL "
                f"WHERE exchange = {{exchange:String}} AND symbol = {{symbol:String}}{self._range_filter(start_ms, end_ms)} "
                "ORDER BY ts, trade_id",
                exchange=exchange,
                symbol=symbol,
            )
            return TradeArrays(*(table.column(c).to_numpy() for c in TRADE_COLUMNS))

        return self._read_once(read, TradeArrays.empty())

    def read_quotes(self, exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None) -> QuoteArrays:
        """De-duplicated best bid/offer updates with ``start_ms <= ts < end_ms``, sorted."""

        def read() -> QuoteArrays:
            table = self._arrow(
                f"SELECT {', '.join(QUOTE_COLUMNS)} FROM {self.db}.quotes FINAL "
                f"WHERE exchange = {{exchange:String}} AND symbol = {{symbol:String}}{self._range_filter(start_ms, end_ms)} "
                "ORDER BY ts, update_id",
                exchange=exchange,
                symbol=symbol,
            )
            return QuoteArrays(*(table.column(c).to_numpy() for c in QUOTE_COLUMNS))

        return self._read_once(read, QuoteArrays.empty())

    def trade_span(self, exchange: str, symbol: str) -> tuple[int, int, int, int, int] | None:
        """``(first ts, last ts, rows, first trade id, last trade id)`` of a stored tape, or None."""
        rows = self._query(
            f"SELECT min(ts), max(ts), count(), min(trade_id), max(last_id) FROM {self.db}.trades FINAL "
            "WHERE exchange = {e:String} AND symbol = {s:String}",
            e=exchange,
            s=symbol,
        )
        first, last, n, lo, hi = rows[0]
        return None if n == 0 else (int(first), int(last), int(n), int(lo), int(hi))

    def trade_gaps(self, exchange: str, symbol: str) -> list[tuple[int, int, int, int]]:
        """Missing trade ids of a tape whose ids are contiguous (Binance): ``(first missing id,
        last missing id, ts before, ts after)`` for each hole, found by a query."""
        rows = self._query(
            f"""
            SELECT prev_last + 1, trade_id - 1, prev_ts, ts FROM (
                SELECT trade_id, ts,
                       lagInFrame(last_id, 1, toInt64(-1)) OVER w AS prev_last,
                       lagInFrame(ts, 1, toInt64(-1)) OVER w AS prev_ts
                FROM {self.db}.trades FINAL WHERE exchange = {{e:String}} AND symbol = {{s:String}}
                WINDOW w AS (ORDER BY trade_id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
            ) WHERE prev_last >= 0 AND trade_id > prev_last + 1 ORDER BY trade_id
            """,
            e=exchange,
            s=symbol,
        )
        return [tuple(int(v) for v in row) for row in rows]

    def trade_series(self) -> list[tuple[str, str, str, int, int, int]]:
        """``(exchange, symbol, "trades"|"quotes", first ts, last ts, rows)`` of every stored tape."""
        out = []
        for table, label in (("trades", "trades"), ("quotes", "quotes")):
            out += [
                (ex, sym, label, int(a), int(b), int(n))
                for ex, sym, a, b, n in self._query(
                    f"SELECT exchange, symbol, min(ts), max(ts), count() FROM {self.db}.{table} FINAL "
                    "GROUP BY exchange, symbol ORDER BY exchange, symbol"
                )
            ]
        return out

    def trade_bars(
        self, exchange: str, symbol: str, timeframe: str = "1m", start_ms: int | None = None, end_ms: int | None = None
    ) -> BarArrays:
        """Klines built from stored trades in SQL: one bar per bucket that has a print.

        As the exchange builds them: open/close are the first/last print by (ts, trade_id), high/low
        the extremes, volume the summed quantity (base asset). A bucket the tape covers only in part
        gives a partial bar; callers compare full buckets only.
        """
        step = timeframe_ms(timeframe)
        # (ts, trade_id) ordered as one Int128, ts * 2^64 + trade_id (trade ids fit in Int64): the
        # same order as the tuple, and ClickHouse's argMin/argMax compare it ~7x faster
        key = "bitShiftLeft(toInt128(ts), 64) + trade_id"

        def read() -> BarArrays:
            table = self._arrow(
                f"""
                SELECT intDiv(ts, {step}) * {step} AS b, argMin(price, {key}) AS open, max(price) AS high,
                       min(price) AS low, argMax(price, {key}) AS close, sum(qty) AS volume
                FROM {self.db}.trades FINAL
                WHERE exchange = {{exchange:String}} AND symbol = {{symbol:String}}{self._range_filter(start_ms, end_ms)}
                GROUP BY b ORDER BY b
                """,
                exchange=exchange,
                symbol=symbol,
            )
            return BarArrays(
                *(np.ascontiguousarray(table.column(i).to_numpy(), dtype=np.int64 if i == 0 else np.float64) for i in range(6))
            )

        return self._read_once(read, BarArrays(*(np.empty(0, dtype=np.int64 if i == 0 else np.float64) for i in range(6))))

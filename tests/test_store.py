"""The ClickHouse store suite, run against both the embedded chDB engine and a server over HTTP.

The ``http`` leg talks to ``btc_quant.testing.clickhouse_http`` (the chDB engine behind the
ClickHouse HTTP interface) through clickhouse-connect's real HTTP client, as ``store=clickhouse``
does against a ClickHouse server. Every test gets its own database, so the legs share one engine
each. Data is real: Binance BTC/USDT bars from ``../shared/data``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from btc_quant.core.data import BarArrays, read_bars_file
from btc_quant.core.errors import StoreError
from btc_quant.plugins.storage.clickhouse import (
    SCHEMA_VERSION,
    ChdbConfig,
    ChdbStore,
    ServerConfig,
    ServerStore,
)
from btc_quant.testing.process import ServerProcess

PASSWORD = "tEst-pa55word"
EX, SYM = "binance", "BTC/USDT"


BUNDLED = REPO / "testing" / "exchange" / "data"
#: Binance's maintenance hole in the bundled spot bars: no candles 2021-04-20 02:00 .. 04:29 UTC.
HOLE = (pd.Timestamp("2021-04-20 02:00", tz="UTC").value // 1_000_000, pd.Timestamp("2021-04-20 04:30", tz="UTC").value // 1_000_000)


def shared_file(name: str):
    """A file of the project's shared real-data set (``../shared/data`` of the main checkout)."""
    for parent in REPO.parents:
        if (parent / "shared" / "data" / name).exists():
            return parent / "shared" / "data" / name
    pytest.skip(f"needs {name} of the shared real-data set (shared/data next to the checkout)")


@pytest.fixture(scope="session")
def spot_1m():
    """Real Binance spot BTC/USDT 1m bars, 2021-04-19 .. 21 (4,170 bars, one exchange hole)."""
    return read_bars_file(BUNDLED / "binance_btcusdt_1m_2021-04-19_21.parquet")


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("chdb_store")


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("chdb_http")
    import os

    env = {**os.environ, "CLICKHOUSE_HTTP_PASSWORD": PASSWORD}
    server = ServerProcess("btc_quant.testing.clickhouse_http", "--path", str(path), "--user", "tester", env=env).start()
    yield server
    server.stop()


@pytest.fixture(params=["chdb", "http"])
def make_store(request, chdb_dir):
    """``make_store()`` -> a store on a fresh database of the leg; same database on later calls."""
    database = f"t_{uuid.uuid4().hex[:10]}"
    opened = []

    def make(**overrides):
        if request.param == "chdb":
            store = ChdbStore(ChdbConfig(path=chdb_dir, database=database, **overrides))
        else:
            server = request.getfixturevalue("http_server")
            store = ServerStore(ServerConfig(url=server.url, user="tester", password=PASSWORD, database=database, **overrides))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store):
    return make_store()


def test_round_trip_is_exact_and_reinsert_never_duplicates(store, spot_1m):
    assert store.write_bars(EX, SYM, "1m", spot_1m) == len(spot_1m)
    store.write_bars(EX, SYM, "1m", spot_1m[1000:3000])  # a re-fetch of an overlapping range
    got = store.read_bars(EX, SYM, "1m")
    assert len(got) == len(spot_1m)
    for column in ("ts", "open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(got, column), getattr(spot_1m, column))
    deduplicated, physical = store.count_rows(EX, SYM, "1m")
    assert (deduplicated, physical) == (len(spot_1m), len(spot_1m) + 2000)
    store.optimize()
    assert store.count_rows(EX, SYM, "1m") == (len(spot_1m), len(spot_1m))


def test_latest_ingestion_wins(store, spot_1m):
    piece = spot_1m[:100]
    store.write_bars(EX, SYM, "1m", piece)
    corrected = piece.to_frame()
    corrected["close"] = corrected["close"] + 1.0  # e.g. the exchange corrected candles afterwards
    corrected["high"] = np.maximum(corrected["high"], corrected["close"])
    store.write_bars(EX, SYM, "1m", corrected)
    got = store.read_bars(EX, SYM, "1m")
    np.testing.assert_array_equal(got.close, piece.close + 1.0)


def test_range_reads_are_half_open(store, spot_1m):
    store.write_bars(EX, SYM, "1m", spot_1m)
    start, end = int(spot_1m.ts[500]), int(spot_1m.ts[1500])
    got = store.read_bars(EX, SYM, "1m", start, end)
    np.testing.assert_array_equal(got.ts, spot_1m.ts[500:1500])
    assert len(store.read_bars(EX, SYM, "1m", 0, 1)) == 0
    assert len(store.read_bars(EX, "ETH/USDT", "1m")) == 0


def test_hourly_resampled_in_sql(store, spot_1m):
    store.write_bars(EX, SYM, "1m", spot_1m[:-1])  # the last hour is then still forming
    hourly = store.read_bars(EX, SYM, "1h")
    frame = spot_1m[:-1].to_frame()
    frame["hour"] = frame.ts // 3_600_000 * 3_600_000
    want = (
        frame.groupby("hour")
        .agg(open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"), volume=("volume", "sum"))
        .iloc[:-1]
    )
    assert len(hourly) == len(want) == 72 - 2 - 1  # 2 hours Binance has no candles for, the forming hour
    np.testing.assert_array_equal(hourly.ts, want.index.to_numpy())
    for column in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(hourly, column), want[column].to_numpy())
    np.testing.assert_allclose(hourly.volume, want["volume"].to_numpy(), rtol=1e-12)
    four = store.read_bars(EX, SYM, "4h", int(hourly.ts[4]))
    assert four.ts[0] == hourly.ts[4] and four.high[0] == hourly.high[4:8].max() and four.close[0] == hourly.close[7]


def test_hourly_resampled_in_sql_matches_binance_hourly_candles(store):
    """1m -> 1h in SQL reproduces Binance's own hourly candles (the real 1h file) exactly."""
    bars = read_bars_file(shared_file("binance_btcusdt_1m.parquet"))
    start = pd.Timestamp("2021-06-11", tz="UTC").value // 1_000_000
    store.write_bars(EX, SYM, "1m", bars.between(start, start + 10 * 86_400_000))
    hourly = store.read_bars(EX, SYM, "1h")
    assert len(hourly) == 240
    real = read_bars_file(shared_file("binance_btcusdt_1h.parquet")).between(int(hourly.ts[0]), int(hourly.ts[-1]) + 1)
    np.testing.assert_array_equal(hourly.ts, real.ts)
    for column in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(hourly, column), getattr(real, column))
    np.testing.assert_allclose(hourly.volume, real.volume, rtol=1e-9)


def test_a_stored_timeframe_is_read_as_stored(store):
    hourly = read_bars_file(REPO / "examples" / "data" / "btc_perp_1m_2022-01.parquet")[:500]
    store.write_bars(EX, SYM, "1h", hourly)  # stored as 1h: never resampled
    np.testing.assert_array_equal(store.read_bars(EX, SYM, "1h").close, hourly.close)


def test_gaps_are_found_by_query_and_explained_by_recorded_pages(store, spot_1m):
    store.write_bars(EX, SYM, "1m", spot_1m)
    store.write_bars(EX, SYM, "1m", spot_1m[3000:3010])  # already there: no new gap
    gaps = store.gaps(EX, SYM, "1m")
    assert [(g.start_ms, g.end_ms, g.bars, g.reason) for g in gaps] == [(*HOLE, 150, "not fetched")]
    # A fetch asked for the hole's minutes and the exchange had none of them: recorded, explained.
    store.record_page(EX, SYM, "1m", HOLE[0] - 60_000 * 10, HOLE[1], 160, 10)
    assert store.gaps(EX, SYM, "1m")[0].reason == "exchange has none"
    # An empty page before the stored span is a gap too, not silence.
    first = int(spot_1m.ts[0])
    store.record_page(EX, SYM, "1m", first - 60_000 * 500, first, 500, 0)
    gaps = store.gaps(EX, SYM, "1m")
    assert (gaps[0].start_ms, gaps[0].end_ms, gaps[0].bars) == (first - 60_000 * 500, first, 500)
    assert store.gaps(EX, SYM, "1m", first, None) == gaps[1:]
    [listed] = store.series()
    assert (listed.exchange, listed.symbol, listed.timeframe, listed.rows, listed.gaps) == (EX, SYM, "1m", len(spot_1m), 2)
    assert (listed.first_ms, listed.last_ms) == (first, int(spot_1m.ts[-1]))


def test_funding_round_trip_and_dedup(store):
    rates = pd.read_csv(_funding_csv())
    store.write_funding("binanceusdm", "BTC/USDT:USDT", rates)
    store.write_funding("binanceusdm", "BTC/USDT:USDT", rates.iloc[:5])
    got = store.read_funding("binanceusdm", "BTC/USDT:USDT")
    assert list(got.columns) == ["ts", "rate"] and got["ts"].dtype == np.int64
    np.testing.assert_array_equal(got["ts"].to_numpy(), rates["ts"].to_numpy())
    np.testing.assert_array_equal(got["rate"].to_numpy(), rates["rate"].to_numpy())
    mid = int(rates["ts"].iloc[3])
    assert store.read_funding("binanceusdm", "BTC/USDT:USDT", mid, None)["ts"].iloc[0] == mid
    assert store.read_funding("binance", "BTC/USDT").empty


def _funding_csv():
    from importlib import resources

    return resources.files("btc_quant.testing") / "exchange" / "data" / "binance_btcusdt_funding.csv"


def test_migration_brings_an_old_database_up_to_date(make_store, spot_1m):
    old = make_store()
    # Roll the database back to version 1: the fetch_pages table (version 2) and the mark-price
    # tables (version 3) do not exist yet.
    for table in ("fetch_pages", "mark_klines", "mark_fetch_pages"):
        old._command(f"DROP TABLE {old.db}.{table}")
    old._command(f"TRUNCATE TABLE {old.db}.schema_version")
    old._command(f"INSERT INTO {old.db}.schema_version (version) VALUES (1)")
    old.write_bars(EX, SYM, "1m", spot_1m[:10])
    assert old.schema_version() == 1
    old.close()
    new = make_store()
    assert new.schema_version() == SCHEMA_VERSION == 3
    new.record_page(EX, SYM, "1m", 0, 60_000, 1, 0)
    assert len(new.read_bars(EX, SYM, "1m")) == 10
    with new.prices("mark"):
        new.write_bars(EX, SYM, "1m", spot_1m[:3])
        assert len(new.read_bars(EX, SYM, "1m")) == 3
    assert len(new.read_bars(EX, SYM, "1m")) == 10


def test_bad_bars_are_refused_before_anything_is_written(store, spot_1m):
    frame = spot_1m[:50].to_frame()
    frame.loc[7, "high"] = frame.loc[7, "low"] - 1
    with pytest.raises(Exception, match="row 7"):
        store.write_bars(EX, SYM, "1m", frame)
    assert len(store.read_bars(EX, SYM, "1m")) == 0


def test_wrong_password_is_one_line_without_the_password(http_server):
    with pytest.raises(StoreError) as info:
        ServerStore(ServerConfig(url=http_server.url, user="tester", password="not-the-" + PASSWORD))
    text = str(info.value) + (info.value.hint or "")
    assert "refused user 'tester'" in str(info.value) and "\n" not in str(info.value)
    assert PASSWORD not in text and "not-the-" not in text


def test_unreachable_server_is_one_line():
    with pytest.raises(StoreError, match="cannot reach the server") as info:
        ServerStore(ServerConfig(url="http://127.0.0.1:9", connect_timeout_s=2))
    assert "\n" not in str(info.value)


def test_password_is_masked_in_config_repr():
    config = ServerConfig(url="http://127.0.0.1:8123", password=PASSWORD)
    assert PASSWORD not in repr(config) and PASSWORD not in str(config.model_dump())


def test_chdb_store_in_use_by_another_process_is_one_line(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from btc_quant.plugins.storage.clickhouse import ChdbStore, ChdbConfig;"
            f"s=ChdbStore(ChdbConfig(path={str(tmp_path)!r})); s.series(); print('open', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "from btc_quant.plugins.storage.clickhouse import ChdbStore, ChdbConfig\n"
                f"try:\n    ChdbStore(ChdbConfig(path={str(tmp_path)!r}, lock_wait_s=0.5)).series()\nexcept Exception as e:\n    print(e)",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "is in use by another process" in probe.stdout
    finally:
        holder.kill()
        holder.wait()


def test_quant_run_reads_bars_from_the_store(quant, isolated_env):
    """``quant run`` takes its bars from the default chdb store under QUANT_HOME when it has them."""
    perp = read_bars_file(REPO / "examples" / "data" / "btc_perp_1m_2022-01.parquet")
    with ChdbStore() as store:  # the default: <QUANT_HOME>/chdb
        assert store.path == isolated_env / "chdb"
        store.write_bars("binanceusdm", "BTC/USDT:USDT", "1m", perp[:3000])  # 2021-12-31 23:01 .. 2022-01-02 01:00
    done = quant("run", "data.start=2022-01-01", "data.end=2022-01-02", check=True)
    assert "bundled sample" not in done.stdout + done.stderr
    assert re.search(r"^bars\s+1440\s*$", done.stdout, re.M)
    fallback = quant("run", "data.start=2022-01-05", "data.end=2022-01-06")  # not stored: the sample, with a note
    assert fallback.returncode == 0 and "bundled sample" in fallback.stdout + fallback.stderr


def test_mark_price_klines_are_kept_beside_the_trade_klines(store, spot_1m):
    """Mark klines of the same market, timeframe and times never replace the trade klines."""
    trade = spot_1m[:120]
    mark = BarArrays(trade.ts, trade.open + 1, trade.high + 1, trade.low + 1, trade.close + 1, np.zeros(120))
    store.write_bars(EX, SYM, "1m", trade)
    with store.prices("mark"):
        store.write_bars(EX, SYM, "1m", mark)
        assert store.read_bars(EX, SYM, "1m").close.tolist() == (trade.close + 1).tolist()
        assert store.first_last(EX, SYM, "1m") == (int(trade.ts[0]), int(trade.ts[-1]))
        hourly = store.read_bars(EX, SYM, "1h")  # resampled from the mark minutes
    assert store.read_bars(EX, SYM, "1m").close.tolist() == trade.close.tolist()
    assert hourly.ts[0] == trade.ts[0] and hourly.low.tolist()[:1] == [float(mark.low[:60].min())]
    found = store.read_mark_bars(EX, SYM)
    assert [tf for tf, _ in found] == ["1m"] and len(found[0][1]) == 120
    listed = {(s.timeframe, s.price): s.rows for s in store.series()}
    assert listed[("1m", "trade")] == 120 and listed[("1m", "mark")] == 120

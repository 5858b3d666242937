"""Market data from the local Bybit and Coinbase dialects into the store, through real ccxt.

The Coinbase day is a real one (``coinbase_btcusd_1m_days_2016-2018.parquet``, 2018-04-04: 1,007
minutes with trades out of 1,440): served by the local Coinbase dialect, paged by ccxt 300 candles at a time, it must
arrive in the store identical to the file, minute for minute and value for value, with the
minutes Coinbase has no candle for (no trades) recorded as the exchange's holes.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.plugins.exchanges.ccxt_source import CcxtSource, CcxtSourceConfig
from btc_quant.plugins.storage.clickhouse import ChdbConfig, ChdbStore
from btc_quant.testing.exchange import ExchangeServer, FaultPlan
from btc_quant.testing.exchange.dialects.bybit import bybit_state
from btc_quant.testing.exchange.dialects.coinbase import coinbase_state
from btc_quant.testing.exchange.market import DEFAULT_FUNDING_FILE, read_funding_file

COINBASE_FILE = SHARED_DATA / "coinbase_btcusd_1m_days_2016-2018.parquet"
DAY = pd.Timestamp("2018-04-04", tz="UTC").value // 1_000_000
DAY_MS = 86_400_000
needs_coinbase = pytest.mark.skipif(not COINBASE_FILE.exists(), reason=f"needs {COINBASE_FILE} (the shared real data)")


@pytest.fixture
def store(tmp_path):
    with ChdbStore(ChdbConfig(path=tmp_path / "chdb")) as store:
        yield store


def source(server, exchange_id: str, **settings) -> CcxtSource:
    return CcxtSource(CcxtSourceConfig(url=server.url, timeout_ms=2000, backoff_s=0.01, **settings), exchange_id=exchange_id)


def file_day() -> pd.DataFrame:
    frame = pd.read_parquet(COINBASE_FILE)
    return frame[(frame.ts >= DAY) & (frame.ts < DAY + DAY_MS)].reset_index(drop=True)


def assert_identical(got, want: pd.DataFrame) -> None:
    np.testing.assert_array_equal(got.ts, want.ts.to_numpy())
    for column in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(got, column), want[column].to_numpy(), err_msg=column)


@needs_coinbase
def test_a_real_coinbase_day_arrives_identical_to_the_file(store):
    want = file_day()
    assert len(want) == 1_007  # a real day with 433 minutes without trades
    faults = FaultPlan(seed=5, retry_after_s=0.02, paths=("candles",))
    faults.script("candles", "rate_limit", "server_error", "short_page", "rate_limit")
    with ExchangeServer(coinbase_state(COINBASE_FILE, faults=faults)) as server:
        report = source(server, "coinbase").fetch_bars(store, "BTC/USD", "1m", DAY, DAY + DAY_MS)
        pages = [q for _, path, q, status in server.state.requests if path.endswith("/candles") and status == 200]
    # Coinbase-shaped 429 and 5xx answers retried, a short page asked again from where it stopped
    assert [f.kind for f in faults.injected] == ["rate_limit", "server_error", "short_page", "rate_limit"]
    assert report.written == len(want)
    assert_identical(store.read_bars("coinbase", "BTC/USD", "1m"), want)
    # Coinbase's paging: start/end in seconds, at most 300 minutes a page (ccxt's request size)
    assert all((int(q["end"]) - int(q["start"])) <= 300 * 60 for q in pages) and len(pages) >= 5
    # every minute of the day is either stored or recorded as one Coinbase has no candle for
    missing = sum((b - a) // 60_000 for a, b in report.empty)
    assert missing + len(want) == 1_440


@needs_coinbase
def test_quant_data_fetch_exchange_coinbase(quant, isolated_env):
    want = file_day()
    with ExchangeServer(coinbase_state(COINBASE_FILE)) as server:
        done = quant(
            "data",
            "fetch",
            "exchange=coinbase",
            f"exchange.url={server.url}",
            "symbol=BTC/USD",
            "timeframe=1m",
            "start=2018-04-04",
            "end=2018-04-05",
            check=True,
        )
    assert f"{len(want):,} bars written" in done.stdout
    with ChdbStore() as store:
        assert store.path == isolated_env / "chdb"
        assert_identical(store.read_bars("coinbase", "BTC/USD", "1m"), want)


@needs_coinbase
def test_quant_collect_against_coinbase_polls_rest_and_stops_clean(tmp_path):
    """Coinbase has no ccxt.pro kline stream: collect catches up over REST, then polls."""
    want = file_day()
    end = DAY + 6 * 3_600_000
    with (
        ExchangeServer(coinbase_state(COINBASE_FILE, clock_start_ms=end, speed=0.0)) as server,
        ChdbStore(ChdbConfig(path=tmp_path / "chdb")) as store,
    ):
        stop = threading.Event()
        said: list[str] = []

        def on_event(text: str) -> None:
            said.append(text)
            if text.startswith("polling"):
                stop.set()  # caught up and switched to polling: enough

        stats = source(server, "coinbase", poll_s=0.2).collect(store, "BTC/USD", "1m", DAY, stop, on_event)
        got = store.read_bars("coinbase", "BTC/USD", "1m")
    assert said[-1] == "polling coinbase every 0.2s over REST"  # ccxt.pro's coinbase has no kline stream
    assert stats.websocket == 0 and stats.rest == int((want.ts < end).sum())
    assert_identical(got, want[want.ts < end].reset_index(drop=True))


def test_bybit_bars_and_funding_through_faults(store):
    bars = read_bars_file(SAMPLE.path)
    start = 1641600000000  # 2022-01-08 00:00 UTC
    end = start + 3 * DAY_MS
    faults = FaultPlan(
        seed=3, rates={"rate_limit": 0.2, "server_error": 0.1, "short_page": 0.2}, retry_after_s=0.02, paths=("kline", "history")
    )
    with ExchangeServer(bybit_state(faults=faults)) as server:
        src = source(server, "bybit")
        report = src.fetch_bars(store, "BTC/USDT:USDT", "1m", start, end)
        funding = src.fetch_funding(store, "BTC/USDT:USDT", start, end)
        limits = {int(q["limit"]) for _, path, q, _ in server.state.requests if path.endswith("/kline")}
    assert {"rate_limit", "server_error", "short_page"} <= {f.kind for f in faults.injected}
    sel = (bars.ts >= start) & (bars.ts < end)
    got = store.read_bars("bybit", "BTC/USDT:USDT", "1m")
    np.testing.assert_array_equal(got.ts, bars.ts[sel])
    np.testing.assert_array_equal(got.close, bars.close[sel])
    np.testing.assert_array_equal(got.volume, bars.volume[sel])
    assert report.written == int(sel.sum()) and max(limits) == 1000  # Bybit's page size
    ts, rate = read_funding_file(DEFAULT_FUNDING_FILE)
    want = (ts >= start) & (ts < end)
    assert funding.funding == int(want.sum()) == 9
    stored = store.read_funding("bybit", "BTC/USDT:USDT")
    np.testing.assert_array_equal(stored.ts.to_numpy(), ts[want])
    np.testing.assert_allclose(stored.rate.to_numpy(), rate[want], rtol=0, atol=1e-12)


def test_quant_data_fetch_exchange_bybit(quant, isolated_env):
    start = 1641600000000
    with ExchangeServer(bybit_state()) as server:
        done = quant(
            "data",
            "fetch",
            "exchange=bybit",
            f"exchange.url={server.url}",
            "symbol=BTC/USDT:USDT",
            "timeframe=1h",
            "start=2022-01-08",
            "end=2022-01-10",
            check=True,
        )
    assert "48 bars written" in done.stdout
    with ChdbStore() as store:
        got = store.read_bars("bybit", "BTC/USDT:USDT", "1h")
    assert list(got.ts) == [start + k * 3_600_000 for k in range(48)]


def test_quant_collect_against_bybit_follows_its_kline_stream(tmp_path):
    """REST catch-up, then Bybit's public ``kline.1.BTCUSDT`` topic; the store gets the real bars."""
    bars = read_bars_file(SAMPLE.path)
    start = 1641772800000  # 2022-01-10 00:00 UTC
    with (
        ExchangeServer(bybit_state(clock_start_ms=start + 3_600_000, speed=240)) as server,
        ChdbStore(ChdbConfig(path=tmp_path / "chdb")) as store,
    ):
        stop = threading.Event()
        src = source(server, "bybit")

        def on_event(text: str) -> None:
            if text.startswith("watching"):
                threading.Timer(4.0, stop.set).start()  # 16 exchange minutes on the stream

        stats = src.collect(store, "BTC/USDT:USDT", "1m", start, stop, on_event)
        got = store.read_bars("bybit", "BTC/USDT:USDT", "1m")
    assert stats.rest >= 60 and stats.websocket >= 5
    idx = np.searchsorted(bars.ts, got.ts)
    np.testing.assert_array_equal(bars.ts[idx], got.ts)
    np.testing.assert_array_equal(got.ts, np.arange(start, int(got.ts[-1]) + 1, 60_000))  # no holes
    np.testing.assert_array_equal(got.close, bars.close[idx])
    np.testing.assert_array_equal(got.volume, bars.volume[idx])

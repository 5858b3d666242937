"""The ccxt data source: the real ccxt client against the local Binance, with injected faults."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.core.errors import DataError, ExchangeError
from btc_quant.plugins.exchanges.ccxt_source import CcxtSource, CcxtSourceConfig, quant_register_data_sources
from btc_quant.plugins.storage.clickhouse import ChdbConfig, ChdbStore
from btc_quant.testing.exchange import ExchangeServer, FaultPlan, binance_state
from btc_quant.testing.exchange.market import DEFAULT_FUNDING_FILE, DEFAULT_SPOT_FILE

SPOT_HOLE = (1618884000000, 1618893000000)  # 2021-04-20 02:00 .. 04:30 UTC: Binance has no candles
SPOT = read_bars_file(DEFAULT_SPOT_FILE)
SPOT_END = int(SPOT.ts[-1]) + 60_000


@pytest.fixture
def store(tmp_path):
    with ChdbStore(ChdbConfig(path=tmp_path / "chdb")) as store:
        yield store


def source(server, exchange_id="binance", **settings) -> CcxtSource:
    config = CcxtSourceConfig(url=server.url, timeout_ms=1000, backoff_s=0.01, **settings)
    src = CcxtSource(config, exchange_id=exchange_id)
    return src


def klines_starts(server) -> list[int]:
    return [
        int(q["startTime"])
        for _, path, q, status in server.state.requests
        if path.endswith("klines") and "startTime" in q and status == 200
    ]


def test_fetch_through_429_5xx_timeouts_short_and_empty_pages_is_exact(store):
    faults = FaultPlan(
        seed=11,
        rates={"rate_limit": 0.1, "server_error": 0.1, "timeout": 0.05, "short_page": 0.15, "empty_page": 0.1},
        retry_after_s=0.05,
        timeout_s=2.0,
    )
    with ExchangeServer(binance_state(faults=faults, clock_start_ms=SPOT_END)) as server:
        report = source(server, page_limit=300).fetch_bars(store, "BTC/USDT", "1m", int(SPOT.ts[0]))
    kinds = {f.kind for f in faults.injected}
    assert {"rate_limit", "server_error", "timeout", "short_page", "empty_page"} <= kinds
    assert report.retries >= sum(f.kind in ("rate_limit", "server_error", "timeout") for f in faults.injected)
    got = store.read_bars("binance", "BTC/USDT", "1m")
    np.testing.assert_array_equal(got.ts, SPOT.ts)
    np.testing.assert_array_equal(got.close, SPOT.close)
    assert store.count_rows("binance", "BTC/USDT", "1m") == (len(SPOT), len(SPOT))  # short pages re-asked, not re-written
    # The real maintenance hole is recorded as the exchange's, and shown by gaps.
    assert [(g.start_ms, g.end_ms, g.reason) for g in store.gaps("binance", "BTC/USDT", "1m")] == [(*SPOT_HOLE, "exchange has none")]


def test_second_fetch_resumes_after_the_last_stored_bar(store):
    with ExchangeServer(binance_state(clock_start_ms=SPOT_END)) as server:
        half = int(SPOT.ts[2000])
        first = source(server).fetch_bars(store, "BTC/USDT", "1m", int(SPOT.ts[0]), half)
        assert first.written == 2000
        server.state.requests.clear()
        second = source(server).fetch_bars(store, "BTC/USDT", "1m", int(SPOT.ts[0]))
        assert klines_starts(server)[0] == half  # not from the start again
        assert second.written == len(SPOT) - 2000
        server.state.requests.clear()
        third = source(server).fetch_bars(store, "BTC/USDT", "1m", int(SPOT.ts[0]))
        assert third.written == 0 and klines_starts(server) == []  # the hole is known: not asked again
    np.testing.assert_array_equal(store.read_bars("binance", "BTC/USDT", "1m").ts, SPOT.ts)


def test_a_forming_bar_is_never_stored(store):
    now = int(SPOT.ts[100]) + 30_000  # half-way through bar 100
    with ExchangeServer(binance_state(clock_start_ms=now)) as server:
        source(server).fetch_bars(store, "BTC/USDT", "1m", int(SPOT.ts[0]))
    assert store.first_last("binance", "BTC/USDT", "1m") == (int(SPOT.ts[0]), int(SPOT.ts[99]))


def test_perpetual_bars_and_funding_history(store):
    bars = read_bars_file(SAMPLE.path)
    start = 1641600000000  # 2022-01-08 00:00 UTC
    with ExchangeServer(binance_state(faults=FaultPlan(seed=2, rates={"rate_limit": 0.2}, retry_after_s=0.05))) as server:
        src = source(server, "binanceusdm")
        report = src.fetch_bars(store, "BTC/USDT:USDT", "1h", start, start + 48 * 3_600_000)
        funding = src.fetch_funding(store, "BTC/USDT:USDT", start)
        again = src.fetch_funding(store, "BTC/USDT:USDT", start)
        now = server.state.clock.now_ms()
    assert report.written == 48
    hourly = store.read_bars("binanceusdm", "BTC/USDT:USDT", "1h")
    minutes = bars.between(start, start + 3_600_000)
    assert (hourly.open[0], hourly.high[0], hourly.close[0]) == (minutes.open[0], minutes.high.max(), minutes.close[-1])
    rates = pd.read_csv(DEFAULT_FUNDING_FILE)
    want = rates[(rates.ts >= start) & (rates.ts < now)]  # funding paid up to the exchange's now
    got = store.read_funding("binanceusdm", "BTC/USDT:USDT")
    np.testing.assert_array_equal(got["ts"].to_numpy(), want["ts"].to_numpy())
    np.testing.assert_array_equal(got["rate"].to_numpy(), want["rate"].to_numpy())
    assert funding.funding == len(want) > 50 and again.funding == 0


def test_spot_has_no_funding(store):
    with ExchangeServer(binance_state()) as server:
        assert source(server).fetch_funding(store, "BTC/USDT", 0).funding == 0


def test_unknown_symbol_is_one_line(store):
    with ExchangeServer(binance_state()) as server:
        with pytest.raises(DataError, match="no market 'ETH/BTC'"):
            source(server).fetch_bars(store, "ETH/BTC", "1m", 0)


def test_persistent_failure_stops_with_one_line_and_nothing_lost(store):
    faults = FaultPlan()
    with ExchangeServer(binance_state(faults=faults, clock_start_ms=SPOT_END)) as server:
        faults.script("klines", "slow", *["server_error"] * 10)  # the first page answers (slowly), then 5xx
        with pytest.raises(ExchangeError, match="still failing after 3 retries") as info:
            source(server, retries=3, page_limit=500).fetch_bars(store, "BTC/USDT", "1m", int(SPOT.ts[0]))
        assert "\n" not in str(info.value)
        kept = store.first_last("binance", "BTC/USDT", "1m")
        assert kept == (int(SPOT.ts[0]), int(SPOT.ts[499]))  # the first page is kept; nothing was skipped
        assert store.gaps("binance", "BTC/USDT", "1m") == []


def test_every_ccxt_exchange_id_is_a_data_source():
    import ccxt

    names = []
    quant_register_data_sources(lambda name, factory: names.append(name))
    assert {"binance", "binanceusdm", "coinbase", "kraken"} <= set(names) and len(names) == len(ccxt.exchanges)

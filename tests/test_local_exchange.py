"""The local Binance on 127.0.0.1, driven by the real ccxt client."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import ccxt
import numpy as np
import pytest

from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.plugins.exchanges.ccxt_client import make_exchange, point_at
from btc_quant.testing.exchange import ExchangeServer, FaultPlan, binance_state
from btc_quant.testing.exchange.market import DEFAULT_SPOT_FILE
from btc_quant.testing.process import ServerProcess

SPOT_HOLE = (1618884000000, 1618893000000)  # 2021-04-20 02:00 .. 04:30 UTC: Binance has no candles


@pytest.fixture
def exchange():
    with ExchangeServer(binance_state()) as server:
        yield server


def test_load_markets_calls_only_exchange_info_of_its_family(exchange):
    for exchange_id, path, symbol in (
        ("binance", "/api/v3/exchangeInfo", "BTC/USDT"),
        ("binanceusdm", "/fapi/v1/exchangeInfo", "BTC/USDT:USDT"),
    ):
        client = make_exchange(exchange_id, url=exchange.url, credentials={"apiKey": "key-for-test", "secret": "secret-for-test"})
        before = len(exchange.state.requests)
        markets = client.load_markets()
        assert [r[1] for r in exchange.state.requests[before:]] == [path]
        assert symbol in markets
    perp = markets["BTC/USDT:USDT"]
    assert perp["swap"] and perp["linear"] and perp["settle"] == "USDT"
    assert perp["precision"]["price"] == 0.1 and perp["limits"]["cost"]["min"] == 100.0


def test_url_rewrite_keeps_rest_paths_and_prefixes_websocket_hosts():
    import ccxt.pro

    client = point_at(ccxt.pro.binanceusdm(), "http://127.0.0.1:9")
    assert client.urls["api"]["fapiPublic"] == "http://127.0.0.1:9/fapi/v1"
    assert client.urls["api"]["public"] == "http://127.0.0.1:9/api/v3"
    assert client.urls["api"]["ws"]["spot"] == "ws://127.0.0.1:9/stream/ws"
    assert client.urls["api"]["ws"]["linear"] == "ws://127.0.0.1:9/fstream/ws"


def test_klines_page_through_the_real_bars_with_the_real_hole(exchange):
    client = make_exchange("binance", url=exchange.url)
    expected = read_bars_file(DEFAULT_SPOT_FILE)
    got, since = [], int(expected.ts[0])
    while True:
        page = client.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=1000)
        if not page:
            break
        got += page
        since = page[-1][0] + 60_000
    ts = np.array([row[0] for row in got])
    assert np.array_equal(ts, expected.ts)
    assert np.allclose([row[4] for row in got], expected.close)
    assert not ((ts >= SPOT_HOLE[0]) & (ts < SPOT_HOLE[1])).any()


def test_higher_intervals_are_aggregated_from_minutes(exchange):
    client = make_exchange("binanceusdm", url=exchange.url)
    bars = read_bars_file(SAMPLE.path)
    start = 1641600000000  # 2022-01-08 00:00 UTC
    hour = client.fetch_ohlcv("BTC/USDT:USDT", "1h", since=start, limit=2)
    minutes = bars.between(start, start + 3_600_000)
    assert hour[0] == [
        start,
        minutes.open[0],
        minutes.high.max(),
        minutes.low.min(),
        minutes.close[-1],
        pytest.approx(minutes.volume.sum()),
    ]
    week = client.fetch_ohlcv("BTC/USDT:USDT", "1w", since=1641772800000, limit=1)  # Monday 2022-01-10
    assert week[0][0] == 1641772800000


def test_funding_history_is_served_by_time(exchange):
    client = make_exchange("binanceusdm", url=exchange.url)
    rates = client.fetch_funding_rate_history("BTC/USDT:USDT", since=1641945600000, limit=3)  # 2022-01-12 00:00
    assert [(r["timestamp"], r["fundingRate"]) for r in rates] == [
        (1641945600012, -0.00004772),
        (1641974400015, 0.00009625),
        (1642003200000, -0.00005342),
    ]


def test_forming_candle_follows_the_bar_and_closes_to_its_real_values():
    bars = read_bars_file(SAMPLE.path)
    i = 1000
    state = binance_state(clock_start_ms=int(bars.ts[i]) + 30_000)  # half-way through bar i, frozen
    market = state.market("usdm", "BTCUSDT")
    row = market.klines("1m", state.clock.now_ms(), int(bars.ts[i]), None, 5)
    assert len(row) == 1 and row[0][0] == bars.ts[i]
    assert float(row[0][5]) == pytest.approx(bars.volume[i] / 2)
    assert bars.low[i] <= float(row[0][4]) <= bars.high[i]
    state.clock.set(int(bars.ts[i]) + 60_000)
    closed = market.klines("1m", state.clock.now_ms(), int(bars.ts[i]), None, 1)[0]
    assert [float(v) for v in closed[1:6]] == [bars.open[i], bars.high[i], bars.low[i], bars.close[i], bars.volume[i]]


def test_faults_follow_the_seed_and_reach_ccxt_as_its_errors():
    def run(seed):
        plan = FaultPlan(seed=seed, rates={"rate_limit": 0.2, "server_error": 0.2, "short_page": 0.2}, retry_after_s=3)
        state = binance_state(faults=plan)
        errors = []
        with ExchangeServer(state) as server:
            client = make_exchange("binanceusdm", url=server.url)
            client.load_markets()
            for k in range(20):
                try:
                    client.fetch_ohlcv("BTC/USDT:USDT", "1m", since=1641000000000 + k * 60_000, limit=10)
                    errors.append(None)
                except ccxt.OperationFailed as exc:  # ccxt's transient errors (NetworkError is one)
                    errors.append((type(exc).__name__, client.last_response_headers.get("Retry-After")))
        return [(i.n, i.kind) for i in plan.injected], errors

    first, errors = run(7)
    assert first == run(7)[0] and first != run(8)[0]
    assert ("RateLimitExceeded", "3") in errors or ("DDoSProtection", "3") in errors
    assert any(e and e[0] == "OperationFailed" for e in errors)  # Binance -1001 "Internal error"


def test_scripted_short_and_empty_pages_and_timeout(exchange):
    exchange.state.faults = FaultPlan(timeout_s=2.0).script("klines", "short_page", "empty_page", "timeout")
    client = make_exchange("binanceusdm", url=exchange.url, timeout_ms=500)
    assert len(client.fetch_ohlcv("BTC/USDT:USDT", "1m", since=1641000000000, limit=10)) == 5
    assert client.fetch_ohlcv("BTC/USDT:USDT", "1m", since=1641000000000, limit=10) == []
    with pytest.raises(ccxt.RequestTimeout):
        client.fetch_ohlcv("BTC/USDT:USDT", "1m", since=1641000000000, limit=10)
    assert len(client.fetch_ohlcv("BTC/USDT:USDT", "1m", since=1641000000000, limit=10)) == 10


def test_websocket_klines_through_ccxt_pro_close_every_minute():
    bars = read_bars_file(SAMPLE.path)
    start = int(bars.ts[2000])
    state = binance_state(clock_start_ms=start, speed=120)

    async def watch(url):
        client = make_exchange("binanceusdm", url=url, pro=True)
        seen: dict[int, list] = {}
        try:
            while len(seen) < 4:
                for candle in await client.watch_ohlcv("BTC/USDT:USDT", "1m"):
                    seen[candle[0]] = candle
        finally:
            await client.close()
        return seen

    with ExchangeServer(state) as server:
        seen = asyncio.run(asyncio.wait_for(watch(server.url), 30))
    first_closed = sorted(seen)[1]  # the earliest candle may have been joined mid-way; the next is whole
    k = int(np.searchsorted(bars.ts, first_closed))
    assert seen[first_closed][1:5] == [bars.open[k], bars.high[k], bars.low[k], bars.close[k]]


def test_runs_as_a_process_that_can_be_killed_and_restarted():
    server = ServerProcess("btc_quant.testing.exchange", "--port", "0", "--seed", "3", "--fault", "server_error=0.5")
    with server:
        state = json.load(urllib.request.urlopen(server.url + "/_control/state"))
        assert state["now_ms"] == server.info["now_ms"]
        server.restart()
        client = make_exchange("binanceusdm", url=server.url)
        assert "BTC/USDT:USDT" in client.load_markets()
    assert server.proc.poll() is not None

"""``quant data fetch ... kind=trades``: the real ccxt client against the local exchange serving a
real Binance perpetual tape through ``aggTrades``, with injected faults."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_store import shared_file

from btc_quant.core.trades import TradeArrays
from btc_quant.plugins.exchanges.ccxt_source import CcxtSource, CcxtSourceConfig
from btc_quant.plugins.storage.clickhouse import ChdbConfig, ChdbStore
from btc_quant.testing.exchange import ExchangeServer, FaultPlan, binance_state
from btc_quant.testing.exchange.tapes import aggregate

SYM = "BTC/USDT:USDT"


@pytest.fixture(scope="module")
def tape() -> TradeArrays:
    return TradeArrays.from_frame(pd.read_parquet(shared_file("trades/binance_btcusdt_perp_2024-08-08_2354_trades.parquet")))


@pytest.fixture
def store(tmp_path):
    with ChdbStore(ChdbConfig(path=tmp_path / "chdb")) as store:
        yield store


def exchange(tape, faults=None) -> ExchangeServer:
    state = binance_state(spot_file=None, faults=faults, clock_start_ms=int(tape.ts[-1]) + 60_000)
    state.tapes[("usdm", "BTCUSDT")] = tape
    return ExchangeServer(state)


def source(server, **settings) -> CcxtSource:
    return CcxtSource(CcxtSourceConfig(url=server.url, timeout_ms=1000, backoff_s=0.01, **settings), exchange_id="binanceusdm")


def assert_same(got: TradeArrays, want: TradeArrays) -> None:
    assert len(got) == len(want)
    for column in ("ts", "trade_id", "last_id", "price", "side"):
        np.testing.assert_array_equal(getattr(got, column), getattr(want, column))
    np.testing.assert_allclose(got.qty, want.qty, rtol=1e-12)


def test_fetch_pages_by_id_resumes_and_never_duplicates(store, tape):
    agg = aggregate(tape)
    assert 0 < len(agg) < len(tape)  # some prints share time, price and taker: Binance aggregates them
    half = int(agg.ts[len(agg) // 2])
    with exchange(tape) as server:
        first = source(server, page_limit=1000).fetch_trades(store, SYM, int(tape.ts[0]), half)
        assert first.written == int((agg.ts < half).sum())
        server.state.requests.clear()
        second = source(server, page_limit=1000).fetch_trades(store, SYM, int(tape.ts[0]))
        asked = [q for _, path, q, status in server.state.requests if path.endswith("aggTrades")]
    assert int(asked[0]["startTime"]) == int(agg.ts[agg.ts < half][-1])  # resumed at the last stored print
    assert all("fromId" in q for q in asked[1:])
    assert second.written >= len(agg) - first.written
    got = store.read_trades("binanceusdm", SYM)
    assert_same(got, agg)
    # the klines built from the fetched aggregate trades are those of the raw tape
    minute = (tape.ts // 60_000) * 60_000
    bars = store.trade_bars("binanceusdm", SYM)
    np.testing.assert_array_equal(bars.ts, np.unique(minute))
    np.testing.assert_array_equal(bars.low, pd.Series(tape.price).groupby(minute).min().to_numpy())
    np.testing.assert_allclose(bars.volume, pd.Series(tape.qty).groupby(minute).sum().to_numpy(), rtol=1e-9)


def test_fetch_through_faults_is_exact(store, tape):
    faults = FaultPlan(
        seed=5,
        rates={"rate_limit": 0.1, "server_error": 0.1, "short_page": 0.2, "empty_page": 0.05},
        retry_after_s=0.02,
        paths=("aggTrades",),
    )
    with exchange(tape, faults) as server:
        runs = [source(server, page_limit=500).fetch_trades(store, SYM, int(tape.ts[0]))]
        # an empty page by id only means "nothing newer": the next run resumes from the last print
        while store.trade_span("binanceusdm", SYM)[1] < int(tape.ts[-1]) and len(runs) < 20:
            runs.append(source(server, page_limit=500).fetch_trades(store, SYM, int(tape.ts[0])))
    assert {"rate_limit", "server_error", "short_page"} <= {f.kind for f in faults.injected}
    assert_same(store.read_trades("binanceusdm", SYM), aggregate(tape))


def test_cli_fetches_trades(quant, tmp_path, tape):
    with exchange(tape) as server:
        start = pd.Timestamp(int(tape.ts[0]), unit="ms", tz="UTC").isoformat()
        done = quant(
            "data",
            "fetch",
            "exchange=binanceusdm",
            f"exchange.url={server.url}",
            f"symbol={SYM}",
            "kind=trades",
            f"start={start}",
            f"store.path={tmp_path / 'chdb'}",
            check=True,
        )
    assert f"binanceusdm {SYM} trades: {len(aggregate(tape)):,} written" in done.stdout
    missing = quant(
        "data",
        "fetch",
        "exchange=binanceusdm",
        "exchange.url=http://127.0.0.1:9",
        f"symbol={SYM}",
        "kind=trades",
        f"store.path={tmp_path / 'chdb2'}",
    )
    assert missing.returncode == 2 and "no binanceusdm BTC/USDT:USDT trades stored yet" in missing.stderr


def test_spot_trades_come_from_the_spot_endpoint(store):
    spot = TradeArrays.from_frame(pd.read_parquet(shared_file("trades/binance_btcusdt_spot_2023-04-05_0000_trades.parquet")))
    state = binance_state(clock_start_ms=int(spot.ts[-1]) + 60_000)
    state.tapes[("spot", "BTCUSDT")] = spot
    with ExchangeServer(state) as server:
        src = CcxtSource(CcxtSourceConfig(url=server.url, timeout_ms=1000, backoff_s=0.01), exchange_id="binance")
        report = src.fetch_trades(store, "BTC/USDT", int(spot.ts[0]))
        paths = {path for _, path, _, _ in server.state.requests if path.endswith("aggTrades")}
    assert paths == {"/api/v3/aggTrades"}
    assert_same(store.read_trades("binance", "BTC/USDT"), aggregate(spot))
    assert report.written == len(aggregate(spot))

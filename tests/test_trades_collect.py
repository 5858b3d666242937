"""``quant collect ... kind=trades``: live aggregate trades over the websocket, REST catch-up after a
drop or a SIGKILL; the store ends with the exchange's tape, no hole and no duplicate."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pandas as pd
from test_collect import quant_collect, wait_for
from test_store import shared_file

from btc_quant.core.trades import TradeArrays
from btc_quant.plugins.storage.clickhouse import ChdbConfig, ChdbStore
from btc_quant.testing.exchange.tapes import aggregate
from btc_quant.testing.process import ServerProcess

NAME = "trades/binance_btcusdt_perp_2024-08-08_2354_trades.parquet"
SYM = "BTC/USDT:USDT"


def real_tape() -> TradeArrays:
    return TradeArrays.from_frame(pd.read_parquet(shared_file(NAME)))


def assert_prefix_of(got: TradeArrays, agg: TradeArrays) -> None:
    """The stored rows are exactly the tape's first ones: no hole, no duplicate, nothing invented."""
    assert len(got) > 0
    want = agg[: len(got)]
    np.testing.assert_array_equal(got.trade_id, want.trade_id)
    np.testing.assert_array_equal(got.ts, want.ts)
    np.testing.assert_array_equal(got.price, want.price)
    np.testing.assert_allclose(got.qty, want.qty, rtol=1e-12)


def test_dropped_websockets_are_caught_up_over_rest(tmp_path):
    from btc_quant.plugins.exchanges.ccxt_source import CcxtSource, CcxtSourceConfig
    from btc_quant.testing.exchange import ExchangeServer, FaultPlan, binance_state

    tape = real_tape()
    faults = FaultPlan(seed=3)
    faults.script("", "drop")  # the first push on any stream drops the connection (no close frame)
    state = binance_state(spot_file=None, faults=faults, clock_start_ms=int(tape.ts[0]) + 60_000, speed=30)
    state.tapes[("usdm", "BTCUSDT")] = tape
    with ExchangeServer(state) as server, ChdbStore(ChdbConfig(path=tmp_path / "chdb")) as store:
        source = CcxtSource(CcxtSourceConfig(url=server.url, timeout_ms=2000, backoff_s=0.05), exchange_id="binanceusdm")
        stop = threading.Event()

        events = []

        def until_whole_tape() -> None:  # stop once the tape's last print is stored (bounded wait)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not stop.is_set():
                if len(store.read_trades("binanceusdm", SYM)) >= len(whole):
                    break
                stop.wait(0.5)
            stop.set()

        whole = aggregate(tape)  # the tape as the aggTrade stream and endpoint serve it
        watcher = threading.Thread(target=until_whole_tape, daemon=True)

        def on_event(text: str) -> None:  # once live again after the drop, wait for the whole tape
            events.append(text)
            if text.startswith("live:") and any("reconnect" in e for e in events) and watcher.ident is None:
                watcher.start()

        threading.Timer(150, stop.set).start()  # a bound, not the expected path
        stats = source.collect_trades(store, SYM, int(tape.ts[0]), stop, on_event)
        got = store.read_trades("binanceusdm", SYM)
        physical = store._query(f"SELECT count() FROM {store.db}.trades")[0][0]
        now = state.clock.now_ms()
    agg = aggregate(tape)
    assert any(f.kind == "drop" for f in faults.injected) and stats.reconnects >= 1
    assert stats.websocket > 0 and stats.rest > 0
    assert_prefix_of(got, agg)
    assert len(got) == len(agg) and now > int(agg.ts[-1])  # the whole tape, nothing twice
    assert physical >= len(got)  # REST and websocket may both write a print; reads see it once


def collect(url: str, store: str, start: str) -> subprocess.Popen:
    return quant_collect(
        "exchange=binanceusdm", f"exchange.url={url}", f"symbol={SYM}", "kind=trades", f"start={start}", f"store.path={store}"
    )


def test_collect_survives_sigkill_and_ends_with_the_whole_tape(tmp_path):
    tape = real_tape()
    path = shared_file(NAME)
    start = pd.Timestamp(int(tape.ts[0]), unit="ms", tz="UTC").isoformat()
    exchange = ServerProcess(
        "btc_quant.testing.exchange",
        "--spot",
        "none",
        "--usdm-trades",
        str(path),
        "--clock-start",
        str(int(tape.ts[0]) + 30_000),
        "--speed",
        "20",
    ).start()
    store = tmp_path / "chdb"
    try:
        first = collect(exchange.url, store, start)
        wait_for(first, "over websocket")
        time.sleep(3)
        first.kill()  # SIGKILL
        first.wait(30)
        time.sleep(3)  # downtime: prints go on at the exchange
        second = collect(exchange.url, store, start)
        wait_for(second, "over websocket")
        # run until the exchange clock is past the tape's end
        while int(json.load(urllib.request.urlopen(exchange.url + "/_control/state"))["now_ms"]) < int(tape.ts[-1]) + 2_000:
            time.sleep(1)
        time.sleep(2)
        second.send_signal(signal.SIGTERM)
        second.wait(120)
        out = second.stdout.read()
    finally:
        exchange.stop()
    assert second.returncode == 0, "".join(second.lines)
    assert "over websocket" in out
    with ChdbStore(ChdbConfig(path=store)) as opened:
        got = opened.read_trades("binanceusdm", SYM)
    agg = aggregate(tape)
    assert len(got) == len(agg)
    assert_prefix_of(got, agg)

"""``quant collect``: killed with SIGKILL, restarted, the store ends with no holes and no duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from btc_quant.core.data import read_bars_file
from btc_quant.plugins.storage.clickhouse import ChdbStore
from btc_quant.testing.exchange.market import DEFAULT_SPOT_FILE
from btc_quant.testing.process import ServerProcess

SPOT = read_bars_file(DEFAULT_SPOT_FILE)
START = 1618826400000  # 2021-04-19 10:00 UTC
CLOCK = START + 30 * 60_000  # the exchange's clock starts at 10:30 and runs 60x: a bar a second


def collect(url: str) -> subprocess.Popen:
    exe = os.path.join(os.path.dirname(sys.executable), "quant")
    return subprocess.Popen(
        [exe, "collect", "exchange=binance", f"exchange.url={url}", "symbol=BTC/USDT", "timeframe=1m", "start=2021-04-19 10:00"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )


def test_collect_survives_sigkill_and_catches_up_without_holes_or_duplicates(isolated_env):
    exchange = ServerProcess("btc_quant.testing.exchange", "--clock-start", str(CLOCK), "--speed", "60").start()
    try:
        first = collect(exchange.url)
        time.sleep(15)
        first.kill()  # SIGKILL: no chance to write anything more
        first.wait(30)
        time.sleep(6)  # downtime: the exchange keeps closing bars
        second = collect(exchange.url)
        time.sleep(15)
        second.send_signal(signal.SIGTERM)
        out, errs = second.communicate(timeout=60)
    finally:
        exchange.stop()
    assert second.returncode == 0, errs
    assert "SIGTERM" in errs and "over websocket" in out
    with ChdbStore() as store:
        bars = store.read_bars("binance", "BTC/USDT", "1m")
        deduplicated, physical = store.count_rows("binance", "BTC/USDT", "1m")
        gaps = store.gaps("binance", "BTC/USDT", "1m")
    assert bars.ts[0] == START and gaps == []
    assert np.all(np.diff(bars.ts) == 60_000)  # no hole: the downtime was caught up
    assert deduplicated == physical == len(bars)  # and nothing was written twice
    # Well past the downtime: at least 30 min before the clock started + ~20 s of running = 20 bars.
    assert bars.ts[-1] >= CLOCK + 20 * 60_000
    real = SPOT.between(int(bars.ts[0]), int(bars.ts[-1]) + 1)
    np.testing.assert_array_equal(bars.ts, real.ts)
    for column in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(bars, column), getattr(real, column))


def _collect_in_process(tmp_path, seconds: float, **settings):
    import threading

    from btc_quant.plugins.exchanges.ccxt_source import CcxtSource, CcxtSourceConfig
    from btc_quant.plugins.storage.clickhouse import ChdbConfig
    from btc_quant.testing.exchange import ExchangeServer, FaultPlan, binance_state

    faults = FaultPlan(seed=5, rates={"drop": 0.3}) if settings.pop("drops", False) else None
    with ExchangeServer(binance_state(clock_start_ms=CLOCK, speed=60, faults=faults)) as server, \
            ChdbStore(ChdbConfig(path=tmp_path / "chdb")) as store:
        source = CcxtSource(CcxtSourceConfig(url=server.url, timeout_ms=2000, backoff_s=0.05, **settings), exchange_id="binance")
        stop = threading.Event()
        threading.Timer(seconds, stop.set).start()
        stats = source.collect(store, "BTC/USDT", "1m", START, stop)
        bars = store.read_bars("binance", "BTC/USDT", "1m")
        counts = store.count_rows("binance", "BTC/USDT", "1m")
    return stats, bars, counts, faults


def test_rest_polling_when_websockets_are_off(tmp_path):
    stats, bars, counts, _ = _collect_in_process(tmp_path, 8, websocket=False, poll_s=1.0)
    assert stats.websocket == 0 and stats.rest == len(bars) >= 35  # 30 caught up, then a bar a second
    assert np.all(np.diff(bars.ts) == 60_000) and counts == (len(bars), len(bars))


def test_dropped_websockets_are_caught_up_over_rest(tmp_path):
    stats, bars, counts, faults = _collect_in_process(tmp_path, 12, drops=True)
    assert any(f.kind == "drop" for f in faults.injected) and stats.reconnects >= 1
    assert np.all(np.diff(bars.ts) == 60_000) and counts == (len(bars), len(bars))
    real = SPOT.between(int(bars.ts[0]), int(bars.ts[-1]) + 1)
    np.testing.assert_array_equal(bars.close, real.close)

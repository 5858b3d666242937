"""``quant collect``: killed with SIGKILL, restarted, the store ends with no holes and no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

from btc_quant.core.data import read_bars_file
from btc_quant.plugins.storage.clickhouse import ChdbStore
from btc_quant.testing.exchange.market import DEFAULT_SPOT_FILE
from btc_quant.testing.process import ServerProcess

SPOT = read_bars_file(DEFAULT_SPOT_FILE)
START = 1618826400000  # 2021-04-19 10:00 UTC
CLOCK = START + 30 * 60_000  # the exchange's clock starts at 10:30 and runs 60x: a bar a second


def quant_collect(*settings: str) -> subprocess.Popen:
    """``quant collect`` with ``settings`` in a subprocess; its log lines gather in ``proc.lines``."""
    exe = os.path.join(os.path.dirname(sys.executable), "quant")
    proc = subprocess.Popen([exe, "collect", *settings], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    proc.lines = []
    threading.Thread(target=lambda: proc.lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    return proc


def collect(url: str) -> subprocess.Popen:
    return quant_collect("exchange=binance", f"exchange.url={url}", "symbol=BTC/USDT", "timeframe=1m", "start=2021-04-19 10:00")


def wait_for(proc: subprocess.Popen, text: str, timeout_s: float = 180) -> None:
    """Until ``proc`` logged ``text`` (a loaded machine can take a while to start Python and chDB)."""
    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in proc.lines):
        assert proc.poll() is None, "".join(proc.lines)
        assert time.monotonic() < deadline, f"no {text!r} after {timeout_s}s: " + "".join(proc.lines)
        time.sleep(0.2)


def test_collect_survives_sigkill_and_catches_up_without_holes_or_duplicates(isolated_env):
    exchange = ServerProcess("btc_quant.testing.exchange", "--clock-start", str(CLOCK), "--speed", "60").start()
    try:
        first = collect(exchange.url)
        wait_for(first, "over websocket")
        time.sleep(6)  # a few bars arrive over the websocket
        first.kill()  # SIGKILL: no chance to write anything more
        first.wait(30)
        time.sleep(6)  # downtime: the exchange keeps closing bars
        second = collect(exchange.url)
        wait_for(second, "over websocket")  # caught up over REST, now live again
        time.sleep(6)
        killed_at = int(json.load(urllib.request.urlopen(exchange.url + "/_control/state"))["now_ms"])
        second.send_signal(signal.SIGTERM)
        second.wait(120)
        out = second.stdout.read()
        time.sleep(0.5)  # the stderr reader thread drains the last lines
        errs = "".join(second.lines)
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
    # Up to the bar before the one forming at SIGTERM: the downtime and the live part are all there.
    assert bars.ts[-1] >= killed_at // 60_000 * 60_000 - 2 * 60_000 and bars.ts[-1] >= CLOCK + 12 * 60_000
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
    with (
        ExchangeServer(binance_state(clock_start_ms=CLOCK, speed=60, faults=faults)) as server,
        ChdbStore(ChdbConfig(path=tmp_path / "chdb")) as store,
    ):
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

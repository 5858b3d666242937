"""``quant data fetch|import|ls|gaps|export`` through the real console script."""

from __future__ import annotations

import io
import json
import os
import time
import urllib.request
import zipfile

import numpy as np
import pandas as pd
import pytest

from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.plugins.storage.clickhouse import ChdbStore
from btc_quant.testing.exchange.market import DEFAULT_SPOT_FILE
from btc_quant.testing.process import ServerProcess

SPOT = read_bars_file(DEFAULT_SPOT_FILE)
SPOT_END = int(SPOT.ts[-1]) + 60_000


def stored(home, exchange="binance", symbol="BTC/USDT", timeframe="1m"):
    with ChdbStore() as store:
        assert store.path == home / "chdb"
        return (
            store.read_bars(exchange, symbol, timeframe),
            store.count_rows(exchange, symbol, timeframe),
            store.gaps(exchange, symbol, timeframe),
        )


def klines_answered(url: str) -> int:
    state = json.load(urllib.request.urlopen(url + "/_control/state"))
    return state["requests"].get("/api/v3/klines 200", 0)


@pytest.fixture
def exchange():
    server = ServerProcess("btc_quant.testing.exchange", "--clock-start", str(SPOT_END)).start()
    yield server
    server.stop()


def test_fetch_ls_gaps_and_resume(quant, exchange, isolated_env):
    args = ("exchange=binance", f"exchange.url={exchange.url}", "symbol=BTC/USDT", "timeframe=1m")
    done = quant("data", "fetch", *args, "start=2021-04-19", check=True)
    assert "4,170 bars written" in done.stdout
    assert "no bars for 2021-04-20 02:00 .. 2021-04-20 04:30 UTC (150 bars)" in done.stdout
    listing = quant("data", "ls", check=True).stdout
    assert "binance" in listing and "2021-04-19 00:00" in listing and "4,170" in listing
    gaps = quant("data", "gaps", *args[:1], "symbol=BTC/USDT", check=True).stdout
    assert "2021-04-20 02:00" in gaps and "150" in gaps and "exchange has none" in gaps
    again = quant("data", "fetch", *args, check=True)  # resumes from the store: nothing new
    assert "0 bars written" in again.stdout
    bars, counts, _ = stored(isolated_env)
    np.testing.assert_array_equal(bars.ts, SPOT.ts)
    assert counts == (len(SPOT), len(SPOT))


def test_sigkilled_fetch_resumes_without_holes_or_duplicates(quant, isolated_env, tmp_path):
    slow = ServerProcess("btc_quant.testing.exchange", "--clock-start", str(SPOT_END), "--fault", "slow=1.0").start()
    try:
        import subprocess
        import sys

        exe = os.path.join(os.path.dirname(sys.executable), "quant")
        args = [
            exe,
            "data",
            "fetch",
            "exchange=binance",
            f"exchange.url={slow.url}",
            "exchange.page_limit=100",
            "symbol=BTC/USDT",
            "start=2021-04-19",
        ]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
        deadline = time.monotonic() + 180  # ~0.3 s a page of 100 bars: kill once a few pages are in
        while klines_answered(slow.url) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.kill()
        proc.wait(30)
        partial, _, _ = stored(isolated_env)
        assert 0 < len(partial) < len(SPOT)
        quant(*args[1:], check=True)
    finally:
        slow.stop()
    bars, counts, gaps = stored(isolated_env)
    np.testing.assert_array_equal(bars.ts, SPOT.ts)
    np.testing.assert_array_equal(bars.close, SPOT.close)
    assert counts == (len(SPOT), len(SPOT))  # no row written twice
    assert [(g.start_ms, g.bars, g.reason) for g in gaps] == [(1618884000000, 150, "exchange has none")]


def test_import_parquet_and_binance_archive_zip_then_export(quant, isolated_env, tmp_path):
    perp = read_bars_file(SAMPLE.path)[:5000]
    src = tmp_path / "perp.parquet"
    perp.to_frame().to_parquet(src)
    quant("data", "import", str(src), "exchange=binanceusdm", "symbol=BTC/USDT:USDT", check=True)
    # A Binance public-archive monthly zip: headerless CSV, 12 columns; spot files from 2025 use microseconds.
    frame = SPOT.to_frame()
    rows = io.StringIO()
    for r in frame.itertuples(index=False):
        rows.write(f"{r.ts * 1000},{r.open},{r.high},{r.low},{r.close},{r.volume},{r.ts * 1000 + 59_999_999},0,0,0,0,0\n")
    archive = tmp_path / "BTCUSDT-1m-2021-04.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("BTCUSDT-1m-2021-04.csv", rows.getvalue())
    done = quant("data", "import", str(archive), "exchange=binance", "symbol=BTC/USDT", check=True)
    assert "4,170 bars imported" in done.stdout and "rows/s" in done.stderr
    out_csv, out_parquet = tmp_path / "spot_1h.csv", tmp_path / "perp.parquet.out.parquet"
    quant("data", "export", str(out_csv), "exchange=binance", "symbol=BTC/USDT", "timeframe=1h", check=True)
    quant("data", "export", str(out_parquet), "exchange=binanceusdm", "symbol=BTC/USDT:USDT", "--format", "parquet", check=True)
    back = read_bars_file(out_parquet)
    np.testing.assert_array_equal(back.ts, perp.ts)
    np.testing.assert_array_equal(back.close, perp.close)
    hourly = pd.read_csv(out_csv)
    assert len(hourly) == 70 and hourly["high"].iloc[0] == frame[frame.ts < frame.ts.iloc[0] + 3_600_000]["high"].max()


def test_bad_rows_refuse_the_file_or_are_skipped_and_saved(quant, isolated_env, tmp_path):
    frame = SPOT[:200].to_frame()
    frame["close"] = frame["close"].astype(object)
    frame.loc[10, "close"] = "n/a"
    frame.loc[20, "high"] = frame.loc[20, "low"] - 5
    frame.loc[30, "ts"] = frame.loc[29, "ts"]  # duplicate timestamp
    path = tmp_path / "bars.csv"
    frame.to_csv(path, index=False)
    refused = quant("data", "import", str(path), "exchange=binance", "symbol=BTC/USDT")
    assert refused.returncode == 2
    assert f"{path}: line 12: close is not a number" in refused.stderr  # header is line 1, row 0 is line 2
    assert f"{path}: line 22: high below low" in refused.stderr
    assert f"{path}: line 32: duplicate timestamp" in refused.stderr
    assert "3 bad row(s) of 200" in refused.stderr and "nothing imported" in refused.stderr
    assert "the store is empty" in quant("data", "ls", check=True).stdout
    kept = quant("data", "import", str(path), "exchange=binance", "symbol=BTC/USDT", "--skip-bad", check=True)
    assert "197 bars imported" in kept.stdout
    saved = next((isolated_env / "rejected").glob("bars.csv.*.csv"))
    rejected = pd.read_csv(saved)
    assert list(rejected["where"]) == ["line 12", "line 22", "line 32"]
    assert len(stored(isolated_env)[0]) == 197


def test_missing_columns_is_one_line(quant, tmp_path):
    path = tmp_path / "nope.csv"
    path.write_text("time,price\n1,2\n")
    done = quant("data", "import", str(path), "exchange=binance", "symbol=BTC/USDT")
    assert done.returncode == 2 and "missing column(s) open, high, low, close, volume" in done.stderr


def test_data_commands_on_a_clickhouse_server_over_http(quant, tmp_path):
    password = "cli-pa55word"
    server = ServerProcess(
        "btc_quant.testing.clickhouse_http",
        "--path",
        str(tmp_path / "ch"),
        "--user",
        "ops",
        env={**os.environ, "CLICKHOUSE_HTTP_PASSWORD": password},
    ).start()
    try:
        # The way the README says to keep the password off the command line: the whole section in the environment.
        env = {
            "QUANT_STORE__NAME": "clickhouse",
            "QUANT_STORE__URL": server.url,
            "QUANT_STORE__USER": "ops",
            "QUANT_STORE__PASSWORD": password,
        }
        quant("data", "import", str(SAMPLE.path), "exchange=binanceusdm", "symbol=BTC/USDT:USDT", env=env, check=True)
        listing = quant("data", "ls", env=env, check=True).stdout
        assert "45,031" in listing
        done = quant("run", "data.start=2022-01-10", "data.end=2022-01-11", env=env, check=True)
        assert "bundled sample" not in done.stdout + done.stderr
        wrong = quant("data", "ls", env={**env, "QUANT_STORE__PASSWORD": "wrong-" + password})
        assert wrong.returncode == 2 and "refused user 'ops'" in wrong.stderr
        assert password not in wrong.stdout + wrong.stderr
        inline = quant(
            "data", "ls", "store=clickhouse", f"store.url={server.url}", "store.user=ops", f"store.password={password}", check=True
        )
        assert "45,031" in inline.stdout
    finally:
        server.stop()

"""Data commands never surprise silently: changed bars need --replace, a killed import is shown as
incomplete and resumes, a timeframe that is not the data's spacing is an error, ``data ls --json``,
and tables that never cut numbers (each of these was silent on an earlier version)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pandas as pd

from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.plugins.storage.clickhouse import ChdbStore

PERP = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT")


def stored_bars(symbol="BTC/USDT:USDT", timeframe="1m"):
    with ChdbStore() as store:
        return store.read_bars("binanceusdm", symbol, timeframe), store.count_rows("binanceusdm", symbol, timeframe)


def test_import_that_changes_stored_bars_needs_replace(quant, tmp_path):
    bars = read_bars_file(SAMPLE.path)[:1000]
    original = tmp_path / "jan.parquet"
    bars.to_frame().to_parquet(original)
    quant("data", "import", str(original), *PERP, check=True)
    again = quant("data", "import", str(original), *PERP, check=True)  # the same values: nothing to say
    assert "differ" not in again.stdout + again.stderr
    frame = bars.to_frame()
    frame.loc[100:299, ["open", "high", "low", "close"]] *= 1.01  # 200 bars, prices 1% higher
    changed = tmp_path / "jan-changed.parquet"
    frame.to_parquet(changed)

    refused = quant("data", "import", str(changed), *PERP)
    assert refused.returncode == 2
    message = refused.stderr.strip()
    assert "200 of the 1,000 bars already stored" in message and "1%" in message and "--replace" in message
    assert "Traceback" not in message
    got, _ = stored_bars()
    np.testing.assert_array_equal(got.close, bars.close)  # nothing was written

    done = quant("data", "import", str(changed), *PERP, "--replace", check=True)
    assert "replaced 200 of the 1,000 bars" in done.stdout
    got, _ = stored_bars()
    np.testing.assert_allclose(got.close, frame["close"].to_numpy())


def _big_file(path, rows: int) -> None:
    """``rows`` 1m bars: the real sample's prices, repeated on consecutive minutes."""
    sample = read_bars_file(SAMPLE.path).to_frame()
    reps = -(-rows // len(sample))
    frame = pd.concat([sample] * reps, ignore_index=True).iloc[:rows].copy()
    frame["ts"] = int(sample["ts"].iloc[0]) + np.arange(rows, dtype=np.int64) * 60_000
    frame.to_parquet(path)


def test_killed_import_is_shown_incomplete_and_resumes(quant, isolated_env, tmp_path):
    rows = 1_100_000  # three chunks of 500,000 rows
    src = tmp_path / "year.parquet"
    _big_file(src, rows)
    exe = os.path.join(os.path.dirname(sys.executable), "quant")
    proc = subprocess.Popen([exe, "data", "import", str(src), *PERP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    journal_dir = isolated_env / "imports"
    deadline = time.monotonic() + 300
    written = 0
    while time.monotonic() < deadline and proc.poll() is None:  # kill once the first chunk is in the store
        entries = [json.loads(p.read_text()) for p in journal_dir.glob("*.json")] if journal_dir.is_dir() else []
        written = max((e["written"] for e in entries), default=0)
        if written >= 500_000:
            proc.kill()
            break
        time.sleep(0.02)
    proc.wait(60)
    assert proc.returncode != 0, "the import finished before it could be killed"
    partial, _ = stored_bars()
    assert 500_000 <= len(partial) < rows

    listing = json.loads(quant("data", "ls", "--json", check=True).stdout)
    (series,) = [s for s in listing if s["timeframe"] == "1m"]
    assert series["rows"] == len(partial)
    assert series["incomplete"] and f"of {rows:,} bars" in series["incomplete"] and str(src) in series["incomplete"]
    table = quant("data", "ls", check=True).stdout
    assert "incomplete: binanceusdm BTC/USDT:USDT 1m" in table
    gaps = quant("data", "gaps", *PERP, check=True).stdout
    assert "incomplete" in gaps and "run the same import again" in gaps

    resumed = quant("data", "import", str(src), *PERP, check=True)
    assert "resuming an interrupted import" in resumed.stderr
    full, counts = stored_bars()
    assert len(full) == rows and counts[0] == rows
    listing = json.loads(quant("data", "ls", "--json", check=True).stdout)
    assert [s["incomplete"] for s in listing if s["timeframe"] == "1m"] == [None]


def test_run_with_a_timeframe_that_is_not_the_files_spacing_is_an_error(quant, tmp_path):
    src = tmp_path / "jan_1m.parquet"
    read_bars_file(SAMPLE.path)[:3000].to_frame().to_parquet(src)
    proc = quant("run", "strategy=sma_cross", "timeframe=1h", f"data.file={src}")
    assert proc.returncode == 2
    assert "the bars are 1m apart, but timeframe=1h" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_import_with_a_timeframe_that_is_not_the_files_spacing_is_an_error(quant, tmp_path):
    hourly = read_bars_file(SAMPLE.path).to_frame()
    hourly = hourly[hourly["ts"] % 3_600_000 == 0].iloc[:200]  # on 1m boundaries too: no row is "bad"
    src = tmp_path / "hours.parquet"
    hourly.to_parquet(src)
    proc = quant("data", "import", str(src), *PERP, "timeframe=1m")
    assert proc.returncode == 2
    assert "the bars are 1h apart, but timeframe=1m" in proc.stderr
    assert stored_bars()[0].ts.size == 0


def _run_in_terminal(args: list[str], columns: int) -> str:
    """Run ``quant ARGS`` with stdout on a pseudo-terminal ``columns`` wide; return what it shows."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    exe = os.path.join(os.path.dirname(sys.executable), "quant")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([exe, *args], stdout=follower, stderr=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(120)
    os.close(leader)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))


def test_data_ls_on_a_narrow_terminal_shows_every_number_whole(quant, tmp_path):
    src = tmp_path / "jan.parquet"
    read_bars_file(SAMPLE.path).to_frame().to_parquet(src)  # 45,031 bars
    quant("data", "import", str(src), *PERP, "symbol=BTC/USDT:USDT", check=True)
    shown = _run_in_terminal(["data", "ls"], columns=60)
    plain = shown.replace("\r", "")
    assert "45,031" in plain and "2021-12-31 23:01" in plain and "2022-02-01 05:31" in plain
    assert "…" not in plain

"""Market-data store benchmark: import and range reads, chDB in-process and over HTTP.

    python bench/bench_data.py                 # defaults: the real 1m file, then 3,000,000 bootstrapped bars
    python bench/bench_data.py --boot-bars 0   # real data only

What is timed (wall clock, best of ``--repeat``):

* import of the real Binance spot 1m file (``shared/data/binance_btcusdt_1m.parquet``, 1.2M bars):
  parsing and checking every row (``quant data import``'s reader) and writing into the store;
* import of a ~3M-bar series **block-bootstrapped from the real 1m bars** (one-day blocks of whole
  bars, each scaled to continue from the previous close; not market data, only a size test);
* a range read of 525,600 bars (a year of 1m) into numpy arrays (``Store.read_bars``, de-duplicated
  with FINAL), and the same read resampled to 1h in SQL;
* peer in the same run: ``pandas.read_parquet`` of the same bars from a local parquet file (the
  floor any store read is compared with).

Targets (issue 3): 3M bars imported in <= 10 s; 525k bars read in <= 1 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from btc_quant.core.data import BarArrays, read_bars_file
from btc_quant.core.importing import read_import_file
from btc_quant.plugins.storage.clickhouse import ChdbConfig, ChdbStore, ServerConfig, ServerStore
from btc_quant.testing.process import ServerProcess

HERE = Path(__file__).resolve().parent
DAY = 1440


def shared_file(name: str) -> Path:
    for parent in HERE.parents:
        if (parent / "shared" / "data" / name).exists():
            return parent / "shared" / "data" / name
    raise SystemExit(f"needs shared/data/{name} next to the checkout")


def bootstrap(real: BarArrays, n: int, seed: int = 7) -> BarArrays:
    """``n`` 1m bars: random one-day blocks of real bars, each rescaled to start at the previous close."""
    rng = np.random.default_rng(seed)
    pieces = [(a, b) for a, b in real.stretches(60_000) if b - a >= DAY]
    out = {c: np.empty(n) for c in ("open", "high", "low", "close", "volume")}
    price, pos = 30_000.0, 0
    while pos < n:
        a, b = pieces[rng.integers(len(pieces))]
        s = int(rng.integers(a, b - DAY + 1))
        k = min(DAY, n - pos)
        scale = price / real.open[s]
        for c in ("open", "high", "low", "close"):
            out[c][pos : pos + k] = getattr(real, c)[s : s + k] * scale
        out["volume"][pos : pos + k] = real.volume[s : s + k]
        price = out["close"][pos + k - 1]
        pos += k
    ts = 1_500_000_000_000 // 60_000 * 60_000 + np.arange(n, dtype=np.int64) * 60_000
    return BarArrays(ts, out["open"], out["high"], out["low"], out["close"], out["volume"])


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def run_leg(name: str, store, real_path: Path, boot: BarArrays | None, repeat: int, scratch: Path) -> list[tuple]:
    rows = []
    t_parse, read = best(lambda: read_import_file(real_path, "1m"), 1)
    t_write, _ = best(lambda: store.write_bars("binance", "BTC/USDT", "1m", read.bars), 1)
    rows.append((name, f"import real 1m file ({len(read.bars):,} bars): check rows", t_parse, len(read.bars)))
    rows.append((name, "  write into the store", t_write, len(read.bars)))
    if boot is not None:
        t_boot, _ = best(lambda: store.write_bars("bench", "BOOT/USDT", "1m", boot), 1)
        rows.append((name, f"write {len(boot):,} bootstrapped bars", t_boot, len(boot)))
        source, symbol = ("bench", "BOOT/USDT")
        lo = int(boot.ts[len(boot) // 3])
    else:
        source, symbol = ("binance", "BTC/USDT")
        lo = int(read.bars.ts[0])
    hi = lo + 525_600 * 60_000
    t_read, bars = best(lambda: store.read_bars(source, symbol, "1m", lo, hi), repeat)
    rows.append((name, f"read a year of 1m ({len(bars):,} bars) to numpy", t_read, len(bars)))
    t_1h, hourly = best(lambda: store.read_bars(source, symbol, "1h", lo, hi), repeat)
    rows.append((name, f"  same range resampled to 1h in SQL ({len(hourly):,} bars)", t_1h, len(hourly)))
    peer = scratch / "peer.parquet"
    if not peer.exists():
        bars.to_frame().to_parquet(peer)
    t_peer, _ = best(lambda: pd.read_parquet(peer), repeat)
    rows.append((name, "  peer: pandas.read_parquet of the same bars", t_peer, len(bars)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boot-bars", type=int, default=3_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--http", action=argparse.BooleanOptionalAction, default=True, help="also run over the HTTP endpoint")
    args = p.parse_args()
    real_path = shared_file("binance_btcusdt_1m.parquet")
    boot = bootstrap(read_bars_file(real_path), args.boot_bars) if args.boot_bars else None
    scratch = Path(tempfile.mkdtemp(prefix="bench_data_"))
    rows: list[tuple] = []
    try:
        with ChdbStore(ChdbConfig(path=scratch / "chdb")) as store:
            rows += run_leg("chdb", store, real_path, boot, args.repeat, scratch)
        if args.http:
            server = ServerProcess(
                "btc_quant.testing.clickhouse_http",
                "--path",
                str(scratch / "http"),
                "--user",
                "bench",
                env={**os.environ, "CLICKHOUSE_HTTP_PASSWORD": "bench-pass"},
            ).start()
            try:
                with ServerStore(ServerConfig(url=server.url, user="bench", password="bench-pass")) as store:
                    rows += run_leg("http", store, real_path, boot, args.repeat, scratch)
            finally:
                server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{'store':6} {'what':62} {'seconds':>8} {'bars/s':>12}")
    for leg, what, seconds, n in rows:
        print(f"{leg:6} {what:62} {seconds:8.3f} {n / seconds:12,.0f}")
    for leg in ("chdb", "http"):
        read = next((r for r in rows if r[0] == leg and r[1].startswith("read a year")), None)
        peer = next((r for r in rows if r[0] == leg and "peer" in r[1]), None)
        if read and peer:
            print(f"{leg}: store read / parquet read = {read[2] / peer[2]:.2f}x")


if __name__ == "__main__":
    main()

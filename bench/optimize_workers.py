"""Trials per minute of ``quant optimize`` with 1 and with 2 Dask worker processes.

Real data: Binance spot BTC/USDT 1m, the 2025-05-20 .. 2025-08-18 stretch (130,708 bars) of
``/work/shared/data/binance_btcusdt_1m.parquet``; strategy sma_cross; random sampler with a fixed
seed, so both runs evaluate the same parameter sets. Each worker count gets its own LocalCluster
(processes, 127.0.0.1); a warm-up study (one trial per worker: numba compiles in each process)
runs first, then the timed study. Reported: steady-state trials/minute of the timed study, the
end-to-end wall time of the timed ``optimize`` call (Optuna SQLite storage included), the mean
backtest time inside the workers, "busy workers" (backtest seconds per second of the timed span:
how well the driver keeps the workers fed) and the 2-worker / 1-worker ratio. On a machine shared
with other jobs the mean backtest time grows with 2 workers and the ratio says more about the
machine than about the optimiser; "busy workers" does not.

    python bench/optimize_workers.py [--trials 40] [--data PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

from distributed import LocalCluster

from btc_quant.core.optimize import optimize
from btc_quant.core.plugins import load_plugins

DATA = Path("/work/shared/data/binance_btcusdt_1m.parquet")


def run(workers: int, trials: int, data: Path, plugins) -> dict:
    base = {
        "strategy": {"name": "sma_cross"},
        "symbol": "BTC/USDT",
        "exchange": {"name": "binance"},
        "data": {"file": str(data), "start": "2025-05-20T00:00", "end": "2025-08-18T18:00"},
        "search": {"fast": "3:30", "slow": "40:200:10"},
        "sampler": "random",
        "seed": 42,
    }
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", scheduler_port=0, dashboard_address=None
    ) as cluster:
        common = {**base, "cluster": cluster.scheduler_address}
        optimize({**common, "trials": workers, "study": "warmup", "out": f"{tmp}/warmup"}, plugins=plugins)
        stamps = []
        started = time.perf_counter()
        result = optimize(
            {**common, "trials": trials, "study": "timed", "out": f"{tmp}/timed"},
            plugins=plugins,
            progress=lambda e: stamps.append((time.perf_counter(), e.done)),
        )
        wall = time.perf_counter() - started
    first = next(t for t, done in stamps if done == 0)
    last = stamps[-1][0]
    complete = int((result.trials["state"] == "COMPLETE").sum())
    span = last - first
    return {
        # backtest seconds per second of the timed span: how many workers were kept busy on average
        "busy_workers": float(result.trials["elapsed_s"].sum()) / span,
        "workers": workers,
        "trials": len(result.trials),
        "complete": complete,
        "trials_per_min": len(result.trials) / span * 60,
        "wall_s": wall,
        "mean_backtest_s": float(result.trials["elapsed_s"].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    plugins = load_plugins()
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    rows = [run(workers, args.trials, args.data, plugins) for workers in (1, 2)]
    for row in rows:
        print(
            f"workers={row['workers']}: {row['trials']} trials ({row['complete']} complete), "
            f"{row['trials_per_min']:.1f} trials/min, wall {row['wall_s']:.1f}s, "
            f"mean backtest {row['mean_backtest_s']:.2f}s, busy workers {row['busy_workers']:.2f}"
        )
    print(f"speed-up 2 vs 1 workers: {rows[1]['trials_per_min'] / rows[0]['trials_per_min']:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Trials per minute of ``quant optimize`` with 1 and with 2 Dask worker processes.

Two workloads (``--strategy``), real data, random sampler with a fixed seed, so both worker counts
evaluate the same parameter sets:

* ``sma_cross`` (default): Binance spot BTC/USDT 1m, the 2025-05-20 .. 2025-08-18 stretch (130,708
  bars) of ``/work/shared/data/binance_btcusdt_1m.parquet``; fast 3..30, slow 40..200;
* ``maker_vol``: the search of ``examples/optimize/maker_vol.toml`` (the issue's own example: step,
  take-profit, lookback) on the same 130,708 spot bars traded as the USD-M perpetual (Binance's
  spot and perpetual prices differ by basis points; the perpetual files here hold shorter
  stretches), through the compiled path ``quant run`` uses.
 Each worker count gets its own LocalCluster,
the one ``quant optimize workers=N`` starts (``local_cluster``: processes, 127.0.0.1, its Dask
settings); a warm-up study (one trial per worker: numba compiles in each process) runs first,
then the timed study. Reported: steady-state trials/minute of the timed study, the end-to-end
wall time of the timed ``optimize`` call (Optuna SQLite storage included), the mean backtest time
inside the workers, "busy workers" (backtest seconds per second of the timed span: how well the
driver keeps the workers fed), the CPU seconds per trial of the driver process (Optuna, the
storage, the Dask client, scheduler and nannies: what the optimiser itself costs) and of the
worker processes, and the 2-worker / 1-worker ratio. On a machine shared with other jobs the mean
backtest time grows with 2 workers and the ratio says more about the machine than about the
optimiser; "busy workers" and the driver's CPU per trial do not.

    python bench/optimize_workers.py [--strategy sma_cross|maker_vol] [--trials 40] [--data PATH] [--start ... --end ... --objective sharpe]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import psutil

from btc_quant.core.optimize import optimize
from btc_quant.core.optimize.runner import local_cluster
from btc_quant.core.plugins import load_plugins

DATA = Path("/work/shared/data/binance_btcusdt_1m.parquet")
WORKLOADS = {
    "sma_cross": {
        "base": {"strategy": {"name": "sma_cross"}, "symbol": "BTC/USDT", "exchange": {"name": "binance"}},
        "search": {"fast": "3:30", "slow": "40:200:10"},
        "data": DATA,
        "start": "2025-05-20T00:00",
        "end": "2025-08-18T18:00",
    },
    "maker_vol": {
        "base": {"strategy": {"name": "maker_vol"}, "symbol": "BTC/USDT:USDT", "exchange": {"name": "binanceusdm"}},
        "search": {"step_pct": "0.001:0.01", "tp_pct": "0.001:0.01", "lookback": "3d,7d,14d"},
        "data": DATA,
        "start": "2025-05-20T00:00",
        "end": "2025-08-18T18:00",
    },
}


def run(workers: int, trials: int, workload: dict, data: Path, plugins, start: str, end: str, objective: str) -> dict:
    base = {
        **workload["base"],
        "data": {"file": str(data), "start": start, "end": end},
        "search": workload["search"],
        "objective": objective,
        "sampler": "random",
        "seed": 42,
    }
    driver = psutil.Process()
    # the cluster `quant optimize workers=N` starts (its Dask settings included), reached by address
    with tempfile.TemporaryDirectory() as tmp, local_cluster(workers) as cluster:
        common = {**base, "cluster": cluster.scheduler_address}
        optimize({**common, "trials": workers, "study": "warmup", "out": f"{tmp}/warmup"}, plugins=plugins)
        children = driver.children(recursive=True)
        stamps, cpu = [], []

        def progress(event) -> None:
            stamps.append((time.perf_counter(), event.done))
            if event.done in (0, trials):  # CPU seconds at the start and the end of the timed span
                cpu.append((sum(driver.cpu_times()[:2]), sum(sum(c.cpu_times()[:2]) for c in children)))

        started = time.perf_counter()
        result = optimize({**common, "trials": trials, "study": "timed", "out": f"{tmp}/timed"}, plugins=plugins, progress=progress)
        wall = time.perf_counter() - started
    first = next(t for t, done in stamps if done == 0)
    last = stamps[-1][0]
    (driver_0, workers_0), (driver_1, workers_1) = cpu[0], cpu[-1]
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
        # the driver process: Optuna, the study's storage, the Dask client, scheduler and nannies
        "driver_ms_per_trial": (driver_1 - driver_0) / len(result.trials) * 1000,
        "worker_ms_per_trial": (workers_1 - workers_0) / len(result.trials) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=sorted(WORKLOADS), default="sma_cross")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--data", type=Path, help="bars file (default: the workload's)")
    # a short window (one day) makes trials short, so what the optimiser costs per trial shows
    parser.add_argument("--start", help="default: the workload's")
    parser.add_argument("--end")
    parser.add_argument("--objective", default="sharpe")  # a day of bars has no daily sharpe: total_return
    args = parser.parse_args()
    workload = WORKLOADS[args.strategy]
    warnings.simplefilter("ignore", FutureWarning)
    # the bars come from --data; an empty home keeps other users' stores (chDB locks) out of it
    os.environ["QUANT_HOME"] = tempfile.mkdtemp(prefix="quant-home-")
    plugins = load_plugins()
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    data, start, end = args.data or workload["data"], args.start or workload["start"], args.end or workload["end"]
    print(f"workload: {args.strategy} on {data.name} {start} .. {end}, {args.trials} trials")
    rows = [run(workers, args.trials, workload, data, plugins, start, end, args.objective) for workers in (1, 2)]
    for row in rows:
        print(
            f"workers={row['workers']}: {row['trials']} trials ({row['complete']} complete), "
            f"{row['trials_per_min']:.1f} trials/min, wall {row['wall_s']:.1f}s, "
            f"mean backtest {row['mean_backtest_s']:.3f}s, busy workers {row['busy_workers']:.2f}, "
            f"CPU per trial: driver {row['driver_ms_per_trial']:.1f} ms, workers {row['worker_ms_per_trial']:.0f} ms"
        )
    print(f"speed-up 2 vs 1 workers: {rows[1]['trials_per_min'] / rows[0]['trials_per_min']:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Time ``maker_vol`` on real 1m bars and on a long block-bootstrapped series, against a numba loop.

    python bench/bench_maker_vol.py                 # all real 1m stretches + 3M bootstrapped bars
    python bench/bench_maker_vol.py --bootstrap 0   # real stretches only
    python bench/bench_maker_vol.py --sides long,short --bootstrap 0 --event-bars 0

1. Every stretch of ``binance_btcusdt_1m.parquet`` (split at every jump in ``ts``, so no run spans
   a gap; pieces shorter than a day are skipped), each run exactly as ``quant run
   strategy=maker_vol broker=sim`` runs it (``core.run.run_engine``: the compiled path of
   ``maker_vol_kernel``, which gives the same fills as the event path). Real data. The time of
   each run includes building the RunResult and the grid diagnostics, not building the engine.
2. ``--bootstrap N`` bars (default 3,000,000, about six years of minutes): BLOCK-BOOTSTRAPPED from
   the real 1m bars of that file. Blocks of one day of real bars are drawn at random (seed 7) and
   chained: each block's open/high/low/close are scaled so its first open equals the previous
   block's last close. The path is therefore made of real minutes but is not a real price history;
   it is only used for timing.
3. The event path (engine + sim + OrderSync, ``strategy.fast=false``) on a slice of real bars
   (``--event-bars``, default the first 60,000 bars of the stretch starting 2021-03-26 ... it and
   the following ones), timed in the same run, with the compiled path on the same slice and a check
   that both gave the same fills.
   The compiled path and the numba loop are timed ``--repeat`` times (default 3) and the best run
   counts, so that a burst from other processes on a shared machine does not decide the ratio.
   The last column is the CPU time (``time.process_time``, best of the runs) of the compiled path
   end to end and of the numba loop: on a loaded machine wall time is mostly waiting for a core.
4. A hand-written numba loop of the same long grid (ladder from top to bottom recomputed hourly
   from the rolling 30-day high, entries at armed levels below the price, take-profit on the first
   free level ``tp_pct`` above with upward shifting, saturation close of the highest take-profit,
   ``through`` fills). It leaves out what the engine version does in Python (live window of
   ``max_live_orders``, sizing by equity, cash pauses, re-laying take-profits on recompute, fees),
   so it is a lower bound on time, not a second implementation to compare PnL with.
   ``--sides short``: maker_vol with ``strategy.side=short`` against the same loop run on the
   reciprocal prices (1/price, high and low swapped): a short grid rising from 1.05 x the low is a
   long grid falling from 1/(1.05 x low) on 1/price, with the same work per bar. ``--sides both``:
   maker_vol with ``strategy.side=both broker.position_mode=hedge`` (compiled: a long and a short
   grid, each on its own position) against the long loop plus the short loop (the two grids' work).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit

from btc_quant.core.config import merge_layers, parse_assignments, resolve
from btc_quant.core.data import BarArrays, read_bars_file
from btc_quant.core.plugins import load_plugins
from btc_quant.core.run import build_engine, build_runtime, run_engine

DATA = Path("/work/shared/data/binance_btcusdt_1m.parquet")


def real_pieces(bars: BarArrays, min_bars: int = 1440) -> list[BarArrays]:
    return [bars[a:b] for a, b in bars.stretches(60_000) if b - a >= min_bars]


def bootstrap(pieces: list[BarArrays], n: int, block: int = 1440, seed: int = 7) -> BarArrays:
    """Chain random one-day blocks of real bars, rescaled to continue from the previous close."""
    rng = np.random.default_rng(seed)
    starts = [(p, i) for p in pieces for i in range(0, len(p) - block, block)]
    cols = {c: np.empty(n) for c in ("open", "high", "low", "close", "volume")}
    filled, last = 0, None
    while filled < n:
        piece, i = starts[rng.integers(len(starts))]
        take = min(block, n - filled)
        scale = 1.0 if last is None else last / piece.open[i]
        for c in ("open", "high", "low", "close"):
            cols[c][filled : filled + take] = getattr(piece, c)[i : i + take] * scale
        cols["volume"][filled : filled + take] = piece.volume[i : i + take]
        last = cols["close"][filled + take - 1]
        filled += take
    ts = 1_500_000_000_000 + 60_000 * np.arange(n, dtype=np.int64)
    return BarArrays(ts, cols["open"], cols["high"], cols["low"], cols["close"], cols["volume"])


def _config(plugins, settings: list[str]):
    return resolve(
        merge_layers(parse_assignments(["strategy=maker_vol", "broker=sim", "exchange=binanceusdm", "symbol=BTC/USDT:USDT", *settings])),
        plugins.registry,
    )


def run_maker_vol(pieces: list[BarArrays], plugins, settings: list[str], *, event: bool = False):
    """Total seconds, seconds in the compiled loop alone, fills, bars and the fills frames of ``maker_vol`` over ``pieces``: as
    ``quant run`` runs it (compiled path), or the event path with ``event=True``."""
    config = _config(plugins, [*settings, "strategy.fast=false"] if event else settings)
    total, kernel, fills, bars, frames = 0.0, 0.0, 0, 0, []
    cpu = 0.0
    # One runtime for all pieces: the store (asked for funding history by the sim's load) is
    # opened once, as in a sweep, instead of once per stretch (~0.3 s for chDB each time).
    runtime = build_runtime(config, plugins)
    for piece in pieces:
        engine = build_engine(config, runtime)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = engine.run_backtest(piece) if event else run_engine(engine, piece)
        total += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        if not event and not result.compiled:
            raise SystemExit("the compiled path did not apply: the benchmark would time the event path")
        kernel += result.compiled_kernel_s or 0.0
        fills += len(result.fills)
        bars += len(piece)
        frames.append(result.fills.drop(columns=["client_id"]))
    runtime.close()
    run_maker_vol.cpu = cpu  # CPU seconds of the same runs (the load of a shared machine inflates wall time)
    return total, kernel, fills, bars, frames


@njit(cache=True)
def grid_loop(ts, high, low, close, lookback, recompute_ms, top_ratio, bottom_ratio, step, tp_pct):
    """The long grid's rules in one compiled loop (see the module docstring for what is left out)."""
    n = len(close)
    max_levels = 2048
    tp_lot = np.full(max_levels, -1, dtype=np.int64)  # level -> lot holding a take-profit there
    lot_entry = np.zeros(1 << 16)
    lot_tp = np.full(1 << 16, -1.0)
    lot_open = np.zeros(1 << 16, dtype=np.bool_)
    free_lots = list(range((1 << 16) - 1, -1, -1))
    # rolling high via a monotonic deque
    q = np.empty(n, dtype=np.int64)
    head = 0
    tail = 0
    levels = np.empty(0)
    next_recompute = -1
    fills = 0
    saturations = 0
    pnl = 0.0
    for i in range(n):
        while tail > head and high[q[tail - 1]] <= high[i]:
            tail -= 1
        q[tail] = i
        tail += 1
        while ts[q[head]] <= ts[i] - lookback:
            head += 1
        if i > 0:
            # take-profits: every open lot whose take-profit the bar traded through
            for lv in range(len(levels)):
                lot = tp_lot[lv]
                if lot >= 0 and high[i] > levels[lv]:
                    pnl += levels[lv] - lot_entry[lot]
                    lot_open[lot] = False
                    tp_lot[lv] = -1
                    free_lots.append(lot)
                    fills += 1
            # entries: armed levels below the previous close that the bar traded through
            prev = close[i - 1]
            for lv in range(1, len(levels)):
                p = levels[lv]
                if p >= prev or tp_lot[lv] >= 0:
                    continue
                if not low[i] < p:
                    break
                lot = free_lots.pop()
                lot_entry[lot] = p
                lot_open[lot] = True
                fills += 1
                target = lv - 1
                while target > 0 and levels[target - 1] < p * (1 + tp_pct):
                    target -= 1
                k = target
                while k >= 0 and tp_lot[k] >= 0:
                    k -= 1
                if k < 0:  # saturation: close the lot whose take-profit is highest (level 0) at the close
                    victim = tp_lot[0]
                    pnl += close[i] - lot_entry[victim]
                    lot_open[victim] = False
                    free_lots.append(victim)
                    tp_lot[0] = -1
                    saturations += 1
                    k = 0
                    while k < target and tp_lot[k + 1] < 0:
                        k += 1
                tp_lot[k] = lot
                lot_tp[lot] = k
        if ts[i] >= next_recompute:
            recent = high[q[head]]
            top = top_ratio * recent
            bottom = bottom_ratio * recent
            count = int(np.floor(np.log(bottom / top) / np.log(1 - step))) + 1
            count = min(count, max_levels)
            new_levels = top * (1 - step) ** np.arange(count)
            if len(levels) == 0:
                levels = new_levels
            else:
                # keep take-profits where they are (by level index): the simplification noted above
                levels = new_levels
            next_recompute = (ts[i] // recompute_ms + 1) * recompute_ms
    return fills, saturations, pnl


def run_numba(pieces: list[BarArrays], side: str = "long") -> tuple[float, int]:
    if side == "both":  # a long grid and a short grid: the two loops' work, one after the other
        (t_long, f_long), cpu_long = run_numba(pieces, "long"), run_numba.cpu
        t_short, f_short = run_numba(pieces, "short")
        run_numba.cpu += cpu_long
        return t_long + t_short, f_long + f_short
    small = pieces[0][:5000]
    grid_loop(small.ts, small.high, small.low, small.close, 30 * 86_400_000, 3_600_000, 0.95, 0.5, 0.002, 0.002)  # compile
    if side == "short":  # the mirror image through 1/price (module docstring); ratios 1/1.05 and 1/2
        pieces = [BarArrays(p.ts, 1.0 / p.open, 1.0 / p.low, 1.0 / p.high, 1.0 / p.close, p.volume) for p in pieces]
        top_ratio, bottom_ratio = 1 / 1.05, 1 / 2.0
    else:
        top_ratio, bottom_ratio = 0.95, 0.5
    total, fills = 0.0, 0
    cpu_started = time.process_time()
    for p in pieces:
        started = time.perf_counter()
        f, _, _ = grid_loop(p.ts, p.high, p.low, p.close, 30 * 86_400_000, 3_600_000, top_ratio, bottom_ratio, 0.002, 0.002)
        total += time.perf_counter() - started
        fills += f
    run_numba.cpu = time.process_time() - cpu_started
    return total, fills


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", type=int, default=3_000_000)
    parser.add_argument("--event-bars", type=int, default=60_000, help="bars of the event-path slice (0: skip it)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="compiled path and numba loop: best of this many runs (bursts from other processes)"
    )
    parser.add_argument("--sides", default="long", help="comma-separated strategy.side values to time (long, short, both)")
    parser.add_argument("settings", nargs="*")
    args = parser.parse_args()
    # A fresh QUANT_HOME: no embedded store, so the sim's funding lookup (broker.funding=auto)
    # falls back to the constant broker.funding_rate at once instead of opening chDB for every
    # stretch (~0.3 s each); the bars come from the parquet file, not from a store.
    os.environ["QUANT_HOME"] = tempfile.mkdtemp(prefix="bench-maker-vol-")
    plugins = load_plugins(env={})
    pieces = real_pieces(read_bars_file(DATA))
    started = time.perf_counter()
    run_maker_vol([pieces[0][:3000]], plugins, args.settings)  # numba compile or cache load, imports
    warm = time.perf_counter() - started
    print(f"warm-up (numba compile or on-disk cache load, imports): {warm:.1f} s")
    rows = [("real 1m stretches (binance_btcusdt_1m.parquet)", pieces)]
    if args.bootstrap:
        rows.append(
            (f"{args.bootstrap:,} bars BLOCK-BOOTSTRAPPED from the real 1m bars (not a real history)", [bootstrap(pieces, args.bootstrap)])
        )
    print(
        "| series | side | bars | fills | maker_vol (compiled path, as quant run) | of which the compiled loop | numba grid loop | end to end / numba loop | compiled loop / numba loop | CPU, end to end: maker_vol / numba loop |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, series in rows:
        for side in args.sides.split(","):
            # side=both runs compiled in hedge mode (each grid on its own position)
            settings = [f"strategy.side={side}", *(["broker.position_mode=hedge"] if side == "both" else []), *args.settings]
            run_maker_vol([pieces[0][:3000]], plugins, settings)  # this side's warm-up
            runs = []
            for _ in range(args.repeat):
                runs.append((*run_maker_vol(series, plugins, settings)[:4], run_maker_vol.cpu))
            t_fast, t_kernel, fills, bars, c_fast = min(runs, key=lambda r: r[0])
            c_fast = min(r[4] for r in runs)
            numba_runs = []
            for _ in range(args.repeat):
                numba_runs.append((run_numba(series, side)[0], run_numba.cpu))
            t_numba = min(r[0] for r in numba_runs)
            c_numba = min(r[1] for r in numba_runs)
            print(
                f"| {name} | {side} | {bars:,} | {fills:,} | {t_fast:.2f} s | {t_kernel:.2f} s | {t_numba:.2f} s | {t_fast / t_numba:.1f}x | {t_kernel / t_numba:.1f}x "
                f"| {c_fast:.2f} s / {c_numba:.2f} s = {c_fast / c_numba:.1f}x |",
                flush=True,
            )
    if args.event_bars:
        start = next(k for k, p in enumerate(pieces) if p.ts[0] >= 1_616_727_600_000)  # 2021-03-26 03:00 UTC
        joined, need = [], args.event_bars
        for piece in pieces[start:]:
            if need <= 0:
                break
            joined.append(piece[:need])
            need -= len(joined[-1])
        # the event path's own compiled rules (maker_vol_grid, OrderSync's plan, the venue core as the
        # sim broker calls it): compiled or loaded from the cache here, not inside the timed run
        run_maker_vol([joined[0][:3000]], plugins, args.settings, event=True)
        t_event, _, fills, bars, event_frames = run_maker_vol(joined, plugins, args.settings, event=True)
        t_fast, _, _, _, fast_frames = run_maker_vol(joined, plugins, args.settings)
        t_numba, _ = run_numba(joined)
        same = all(a.equals(b) for a, b in zip(event_frames, fast_frames))
        print()
        print(
            "| real slice (from 2021-03-26) | bars | fills | event path | compiled path | numba grid loop | event / compiled | same fills |"
        )
        print("|---|---|---|---|---|---|---|---|")
        print(
            f"| {len(joined)} stretch(es) | {bars:,} | {fills:,} | {t_event:.1f} s | {t_fast:.2f} s | {t_numba:.2f} s | {t_event / t_fast:.0f}x | {'yes' if same else 'NO'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

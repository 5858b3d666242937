"""Backtester speed: the native sim vs Backtrader vs a hand-written numba loop, in one run.

    /work/venvs/backtest/bin/python bench/bench_backtest.py [--data PATH] [--bt-bars N] [--boot-bars N]

Workloads, on the same bars for every engine:

* ``sma_cross`` (10/30, market orders at the next open, taker fee): native sim vs Backtrader; the
  two must give identical fills (checked here on the Backtrader slice). sma_cross is a
  ``SignalStrategy``, which the sim runs in its compiled signal loop as ``quant run`` does; the
  event path is timed too and must give the same fills and equity.
* a limit-order grid: buy levels every 0.5 % below the first price (40 levels), each filled buy
  gets a take-profit sell +0.5 % above it, a filled take-profit re-arms its buy; maker fee, fill
  model ``touch`` (Backtrader's limit semantics). Native sim vs Backtrader vs a plain numba loop
  of the same grid over the same intrabar path. The native grid is written with the SDK's order
  pairs (``PairGrid``, which the sim runs in its compiled pair loop, as ``quant run`` does); the
  same grid written as a plain ``Strategy`` with ``on_fill`` (the event path) is timed too and must
  give identical fills and equity in every stretch. Take-profit prices are rounded up to the tick in all
  three, as ``ctx.sell`` rounds them (the numba loop once used the unrounded price and so made 4
  more fills in 10,939 than the sim: sells whose unrounded price the high touched but whose tick
  price it did not).

Data: every contiguous stretch of the real Binance spot 1m file (a run never spans a gap), and
for scale a block-bootstrapped series of real 1m bars (whole bars' open/high/low/close relative
to the previous close, in blocks of one day, chained) -- labelled as such. Backtrader runs at
~10k bars/s, so it is measured on a slice (``--bt-bars``) and compared in bars per second.
Peak memory of a native run on the bootstrapped series is measured in a child process.
Native and numba timings are the best of ``--repeat`` runs (default 5); Backtrader runs once
(30-60 s a run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import backtrader as bt
import numpy as np
from numba import njit

from btc_quant.core.data import BarArrays, read_bars_file
from btc_quant.core.instruments import instrument_for
from btc_quant.core.plugins import load_plugins
from btc_quant.plugins.brokers.backtrader_broker import run_backtrader
from btc_quant.plugins.strategies.sma_cross import SmaCross
from btc_quant.sdk import OrderPair, PairGrid, Strategy
from btc_quant.sdk.testing import run_strategy

DATA = Path("/work/shared/data/binance_btcusdt_1m.parquet")
STEP = 0.005
LEVELS = 40
QTY = 0.01
PERP = instrument_for("binanceusdm", "BTC/USDT:USDT")


# --- the grid, three ways ---------------------------------------------------------------------
def grid_levels(first_price: float, step: float, count: int) -> np.ndarray:
    """Buy levels step, 2 step, ... below the first price, rounded to the perpetual's 0.1 tick."""
    return np.floor(first_price * (1 - step) ** np.arange(1, count + 1) * 10) / 10


def take_profits(levels: np.ndarray, step: float) -> np.ndarray:
    """Each level's take-profit ``step`` above it, rounded up to the 0.1 tick as ``ctx.sell`` does
    (an exchange takes tick prices only; the three engines must trade the same prices)."""
    return np.ceil(levels * (1 + step) * 10 - 1e-9) / 10


class Grid(Strategy):
    """Static long grid: buy levels every STEP below the first price, take-profit one STEP up."""

    needs_every_bar = False
    name = "bench_grid"

    def wake_bars(self, bars):
        return np.zeros(len(bars), dtype=bool)

    def on_start(self, ctx):
        self.levels = grid_levels(ctx.price, STEP, LEVELS)
        self.tps = take_profits(self.levels, STEP)
        for k, price in enumerate(self.levels):
            ctx.buy(QTY, price, post_only=True, tag=f"b{k}")

    def on_fill(self, ctx, fill):
        k = int(fill.tag[1:])
        if fill.tag[0] == "b":
            ctx.sell(QTY, self.tps[k], post_only=True, tag=f"s{k}")
        else:
            ctx.buy(QTY, self.levels[k], post_only=True, tag=f"b{k}")


class PairsGrid(PairGrid):
    """The same grid through the SDK's order pairs (``btc_quant.sdk.PairGrid``): a backtest on the
    sim runs it in the compiled pair loop (``plugins/brokers/sim_pairs.py``) when it applies."""

    name = "bench_pairs_grid"

    def pairs(self, ctx):
        levels = grid_levels(ctx.price, STEP, LEVELS)
        return [OrderPair("buy", QTY, price, tp, tag=f"g{k}") for k, (price, tp) in enumerate(zip(levels, take_profits(levels, STEP)))]


class BtGrid(bt.Strategy):
    def start(self):
        self.levels = None
        self.tags = {}
        self.fills = 0

    def next(self):
        if self.levels is None:
            self.levels = grid_levels(self.data.open[0], STEP, LEVELS)
            for k, price in enumerate(self.levels):
                self.tags[self.buy(size=QTY, price=price, exectype=bt.Order.Limit).ref] = ("b", k)

    def notify_order(self, order):
        if order.status != order.Completed:
            return
        self.fills += 1
        kind, k = self.tags.pop(order.ref)
        if kind == "b":
            self.tags[self.sell(size=QTY, price=take_profits(self.levels, STEP)[k], exectype=bt.Order.Limit).ref] = ("s", k)
        else:
            self.tags[self.buy(size=QTY, price=self.levels[k], exectype=bt.Order.Limit).ref] = ("b", k)


@njit(cache=True)
def numba_grid(o, h, l, c, levels, tps, qty, fee_rate):  # pragma: no cover - compiled
    """The same grid over the same path (prev close -> open -> nearer extreme -> other -> close),
    touch semantics; returns (fills, final equity)."""
    n = len(o)
    holding = np.zeros(len(levels), dtype=np.bool_)
    cash = 10_000.0
    pos = 0.0
    fills = 0
    prev = o[0]
    path = np.empty(5)
    for i in range(n):
        low_first = c[i] >= o[i]
        if o[i] - l[i] != h[i] - o[i]:
            low_first = (o[i] - l[i]) < (h[i] - o[i])
        path[0] = prev
        path[1] = o[i]
        path[2] = l[i] if low_first else h[i]
        path[3] = h[i] if low_first else l[i]
        path[4] = c[i]
        for s in range(4):
            a = path[s]
            b = path[s + 1]
            if b < a:  # falling: buys from the highest level down
                for k in range(len(levels)):
                    p = levels[k]
                    if not holding[k] and b <= p and p <= a:
                        px = min(max(p, l[i]), h[i])
                        holding[k] = True
                        pos += qty
                        cash -= qty * px * (1 + fee_rate)
                        fills += 1
            elif b > a:  # rising: take-profits from the lowest up
                for k in range(len(levels) - 1, -1, -1):
                    p = tps[k]
                    if holding[k] and a <= p and p <= b:
                        px = min(max(p, l[i]), h[i])
                        holding[k] = False
                        pos -= qty
                        cash += qty * px * (1 - fee_rate)
                        fills += 1
        prev = c[i]
    return fills, cash + pos * c[n - 1]


# --- data ------------------------------------------------------------------------------------------
def stretches(bars: BarArrays, min_len: int = 1000) -> list[BarArrays]:
    pieces = bars.stretches(60_000)
    return [bars[a:b] for a, b in pieces if b - a >= min_len]


def bootstrap(pieces: list[BarArrays], n: int, seed: int = 1, block: int = 1440) -> BarArrays:
    """Block bootstrap of real 1m bars: each bar's OHLC relative to the previous close, blocks of a day."""
    rel = []
    for p in pieces:
        prev = np.r_[p.open[0], p.close[:-1]]
        rel.append(np.stack([p.open / prev, p.high / prev, p.low / prev, p.close / prev], axis=1)[1:])
    rel = np.concatenate(rel)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(rel) - block, size=n // block + 1)
    sample = np.concatenate([rel[s : s + block] for s in starts])[:n]
    close = 30_000.0 * np.cumprod(sample[:, 3])
    prev = np.r_[30_000.0, close[:-1]]
    ts = 1_600_000_000_000 + 60_000 * np.arange(n, dtype=np.int64)
    return BarArrays(ts, prev * sample[:, 0], prev * sample[:, 1], prev * sample[:, 2], close, np.ones(n))


# --- runners ---------------------------------------------------------------------------------------
PLUGINS = None


def native(strategy, bars: BarArrays, *settings: str, event_path: bool = False):
    """(seconds, RunResult) of a sim run as `quant run` runs it (a strategy's compiled backtest when
    it has one that applies); ``event_path=True``: the engine's event path always."""
    global PLUGINS
    PLUGINS = PLUGINS or load_plugins()
    started = time.perf_counter()
    result = run_strategy(
        strategy, bars, "broker.funding=off", "instrument.min_notional=0", *settings, plugins=PLUGINS, compiled=not event_path
    )
    return time.perf_counter() - started, result


def backtrader_grid(bars: BarArrays):
    import pandas as pd

    frame = bars.to_frame()
    frame.index = pd.to_datetime(frame["ts"], unit="ms")
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame[["open", "high", "low", "close", "volume"]], openinterest=None))
    cerebro.addstrategy(BtGrid)
    cerebro.broker.setcash(10_000.0)
    cerebro.broker.set_checksubmit(False)
    cerebro.broker.addcommissioninfo(
        bt.CommInfoBase(commission=PERP.maker_fee, commtype=bt.CommInfoBase.COMM_PERC, percabs=True, stocklike=True)
    )
    started = time.perf_counter()
    strat = cerebro.run()[0]
    return time.perf_counter() - started, strat.fills, cerebro.broker.getvalue()


def numba_run(bars: BarArrays):
    levels = grid_levels(float(bars.open[0]), STEP, LEVELS)
    tps = take_profits(levels, STEP)
    numba_grid(bars.open[:10], bars.high[:10], bars.low[:10], bars.close[:10], levels, tps, QTY, PERP.maker_fee)  # compile
    started = time.perf_counter()
    fills, equity = numba_grid(bars.open, bars.high, bars.low, bars.close, levels, tps, QTY, PERP.maker_fee)
    return time.perf_counter() - started, int(fills), float(equity)


def memory_child(n: int, data: Path) -> dict:
    """Peak RSS of a native sma_cross and grid run on ``n`` bootstrapped bars, in a fresh process."""
    code = f"""
import resource, sys, json
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_backtest import bootstrap, stretches, native, Grid, PairsGrid
from btc_quant.core.data import read_bars_file
from btc_quant.plugins.strategies.sma_cross import SmaCross
bars = bootstrap(stretches(read_bars_file({str(data)!r})), {n})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t1, r1 = native("sma_cross", bars, "instrument.taker_fee=0")  # with fees sma_cross runs out of money long before 3M bars
t0, r0 = native("sma_cross", bars, "instrument.taker_fee=0", event_path=True)
t2, r2 = native(Grid, bars, "broker.fill_model=touch")
t3, r3 = native(PairsGrid, bars, "broker.fill_model=touch")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(bars=len(bars), rss_after_load_mb=base / 1024, peak_rss_mb=peak / 1024, sma_s=t1, sma_event_s=t0, grid_s=t2, sma_fills=len(r1.fills), grid_fills=len(r2.fills), pairs_s=t3, pairs_fills=len(r3.fills))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--bt-bars", type=int, default=100_000, help="bars of the Backtrader slice")
    parser.add_argument("--boot-bars", type=int, default=3_000_000, help="bars of the bootstrapped series")
    parser.add_argument("--repeat", type=int, default=5, help="native and numba timings: best of this many runs (Backtrader: one run)")
    args = parser.parse_args()

    def best(run, *a):
        """(best time of args.repeat runs, result of the last): sub-second timings on a shared
        machine are hit by other processes' bursts; the minimum is the run they left alone."""
        times = []
        for _ in range(args.repeat):
            t, *rest = run(*a)
            times.append(t)
        return (min(times), *rest)

    pieces = stretches(read_bars_file(args.data))
    total = sum(len(p) for p in pieces)
    print(f"real data: {args.data.name}, {len(pieces)} stretches, {total:,} bars")

    # sma_cross: native (a SignalStrategy: compiled signal loop, as quant run runs it; and the event
    # path) over every stretch; Backtrader on the slice; identical fills on the slice
    native("sma_cross", pieces[0][:2000])  # warm-up (numba cache, imports)
    native("sma_cross", pieces[0][:2000], event_path=True)
    t_sma = sum(native("sma_cross", p)[0] for p in pieces)
    t_sma_event = sum(native("sma_cross", p, event_path=True)[0] for p in pieces)  # ~7-10 s: one pass
    slice_ = pieces[-3][: args.bt_bars] if len(pieces[-3]) >= args.bt_bars else max(pieces, key=len)[: args.bt_bars]
    t_sma_slice, r_sma = best(native, "sma_cross", slice_)
    t_sma_event_slice, r_sma_event = best(lambda *a: native(*a, event_path=True), "sma_cross", slice_)
    started = time.perf_counter()
    r_bt = run_backtrader(SmaCross(), slice_, PERP)
    t_bt_sma = time.perf_counter() - started
    same = (
        len(r_sma.fills) == len(r_bt.fills)
        and np.allclose(r_sma.fills.price, r_bt.fills.price)
        and (r_sma.fills.bar.to_numpy() == r_bt.fills.bar.to_numpy()).all()
    )
    cols = ["ts", "side", "price", "quantity", "fee", "bar"]
    same_event = r_sma.fills[cols].equals(r_sma_event.fills[cols]) and r_sma.equity.equals(r_sma_event.equity)
    print(
        f"sma_cross native (compiled signal loop: {bool(r_sma.compiled)}): {total:,} bars in {t_sma:.2f} s = {total / t_sma:,.0f} bars/s; "
        f"event path {t_sma_event:.2f} s"
    )
    print(
        f"sma_cross slice {len(slice_):,} bars: native {t_sma_slice:.4f} s, backtrader {t_bt_sma:.2f} s -> {t_bt_sma / t_sma_slice:.0f}x; "
        f"identical fills: {same} ({len(r_sma.fills)} fills); event path {t_sma_event_slice:.3f} s -> {t_bt_sma / t_sma_event_slice:.0f}x, "
        f"identical fills and equity to the compiled run: {same_event}"
    )

    # grid: native (the SDK's PairGrid: compiled pair loop; and the same grid on the event path),
    # numba loop over every stretch; Backtrader on the slice
    touch = "broker.fill_model=touch"
    native(PairsGrid, pieces[0][:2000], touch)
    native(Grid, pieces[0][:2000], touch)
    t_grid = t_event = t_nb = np.inf
    for _ in range(args.repeat):  # best of the whole pass over the stretches, for each
        passes = [native(PairsGrid, p, touch) for p in pieces]
        t_grid = min(t_grid, sum(t for t, _ in passes))
        pairs_runs = [r for _, r in passes]
        passes = [native(Grid, p, touch) for p in pieces]
        t_event = min(t_event, sum(t for t, _ in passes))
        event_runs = [r for _, r in passes]
        passes = [numba_run(p) for p in pieces]
        t_nb = min(t_nb, sum(t for t, _, _ in passes))
        fills_nb = sum(f for _, f, _ in passes)
    fills_grid = sum(len(r.fills) for r in pairs_runs)
    compiled = all(r.compiled for r in pairs_runs)
    cols = ["ts", "side", "price", "quantity", "fee", "bar"]
    same_event = all(a.fills[cols].equals(b.fills[cols]) and a.equity.equals(b.equity) for a, b in zip(pairs_runs, event_runs))
    t_grid_slice, r_grid = best(native, PairsGrid, slice_, touch)
    t_event_slice, _ = best(native, Grid, slice_, touch)
    t_bt_grid, bt_fills, _ = backtrader_grid(slice_)
    t_nb_slice, nb_fills, _ = best(numba_run, slice_)
    print(
        f"grid native (sdk PairGrid, compiled pair loop: {compiled}): {total:,} bars in {t_grid:.3f} s = {total / t_grid:,.0f} bars/s, {fills_grid:,} fills; "
        f"numba loop {t_nb:.3f} s, {fills_nb:,} fills -> native/numba {t_grid / t_nb:.1f}x; same fill count: {fills_grid == fills_nb}"
    )
    print(
        f"grid on the event path (Strategy with on_fill, as before): {t_event:.2f} s -> {t_event / t_nb:.1f}x numba; "
        f"fills and equity identical to the PairGrid run in every stretch: {same_event}"
    )
    print(
        f"grid slice {len(slice_):,} bars: native {t_grid_slice:.4f} s ({len(r_grid.fills)} fills; event path {t_event_slice:.3f} s), "
        f"backtrader {t_bt_grid:.2f} s ({bt_fills} fills) -> {t_bt_grid / t_grid_slice:.0f}x, numba {t_nb_slice:.4f} s ({nb_fills} fills)"
    )

    mem = memory_child(args.boot_bars, args.data)
    print(
        f"bootstrapped {mem['bars']:,} bars (block bootstrap of the real 1m bars, not market data): "
        f"sma_cross {mem['sma_s']:.2f} s ({mem['sma_fills']} fills; event path {mem['sma_event_s']:.2f} s), grid event path {mem['grid_s']:.2f} s ({mem['grid_fills']} fills), "
        f"grid PairGrid {mem['pairs_s']:.2f} s ({mem['pairs_fills']} fills); "
        f"peak RSS {mem['peak_rss_mb']:.0f} MB (after loading bars {mem['rss_after_load_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    main()

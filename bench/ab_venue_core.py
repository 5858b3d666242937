"""CPU-time A/B of the sim's compiled loops and the numba grid loop, for comparing two checkouts in
one session (run it alternately under each; see bench/RESULTS.md, "One venue core"):

    cd bench && python ab_venue_core.py LABEL

Best of 4 passes of process CPU time over every real stretch of the Binance 1m file: the grid as
an SDK PairGrid (compiled pair loop), the bench's hand-written numba grid loop, and sma_cross
(compiled signal loop). CPU time, not wall time: on a shared machine wall time mostly measures the
other jobs.
"""

import sys
import time

sys.path.insert(0, ".")
import bench_backtest as bb

from btc_quant.core.data import read_bars_file

pieces = bb.stretches(read_bars_file(bb.DATA))
touch = "broker.fill_model=touch"
bb.native(bb.PairsGrid, pieces[0][:2000], touch)
bb.numba_run(pieces[0][:2000])
bb.native("sma_cross", pieces[0][:2000])
res = {"grid": 9e9, "numba": 9e9, "sma": 9e9}
for _rep in range(4):
    t = time.process_time()
    [bb.native(bb.PairsGrid, p, touch) for p in pieces]
    res["grid"] = min(res["grid"], time.process_time() - t)
    t = time.process_time()
    [bb.numba_run(p) for p in pieces]
    res["numba"] = min(res["numba"], time.process_time() - t)
    t = time.process_time()
    [bb.native("sma_cross", p) for p in pieces]
    res["sma"] = min(res["sma"], time.process_time() - t)
print(
    sys.argv[1],
    "CPU s (best of 4):",
    {k: round(v, 3) for k, v in res.items()},
    "grid/numba",
    round(res["grid"] / res["numba"], 2),
    flush=True,
)

"""The seeded fault sweep: >= 1,000 seeds of mixed faults and SIGKILLs, each checked against the
exchange's books (see :mod:`btc_quant.testing.live_sweep` for what a seed does and checks).

The seeds are split between ``BTCQ_SWEEP_WORKERS`` processes (default 2, one per core: a sweep
process is one Python thread for the bots plus the exchange's, so one core at most), each with its
own local exchange. ``BTCQ_SWEEP_SEEDS=N`` and ``BTCQ_SWEEP_FIRST=K`` run another range; a failing
seed replays alone with ``python -m btc_quant.testing.live_sweep --seed N``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

SEEDS = int(os.environ.get("BTCQ_SWEEP_SEEDS", "1000"))
FIRST = int(os.environ.get("BTCQ_SWEEP_FIRST", "0"))
WORKERS = int(os.environ.get("BTCQ_SWEEP_WORKERS", "2"))
#: every fault class of issue 16 the sweep must have injected (and the bot survived)
CLASSES = ("late_executed", "late_refused", "recv_window", "clock_skew", "silent", "accepted_timeout", "accepted_error")


def test_seeded_fault_sweep(tmp_path):
    t0 = time.monotonic()
    share = -(-SEEDS // WORKERS)
    procs = []
    for k in range(WORKERS):
        first, count = FIRST + k * share, min(share, SEEDS - k * share)
        if count <= 0:
            continue
        home = tmp_path / f"w{k}"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "btc_quant.testing.live_sweep",
                    "--first",
                    str(first),
                    "--seeds",
                    str(count),
                    "--concurrency",
                    os.environ.get("BTCQ_SWEEP_CONCURRENCY", "100"),
                    "--home",
                    str(home),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs, failures = [], []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=1800)
        lines = stdout.strip().splitlines()
        assert lines, f"sweep worker died ({proc.returncode}):\n{stderr[-3000:]}"
        outs.append(json.loads(lines[-1]))
        failures += [line for line in stderr.splitlines() if line.startswith("seed ")]
    faults = Counter()
    for out in outs:
        faults.update(out["faults"])
    total = {key: sum(out[key] for out in outs) for key in ("seeds", "killed", "restarts", "orders", "fills")}
    print(
        f"\nsweep of seeds {FIRST}..{FIRST + SEEDS - 1} in {len(outs)} processes ({time.monotonic() - t0:.0f} s): {total}; "
        f"faults {dict(sorted(faults.items()))}, total {sum(faults.values())}"
    )
    assert not failures, f"{len(failures)} seeds failed (replay one with --seed N):\n" + "\n".join(failures[:10])
    assert total["seeds"] == SEEDS
    if SEEDS >= 1000:
        assert total["killed"] >= SEEDS // 5, total
        assert all(faults.get(kind, 0) > 0 for kind in CLASSES), faults

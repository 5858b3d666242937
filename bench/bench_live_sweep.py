"""Live-broker fault sweep (issue 16): many seeded bot lives against the local exchange.

    python bench/bench_live_sweep.py --seeds 10000            # the long sweep; figures for RESULTS.md
    python bench/bench_live_sweep.py --seed 4711              # replay one seed alone

A thin wrapper of ``python -m btc_quant.testing.live_sweep`` (see that module for what one seed
does and checks). It prints one JSON line: seeds run, seeds failed, lives killed, restarts,
orders, fills, and the faults injected per class (``late_execution`` requests that were then
``late_executed`` within their recvWindow or ``late_refused`` after it, ``recv_window`` rejects,
``clock_skew`` jumps, ``silent``/``drop``/``ws_delay`` websocket faults, 5xx, executed-but-
unanswered, timeouts, 429) and the seconds it took. Exit code 1 if any seed failed.
"""

from __future__ import annotations

import sys

from btc_quant.testing.live_sweep import main

if __name__ == "__main__":
    sys.exit(main())

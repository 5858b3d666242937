"""Where a cold start's compile time goes: every numba compilation of one CLI command, timed.

    NUMBA_CACHE_DIR=$(mktemp -d) python bench/compile_profile.py run strategy=maker_vol broker=sim
    NUMBA_CACHE_DIR=$(mktemp -d) python bench/compile_profile.py --numba-njit run strategy=maker_vol broker=sim

Runs ``quant ARGS...`` in this process with a listener on numba's ``numba:compile`` events and
prints, on stderr, the command's wall and CPU time, the top-level compilations, and per function
how many times it was compiled (one per signature) and its exclusive time (its own compilation
without the callees compiled inside it; wall seconds). ``--numba-njit`` makes btc-quant's compiled
modules use numba's own ``njit`` instead of :func:`btc_quant.core.compiled.njit` (one
specialisation per literal constant and omitted default): the figures before that change. Point
``NUMBA_CACHE_DIR`` at an empty folder, or nothing is compiled.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

from numba.core import event


class CompileTimes(event.Listener):
    def __init__(self) -> None:
        self.stack: list[list] = []
        self.done: list[tuple[int, str, float, float]] = []  # depth, function, inclusive s, exclusive s

    def on_start(self, ev) -> None:
        self.stack.append([time.perf_counter(), ev.data["dispatcher"], 0.0])

    def on_end(self, ev) -> None:
        started, dispatcher, children = self.stack.pop()
        took = time.perf_counter() - started
        if self.stack:
            self.stack[-1][2] += took
        func = dispatcher.py_func
        self.done.append((len(self.stack), f"{func.__module__.rsplit('.', 1)[-1]}.{func.__qualname__}", took, took - children))


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--numba-njit"]:
        args = args[1:]
        import numba

        import btc_quant.core.compiled as compiled

        compiled.njit = numba.njit  # before the compiled modules are imported
    times = CompileTimes()
    event.register("numba:compile", times)
    from btc_quant.core.cli import main as quant

    started, cpu = time.perf_counter(), time.process_time()
    code = quant(args)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    per: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for _, name, _, exclusive in times.done:
        per[name][0] += 1
        per[name][1] += exclusive
    out = sys.stderr
    print(f"quant {' '.join(args)}: exit {code}, {wall:.1f} s wall, {cpu:.1f} s CPU", file=out)
    print("top-level compilations: " + ", ".join(f"{n} {t:.1f} s" for d, n, t, _ in times.done if d == 0), file=out)
    total = sum(v[1] for v in per.values())
    print(f"{len(times.done)} compilations of {len(per)} functions, {total:.1f} s wall in all", file=out)
    for name, (count, exclusive) in sorted(per.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"  {count:3d} x {exclusive:6.2f} s  {100 * exclusive / total:4.1f} %  {name}", file=out)


if __name__ == "__main__":
    main()

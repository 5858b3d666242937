"""A new user's first minutes, timed: the first `quant run strategy=maker_vol broker=sim` after an
install (whose build step compiled the kernels: setup.py, core/precompile.py), the next one, the
same run with an empty numba cache (what the first run costs without that step), and how long
`quant --help` and `quant plugins` take to start (they read the plugin listing the install's build
step wrote; without it, as in a home where it is missing, the call loads every plugin and writes it).

    python bench/bench_start.py                 # with the quant of this checkout's .venv
    python bench/bench_start.py --fresh         # clone this checkout into a temp dir, make a venv
                                                # with the README's command, and time that one

Each figure is wall time and CPU time (user+sys of the command and its children): on a shared
machine the CPU time is the one to compare. NUMBA_CACHE_DIR points at an empty folder before the
install (with --fresh), as on a fresh machine; without --fresh the checkout's venv is used as it is
and the "first run" row is only a first run if its cache is empty.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, cpu, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="clone this checkout and install it in a new venv first")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_start_"))
    repo = REPO
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUANT_", "NUMBA_", "BTC_QUANT_"))}
    env.update(QUANT_HOME=str(work / "home"), NUMBA_CACHE_DIR=str(work / "numba_cache"))
    if args.fresh:
        repo = work / "btc-quant"
        subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True)
        wall, cpu, proc = timed(["sh", "-c", "python3 -m venv .venv && .venv/bin/pip install -v -e '.[dev]'"], env, repo)
        print(f"{'install (README command, pip -v)':38s}{wall:8.2f}{cpu:8.2f}")
        for line in proc.stdout.splitlines() + proc.stderr.splitlines():
            if line.strip().startswith("btc-quant:"):
                print(f"{'':4s}| {line.strip()}")
    quant = str(repo / ".venv" / "bin" / "quant")
    rows = [
        # --fresh: the install's build step wrote the plugin listing; else the first call loads every plugin
        ("quant --help (first call)", [quant, "--help"]),
        ("quant --help (no listing: loads plugins)", [quant, "--help"], {"QUANT_HOME": str(work / "home_without_listing")}),
        ("quant --help (plugin cache)", [quant, "--help"]),
        ("quant plugins (plugin cache)", [quant, "plugins"]),
        ("quant run maker_vol sim (first run)", [quant, "run", "strategy=maker_vol", "broker=sim"]),
        ("quant run maker_vol sim (second run)", [quant, "run", "strategy=maker_vol", "broker=sim"]),
        ("quant --help (after a run)", [quant, "--help"]),
        ("maker_vol run, empty numba cache", [quant, "run", "strategy=maker_vol", "broker=sim"], {"NUMBA_CACHE_DIR": str(work / "empty")}),
    ]
    print(f"{'':38s}{'wall s':>8s}{'cpu s':>8s}")
    for label, cmd, *extra in rows:
        wall, cpu, proc = timed(cmd, {**env, **(extra[0] if extra else {})}, work)
        print(f"{label:38s}{wall:8.2f}{cpu:8.2f}")
        for line in proc.stderr.splitlines():
            if "compil" in line:
                print(f"{'':4s}| {line}")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()

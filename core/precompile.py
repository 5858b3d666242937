"""Compiling the backtest kernels before the first run: the last step of ``pip install -e .``.

numba compiles a kernel the first time it is called and caches the machine code for this machine
(:mod:`btc_quant.core.compiled_cache`). The main command's kernels take ~19 s of CPU to compile
(``bench/RESULTS.md``, "First hour"), which the first ``quant run strategy=maker_vol broker=sim``
would otherwise spend. An editable install runs this module at the end of its build step
(``setup.py``), so that run loads them from the cache instead. It runs the same backtests the
command runs (:data:`RUNS`, through :func:`btc_quant.core.run.backtest` on the bundled sample), so
exactly the specialisations the command needs are compiled, whatever the kernels' code looks like.

    python -m btc_quant.core.precompile         # again by hand, e.g. for another NUMBA_CACHE_DIR
    python -m btc_quant.core.precompile --all   # also sma_cross's and grid's loops (the test suite does this)

A failure here never fails the install (it is one warning line): the first run then compiles, and says so.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping

#: The runs whose kernels are compiled ahead: the README's main command.
RUNS: tuple[tuple[str, ...], ...] = (("strategy=maker_vol", "broker=sim"),)
#: The plugins those runs need (entry-point names).
PLUGINS = ("sim", "maker_vol")
#: ``--all``: every shipped strategy's compiled loop on ``sim``.
ALL_RUNS = (*RUNS, ("strategy=sma_cross", "broker=sim"), ("strategy=grid", "broker=sim"))
ALL_PLUGINS = (*PLUGINS, "sma_cross", "grid")


def precompile(plugins, runs: Iterable[Iterable[str]] = RUNS) -> tuple[int, float]:
    """Run ``runs`` with ``plugins`` in a scratch ``QUANT_HOME``; return (functions compiled, seconds)."""
    from numba.core import event

    from .run import backtest

    class Count(event.Listener):
        def __init__(self) -> None:
            self.compiled = 0

        def on_start(self, ev) -> None:
            self.compiled += 1

        def on_end(self, ev) -> None:
            pass

    count = Count()
    started = time.monotonic()
    old_home = os.environ.get("QUANT_HOME")
    with tempfile.TemporaryDirectory(prefix="btc_quant_precompile_") as home, event.install_listener("numba:compile", count):
        os.environ["QUANT_HOME"] = home  # nothing of these runs is kept
        try:
            for settings in runs:
                backtest(list(settings), plugins=plugins)
        finally:
            if old_home is None:
                os.environ.pop("QUANT_HOME", None)
            else:
                os.environ["QUANT_HOME"] = old_home
    return count.compiled, time.monotonic() - started


def main(modules: Mapping[str, str] | None = None, argv: list[str] | None = None) -> int:
    """Compile :data:`RUNS`' kernels (``--all``: :data:`ALL_RUNS`'). ``modules`` maps plugin names
    to module names for a build step, where the plugins' entry points are not installed yet; else
    the installed ones load."""
    from importlib import import_module

    from .plugins import load_plugins

    every = "--all" in (sys.argv[1:] if argv is None else argv)
    runs, names = (ALL_RUNS, ALL_PLUGINS) if every else (RUNS, PLUGINS)
    try:
        if modules is None:
            plugins = load_plugins(env={"QUANT_LOAD_PLUGINS": ",".join(names)})
        else:
            plugins = load_plugins(env={"QUANT_LOAD_PLUGINS": ""}, extra={name: import_module(modules[name]) for name in names})
        compiled, seconds = precompile(plugins, runs)
    except Exception as exc:  # one line, exit 1; the install goes on and the first run compiles, and says so
        print(
            f"btc-quant: the backtest kernels were not compiled ahead ({type(exc).__name__}: {exc}); the first run compiles them",
            file=sys.stderr,
        )
        return 1
    where = os.environ.get("NUMBA_CACHE_DIR", "numba's cache")
    what = "the shipped strategies' backtests" if every else "the main command's backtest"
    print(f"btc-quant: compiled {compiled} function(s) of {what} in {seconds:.1f} s into {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

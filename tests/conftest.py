"""Shared fixtures: an isolated QUANT_HOME, the loaded plugins, the bundled real bars, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.core.plugins import load_plugins

REPO = Path(__file__).resolve().parents[1]
#: The shared real data (../shared/data next to the checkout; BTC_QUANT_SHARED_DATA overrides it).
SHARED_DATA = Path(os.environ.get("BTC_QUANT_SHARED_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """Every test gets its own QUANT_HOME and no stray QUANT_* settings from the machine."""
    for name in list(os.environ):
        if name.startswith("QUANT_"):
            monkeypatch.delenv(name)
    home = tmp_path_factory.mktemp("quant_home")
    monkeypatch.setenv("QUANT_HOME", str(home))
    return home


#: Answers ``quant --help`` and ``quant plugins --json`` in one process and prints which heavy
#: libraries that imported (``HEAVY []`` when the plugin listing came from the plugin cache).
HELP_PROBE = (
    "import sys\n"
    "from btc_quant.core.cli import main\n"
    "for argv in (['--help'], ['plugins', '--json']):\n"
    "    main(argv)\n"
    "heavy = sorted(m for m in ('numpy', 'pandas', 'numba', 'ccxt', 'plotly', 'backtrader') if m in sys.modules)\n"
    "print('HEAVY', heavy, file=sys.stderr)\n"
)


@pytest.fixture
def plugins():
    """A fresh plugin manager per test: tests register their own strategies into it, and with
    parallel workers the order of tests differs from run to run (cheap: the modules stay imported)."""
    return load_plugins(env={})


@pytest.fixture(scope="session")
def sample_bars():
    """The bundled real sample: BTCUSDT perpetual 1m, January 2022 (45,031 bars)."""
    return read_bars_file(SAMPLE.path)


@pytest.fixture
def quant(tmp_path):
    """Run the real ``quant`` console script in a subprocess; returns CompletedProcess."""

    def run(*args: str, env: dict | None = None, cwd: Path | None = None, check: bool = False):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("QUANT_") or k == "QUANT_HOME"}
        full_env.update(env or {})
        exe = Path(sys.executable).with_name("quant")
        proc = subprocess.run([str(exe), *args], capture_output=True, text=True, env=full_env, cwd=cwd or tmp_path, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"quant {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def make_plugin(**hooks):
    """A plugin object from ``hook_name=function`` pairs (functions take the hook's arguments)."""
    from btc_quant.sdk import hookimpl

    namespace = {name: staticmethod(hookimpl(fn)) for name, fn in hooks.items()}
    return type("FixturePlugin", (), namespace)()


def registering(kind_hook: str, **named):
    """``registering("quant_register_strategies", probe=Probe)`` -> a plugin registering them."""

    def hook(register):
        for name, factory in named.items():
            register(name, factory)

    return make_plugin(**{kind_hook: hook})


#: Modules whose tests run longest (minutes, mostly waiting on subprocesses and servers), longest
#: first (from `pytest --durations=30` on 4 workers, bench/RESULTS.md). The fault sweep leads: it
#: keeps both cores busy for a minute and a half, so started late it is the run's tail.
LONG_FIRST = (
    "test_live_sweep",
    "test_live_soak",
    "test_live_paper",
    "test_data_schedule",
    "test_collect",
    "test_backtrader",
    "test_report_size",
    "test_cold_start",
    "test_data_safety",
    "test_exchange_soak",
    "test_maker_vol_kernel",
)


def _module(item) -> str:
    return item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")


def pytest_configure(config):
    """With several xdist workers, compile the shipped strategies' kernels once, before the workers
    start: each worker would otherwise compile the same kernels side by side whenever numba's
    cache is cold (after any change to compiled code), ~20 s of CPU each. Warm, this loads them
    (a few seconds). ``python -m btc_quant.core.precompile --all``; its failure only costs time."""
    if hasattr(config, "workerinput") or config.getoption("collectonly", False):
        return
    workers = config.getoption("numprocesses", None) if config.pluginmanager.hasplugin("xdist") else None
    if workers in (None, 0, 1) or config.getoption("dist", "no") == "no":
        return
    subprocess.run([sys.executable, "-m", "btc_quant.core.precompile", "--all"], timeout=600, check=False)


def pytest_collection_modifyitems(config, items):
    """Under xdist, deal the long tests out one per worker at the start of each worker's share.

    xdist's worksteal scheduler hands each worker a contiguous share of the collected list (the
    first N/workers tests to the first worker, and so on; idle workers later steal from the end of
    a busy one's share). Left in file order, the long tests would queue up on one or two workers
    and run alone at the end; dealt out like this they overlap with everything else.
    """
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    if workers < 2 or not items:
        return
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    long = sorted((it for it in items if _module(it) in rank), key=lambda it: rank[_module(it)])
    rest = [it for it in items if _module(it) not in rank]
    sizes, remaining = [], len(items)
    for i in range(workers):  # the shares worksteal hands out: len(pending) // workers left
        sizes.append(remaining // (workers - i))
        remaining -= sizes[-1]
    shares: list[list] = [[] for _ in range(workers)]
    for i, item in enumerate(long):
        shares[i % workers].append(item)
    for share, size in zip(shares, sizes):
        while len(share) < size and rest:
            share.append(rest.pop(0))
    items[:] = [it for share in shares for it in share] + rest

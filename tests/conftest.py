"""Shared fixtures: an isolated QUANT_HOME, the loaded plugins, the bundled real bars, the CLI."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.core.plugins import load_plugins

REPO = Path(__file__).resolve().parents[1]
# ``python -m pytest`` run in the checkout puts its root on sys.path; an installed ``quant`` never
# has it. Tests that build the checkout (test_layout's ``pip wheel``) rewrite its
# btc_quant.egg-info, and a metadata lookup scanning the root meanwhile (plugin entry points, a
# command run in process) met it half-written: "No package metadata was found". The installed
# distribution is the venv's.
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != REPO]
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


#: Environment read once, when Python or numba starts: a command run in this process would not see it.
STARTUP_ENV = ("NUMBA_", "PYTHON")


@pytest.fixture
def quant(tmp_path):
    """Run ``quant``; returns a CompletedProcess (args, returncode, stdout, stderr).

    By default in this process: the same ``main`` the console script calls, with the command's
    environment, working directory and file descriptors 1 and 2 (so output from C libraries is
    captured too), all restored afterwards. A fresh Python spends ~1.5 s of CPU importing numpy,
    pandas, numba and chdb before the command starts, and the suite runs the CLI a few hundred
    times. ``process=True`` runs the real console script in a subprocess, for what only a new
    process shows: what it imports at start-up, numba's settings (``NUMBA_*`` are read at import),
    the exit status of an uncaught exception, a store another process holds."""

    def run(*args: str, env: dict | None = None, cwd: Path | None = None, check: bool = False, process: bool = False):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("QUANT_") or k == "QUANT_HOME"}
        full_env.update(env or {})
        if process:
            exe = Path(sys.executable).with_name("quant")
            proc = subprocess.run([str(exe), *args], capture_output=True, text=True, env=full_env, cwd=cwd or tmp_path, timeout=600)
        else:
            at_start = sorted(
                k for k in set(full_env) | set(os.environ) if k.startswith(STARTUP_ENV) and full_env.get(k) != os.environ.get(k)
            )
            if at_start:  # this process started with other values: the command would not see these
                raise ValueError(f"{', '.join(at_start)} take effect when Python starts: quant(..., process=True)")
            proc = _quant_in_process(list(args), full_env, cwd or tmp_path)
        if check and proc.returncode != 0:
            raise AssertionError(f"quant {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def _quant_in_process(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """``quant *args`` through :func:`btc_quant.core.cli.main` here, as the console script would
    run it: ``env`` as the whole environment, ``cwd``, stdout and stderr (Python's and the file
    descriptors') into files; an uncaught exception prints its traceback and exits 1, as Python
    does. The environment, directory, streams, root logger and the secret registry come back after."""
    from btc_quant.core import secrets
    from btc_quant.core.cli import main

    saved_env, saved_cwd, saved_streams = dict(os.environ), os.getcwd(), (sys.stdout, sys.stderr)
    root = logging.getLogger()
    saved_log = (root.handlers[:], root.level)
    saved_secrets = (set(secrets._values), dict(secrets.insecure_files))
    # a new process starts with none: what this process read before (another test's world-readable
    # config, its secrets) must not reach the command
    secrets._values.clear()
    secrets.insecure_files.clear()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        for stream in saved_streams:
            stream.flush()
        saved_fds = (os.dup(1), os.dup(2))
        try:
            os.environ.clear()
            os.environ.update(env)
            os.chdir(cwd)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout, sys.stderr = (io.TextIOWrapper(io.FileIO(os.dup(fd), "w"), encoding="utf-8", write_through=True) for fd in (1, 2))
            try:
                code = main(args)
            except KeyboardInterrupt:
                raise
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.close()
            sys.stdout, sys.stderr = saved_streams
            for fd, saved in zip((1, 2), saved_fds):
                os.dup2(saved, fd)
                os.close(saved)
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            root.handlers[:], root.level = saved_log
            secrets._values.clear()
            secrets._values.update(saved_secrets[0])
            secrets.insecure_files.clear()
            secrets.insecure_files.update(saved_secrets[1])
        out.seek(0)
        err.seek(0)
        stdout, stderr = (f.read().decode("utf-8", "replace") for f in (out, err))
    return subprocess.CompletedProcess(["quant", *args], code, stdout, stderr)


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


#: Modules whose tests share a session fixture made under a lock (test_cold_start: the install's
#: compile from an empty cache): dealt to one worker together, so no worker waits on another's.
TOGETHER = ("test_cold_start",)


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
    units: list[list] = []  # dealt one per worker in turn: a test, or a TOGETHER module's tests
    for item in long:
        if units and _module(item) in TOGETHER and _module(units[-1][0]) == _module(item):
            units[-1].append(item)
        else:
            units.append([item])
    shares: list[list] = [[] for _ in range(workers)]
    for i, unit in enumerate(units):
        shares[i % workers].extend(unit)
    for share, size in zip(shares, sizes):
        while len(share) < size and rest:
            share.append(rest.pop(0))
    items[:] = [it for share in shares for it in share] + rest

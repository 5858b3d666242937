"""The first run after an install says why it takes longer (numba compiling the kernels, once), and
the install writes the plugin listing the first `quant --help` reads."""

from __future__ import annotations

import fcntl
import os
import re
import runpy
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from conftest import HELP_PROBE
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
#: imported by a full plugin load when installed, never needed: ``numba.core.config`` tries yaml,
#: urllib3 tries backports.zstd, pyarrow tries cloudpickle
OPTIONAL_IMPORTS = {"pyyaml", "backports-zstd", "cloudpickle"}


@pytest.fixture(scope="session")
def installed(tmp_path_factory, worker_id):
    """What ``pip install -e``'s build step leaves: setup.py's EditableWheelCompiling step (run here as
    the build runs it: btc_quant imported from the source folders, plugins from pyproject's
    entry-point table) with an empty numba cache and an empty QUANT_HOME; returns (cache, home).

    Both tests below start from it, and it is the suite's one compile from an empty cache (~40 s of
    CPU): made once per run, by whichever xdist worker asks first while the other waits on a lock."""
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    cache, home = shared / "installed" / "numba_cache", shared / "installed" / "quant_home"
    with open(shared / "installed.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "installed" / "done").exists():
            with pytest.MonkeyPatch.context() as env:
                for name in [n for n in os.environ if n.startswith("QUANT_")]:
                    env.delenv(name)
                env.setenv("NUMBA_CACHE_DIR", str(cache))
                env.setenv("QUANT_HOME", str(home))
                runpy.run_path(str(REPO / "setup.py"), run_name="btc_quant_setup")["precompile_kernels"]()
            (shared / "installed" / "done").touch()
    return cache, home


def test_first_run_says_it_compiles_and_the_next_one_uses_the_cache(quant, tmp_path, installed):
    """Right after the install the cache holds the main command's kernels, not sma_cross's loops."""
    cache = tmp_path / "numba_cache"
    shutil.copytree(installed[0], cache)
    env = {"NUMBA_CACHE_DIR": str(cache)}
    args = ("run", "strategy=sma_cross", "data.end=2022-01-02")
    compiled_before = set(cache.rglob("*.nbc"))
    first = quant(*args, env=env, check=True, process=True)
    assert "compiling the backtest kernels with numba (once: the result is cached" in first.stderr
    assert "kernel(s) in" in first.stderr
    assert set(cache.rglob("*.nbc")) > compiled_before  # what it compiled was cached
    second = quant(*args, env=env, check=True, process=True)
    assert "compiling" not in second.stderr
    assert re.search(r"^strategy\s+sma_cross\s*$", second.stdout, re.M)


def test_the_install_compiles_what_the_main_command_needs_and_lists_the_plugins(quant, tmp_path, monkeypatch, installed):
    """``pip install -e``'s build step (the ``installed`` fixture) compiles the main command's
    kernels, so its first run compiles nothing, and writes the plugin listing, so the first ``quant
    --help`` and ``quant plugins`` import no plugin (and answer what a full load answers)."""
    cache, home = installed
    assert any(cache.rglob("*.nbi"))
    assert (home / "cache" / "plugins.json").is_file()
    monkeypatch.setenv("QUANT_HOME", str(home))
    probe = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert probe.returncode == 0 and "HEAVY []" in probe.stderr, probe.stderr
    full_home = {"QUANT_HOME": str(tmp_path / "full_load_home")}  # no cache there: every plugin loads
    full = quant("--help", env=full_home, check=True).stdout + quant("plugins", "--json", env=full_home, check=True).stdout
    assert probe.stdout == full
    first = quant("run", "strategy=maker_vol", "broker=sim", "--json", env={"NUMBA_CACHE_DIR": str(cache)}, check=True, process=True)
    assert "compil" not in first.stderr
    assert '"strategy": "maker_vol"' in first.stdout


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_build_requirements_cover_what_loading_the_plugins_imports():
    """The build step loads every plugin in pip's build environment (only the build requirements
    and theirs installed): a library a plugin imports that is not among them makes the install
    skip the plugin listing, and the first ``quant --help`` slow again."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    closure, todo = set(), [Requirement(r).name for r in requires]
    while todo:
        name = _normal(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        try:
            dependencies = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in dependencies:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    load = (
        "import sys\n"
        "from btc_quant.core.cli import build_app\n"
        "from btc_quant.core.plugins import load_plugins\n"
        "build_app(load_plugins())\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANT_LOAD")}
    done = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, env=env, timeout=300, check=True)
    top = set(done.stdout.split()) - set(sys.stdlib_module_names) - {"btc_quant"}
    owners = metadata.packages_distributions()
    imported = {_normal(dist) for module in top for dist in owners.get(module, [])}
    assert imported - closure - OPTIONAL_IMPORTS == set()

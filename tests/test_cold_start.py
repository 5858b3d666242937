"""The first run after an install says why it takes longer (numba compiling the kernels, once)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_first_run_says_it_compiles_and_the_next_one_uses_the_cache(quant, tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba_cache")}  # an empty cache: as right after pip install
    args = ("run", "strategy=sma_cross", "data.end=2022-01-02")
    first = quant(*args, env=env, check=True)
    assert "compiling the backtest kernels with numba (once: the result is cached" in first.stderr
    assert "kernel(s) in" in first.stderr
    assert any((tmp_path / "numba_cache").rglob("*.nbi"))  # the compiled code was cached
    second = quant(*args, env=env, check=True)
    assert "compiling" not in second.stderr
    assert re.search(r"^strategy\s+sma_cross\s*$", second.stdout, re.M)


def test_the_install_compiles_what_the_main_command_needs(quant, tmp_path, monkeypatch):
    """``pip install -e``'s build step (setup.py's EditableWheelCompiling, run here as the build runs
    it: btc_quant imported from the source folders, plugins from pyproject's entry-point table)
    compiles the main command's kernels, so its first run compiles nothing."""
    cache = tmp_path / "numba_cache"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    runpy.run_path(str(REPO / "setup.py"), run_name="btc_quant_setup")["precompile_kernels"]()
    assert any(cache.rglob("*.nbi"))
    first = quant("run", "strategy=maker_vol", "broker=sim", "--json", env={"NUMBA_CACHE_DIR": str(cache)}, check=True)
    assert "compil" not in first.stderr
    assert '"strategy": "maker_vol"' in first.stdout

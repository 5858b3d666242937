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
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """Every test gets its own QUANT_HOME and no stray QUANT_* settings from the machine."""
    for name in list(os.environ):
        if name.startswith("QUANT_"):
            monkeypatch.delenv(name)
    home = tmp_path_factory.mktemp("quant_home")
    monkeypatch.setenv("QUANT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def plugins():
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
        proc = subprocess.run(
            [str(exe), *args], capture_output=True, text=True, env=full_env, cwd=cwd or tmp_path, timeout=600
        )
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

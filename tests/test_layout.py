"""The folder -> package mapping works for a normal (non-editable) install too."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_nobody_imports_the_folders_directly():
    offenders = []
    for path in REPO.glob("**/*.py"):
        if any(part in (".git", "build", ".venv") for part in path.parts):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(
                ("import core", "from core", "import sdk", "from sdk", "import plugins", "from plugins", "import testing", "from testing")
            ):
                offenders.append(f"{path.relative_to(REPO)}:{n}")
    assert offenders == []


def test_core_never_imports_a_plugin():
    hits = [
        p
        for p in (REPO / "core").rglob("*.py")
        if "btc_quant.plugins" in p.read_text() or "from ..plugins" in p.read_text().replace("from ..plugins import", "")
    ]
    assert [h.name for h in hits] == []


def test_wheel_maps_folders_to_btc_quant_packages(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    wheel = next(Path(tmp_path).glob("btc_quant-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "btc_quant/core/engine.py",
        "btc_quant/core/cli/__init__.py",
        "btc_quant/sdk/__init__.py",
        "btc_quant/plugins/strategies/sma_cross.py",
        "btc_quant/sample/btc_perp_1m_2022-01.parquet",
        "btc_quant/sdk/py.typed",  # PEP 561: type checkers use the SDK's annotations
    ):
        assert expected in names, expected
    assert not any(n.startswith(("core/", "sdk/", "plugins/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[btc_quant]" in text and "sma_cross = btc_quant.plugins.strategies.sma_cross" in text


def test_the_checkout_root_is_not_on_the_tests_path():
    """As for an installed ``quant``: metadata comes from the venv's distribution, never from the
    btc_quant.egg-info that a build of the checkout (the test above) rewrites while others run."""
    assert [p for p in sys.path if Path(p or os.getcwd()).resolve() == REPO] == []

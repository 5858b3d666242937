"""The README's commands, run as a user would: the real `quant` script in a subprocess."""

import json
import os
import subprocess
import sys

import pytest
from conftest import HELP_PROBE, REPO

SUMMARY_KEYS = {"strategy", "broker", "bars", "start", "end", "trades", "final_equity", "total_return", "max_drawdown", "sharpe", "fees"}


def test_run_json_summary_on_the_bundled_sample(quant):
    sample = REPO / "examples" / "data" / "btc_perp_1m_2022-01.parquet"
    proc = quant("run", "strategy=sma_cross", "broker=sim", f"data.file={sample}", "--json", check=True)
    summary = json.loads(proc.stdout)
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["strategy"], summary["broker"], summary["bars"]) == ("sma_cross", "sim", 45031)
    assert summary["start"] == "2021-12-31T23:01:00Z" and summary["end"] == "2022-02-01T05:31:00Z"
    assert summary["trades"] > 100 and summary["fees"] > 0


def test_run_without_stored_data_uses_the_sample_and_says_so(quant):
    proc = quant("run", "strategy=sma_cross", "data.start=2022-01-20", "data.end=2022-01-21", "--json", check=True)
    assert "note: the store has no binanceusdm BTC/USDT:USDT 1m bars" in proc.stderr
    assert "btc_perp_1m_2022-01.parquet" in proc.stderr
    assert json.loads(proc.stdout)["bars"] == 1440


def test_run_outside_the_sample_fails_with_a_hint(quant):
    proc = quant("run", "data.start=2019-01-01", "data.end=2019-02-01")
    assert proc.returncode == 2
    assert "error: no binanceusdm BTC/USDT:USDT 1m bars stored for 2019-01-01" in proc.stderr
    assert "hint: load data with quant data fetch" in proc.stderr


def test_run_refuses_to_span_a_gap_in_the_data(quant, tmp_path, sample_bars):
    frame = sample_bars[:3000].to_frame()
    frame = frame.drop(index=range(1000, 1600))  # a 10-hour hole
    path = tmp_path / "holey.parquet"
    frame.to_parquet(path)
    proc = quant("run", f"data.file={path}")
    assert proc.returncode == 2
    assert "are 2 separate stretches" in proc.stderr and "data.max_gap (6h)" in proc.stderr
    ok = quant("run", f"data.file={path}", "data.max_gap=11h", "--json", check=True)
    assert json.loads(ok.stdout)["bars"] == 2400


def test_bad_data_file_names_file_and_row(quant, tmp_path, sample_bars):
    frame = sample_bars[:50].to_frame()
    frame.loc[17, "high"] = frame.loc[17, "low"] - 1
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    proc = quant("run", f"data.file={path}")
    assert proc.returncode == 2
    assert f"error: {path}: high below low/open/close at row 17 (1 row(s) in all)" in proc.stderr


def test_plugins_json_lists_first_party_plugins(quant):
    infos = {p["name"]: p for p in json.loads(quant("plugins", "--json", check=True).stdout)}
    assert infos["sma_cross"]["registered"] == {"strategy": ["sma_cross"]}
    assert infos["sim"]["registered"]["broker"] == ["sim"]
    assert all(p["distribution"] == "btc-quant" for p in infos.values() if p["name"] in ("sma_cross", "sim", "risk"))


@pytest.fixture(scope="module")
def example_plugin_installed(tmp_path_factory):
    """pip-install the example third-party plugin into a folder of its own (not into this venv, which
    the other test workers share); the environment that puts it on the path is returned."""
    target = tmp_path_factory.mktemp("example_plugin")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", "--target", str(target), str(REPO / "examples" / "quant-plugin-example")],
        check=True,
    )
    return {"PYTHONPATH": str(target)}


def test_example_plugin_installs_and_its_strategy_runs(example_plugin_installed, quant):
    env = example_plugin_installed  # PYTHONPATH: read when a Python starts, so each call is a process
    infos = {p["name"]: p for p in json.loads(quant("plugins", "--json", env=env, check=True, process=True).stdout)}
    assert infos["donchian"]["distribution"] == "quant-plugin-example"
    assert infos["donchian"]["registered"] == {"strategy": ["donchian"]}
    proc = quant("run", "strategy=donchian", "strategy.period=120", "data.end=2022-01-08", "--json", env=env, check=True, process=True)
    summary = json.loads(proc.stdout)
    assert summary["strategy"] == "donchian" and summary["trades"] > 0
    bad = quant("run", "strategy=donchian", "strategy.perod=5", env=env, process=True)
    assert bad.returncode == 2 and "strategy.perod: unknown key for strategy 'donchian' (did you mean 'period'?)" in bad.stderr


def test_help_and_plugins_come_from_the_cache_without_importing_numpy_pandas_numba_or_ccxt(quant, isolated_env):
    first_help = quant("--help", check=True).stdout
    first_plugins = quant("plugins", "--json", check=True).stdout
    assert (isolated_env / "cache" / "plugins.json").is_file()  # written by the full load
    proc = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr
    assert proc.stdout == first_help + first_plugins  # the same answers as a full load gives


def test_plugin_cache_notices_a_newly_installed_plugin(example_plugin_installed, quant):
    before = {p["name"] for p in json.loads(quant("plugins", "--json", check=True).stdout)}
    assert "donchian" not in before
    after = {p["name"] for p in json.loads(quant("plugins", "--json", env=example_plugin_installed, check=True, process=True).stdout)}
    assert after == before | {"donchian"}
    assert "donchian" not in {p["name"] for p in json.loads(quant("plugins", "--json", check=True).stdout)}

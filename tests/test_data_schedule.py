"""Scheduled collection: ``quant data schedule`` (in-process) and the Airflow example's commands."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from btc_quant.plugins.storage.clickhouse import ChdbStore
from btc_quant.testing.process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "examples" / "airflow" / "btc_quant_fetch_dag.py"
#: A start inside the local exchange's recorded data for each market (the DAG says 2020-01-01).
TEST_START = {"binance": "2021-04-19", "binanceusdm": "2022-01-01"}


@pytest.fixture
def exchange():
    server = ServerProcess("btc_quant.testing.exchange").start()
    yield server
    server.stop()


def test_schedule_fetches_now_and_on_every_tick_resuming_each_time(quant, exchange, isolated_env):
    done = quant(
        "data",
        "schedule",
        "--every",
        "1s",
        "--runs",
        "2",
        "exchange=binance",
        f"exchange.url={exchange.url}",
        "symbol=BTC/USDT",
        "timeframe=1m",
        "start=2021-04-19",
        check=True,
    )
    lines = done.stdout.splitlines()
    assert any(line.startswith("schedule: fetch 1/2") for line in lines)
    assert any(line.startswith("schedule: fetch 2/2") for line in lines)
    written = [line for line in lines if "bars written" in line]
    assert written[0].startswith("binance BTC/USDT 1m: 4,170 bars written")
    assert written[1].startswith("binance BTC/USDT 1m: 0 bars written")  # the second tick resumed, nothing twice
    assert lines[-1] == "schedule: 2 fetches"
    with ChdbStore() as store:
        assert store.count_rows("binance", "BTC/USDT", "1m") == (4170, 4170)


def test_schedule_rejects_a_bad_interval_in_one_line(quant, isolated_env):
    bad = quant("data", "schedule", "--every", "soon", "exchange=binance", "symbol=BTC/USDT")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[0].startswith("error: --every:")


def test_every_airflow_dag_command_runs_against_the_local_exchange(quant, exchange, isolated_env):
    spec = importlib.util.spec_from_file_location("btc_quant_fetch_dag", DAG_FILE)
    dag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag)  # imports without Airflow; the DAG itself is built only where Airflow is
    assert set(dag.FETCHES) == {"binance_btcusdt_1m", "binanceusdm_btcusdt_perp_1m"}
    for settings in dag.FETCHES.values():
        args = settings.split()
        exchange_id = next(a.split("=", 1)[1] for a in args if a.startswith("exchange="))
        args = [a if not a.startswith("start=") else f"start={TEST_START[exchange_id]}" for a in args]
        done = quant("data", "fetch", *args, f"exchange.url={exchange.url}", check=True)
        assert " bars written" in done.stdout
    listing = quant("data", "ls", check=True).stdout
    assert "binanceusdm" in listing and "BTC/USDT:USDT" in listing and "binance " in listing

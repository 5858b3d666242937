"""An Airflow DAG that keeps a btc-quant store current: one ``quant data fetch`` task per market.

For people who already run Airflow; everyone else can use ``quant data schedule --every 1h ...``
(in-process) or ``quant collect`` (live websocket klines). Copy this file into your DAGs folder and
set ``QUANT_BIN`` to the ``quant`` of the environment btc-quant is installed in. Each fetch resumes
from the last stored bar, so a missed or failed run is caught up by the next one; ``max_active_runs=1``
keeps two fetches from opening the embedded chDB store at once (or use ``store=clickhouse``).

``tests/test_data_schedule.py`` runs every command of ``FETCHES`` through the real ``quant``
against the local test exchange, so the commands here stay valid.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

QUANT_BIN = os.environ.get("QUANT_BIN", "quant")

#: One fetch per market: the settings of ``quant data fetch``.
FETCHES = {
    "binance_btcusdt_1m": "exchange=binance symbol=BTC/USDT timeframe=1m start=2020-01-01",
    "binanceusdm_btcusdt_perp_1m": "exchange=binanceusdm symbol=BTC/USDT:USDT timeframe=1m start=2020-01-01",
}

try:  # the module imports without Airflow, so its commands can be tested anywhere
    from airflow import DAG
    from airflow.operators.bash import BashOperator
except ImportError:  # pragma: no cover - depends on the machine
    DAG = None

if DAG is not None:  # pragma: no cover - needs Airflow
    with DAG(
        dag_id="btc_quant_fetch",
        schedule=timedelta(hours=1),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
        tags=["btc-quant"],
    ) as dag:
        previous = None
        for task_id, settings in FETCHES.items():
            task = BashOperator(task_id=task_id, bash_command=f"{QUANT_BIN} data fetch {settings}")
            if previous is not None:
                previous >> task  # one at a time: the embedded store is one process at a time
            previous = task

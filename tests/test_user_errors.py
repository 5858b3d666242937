"""Mistakes a new user makes end in one line naming the setting and exit code 2, not a traceback
(each of these was a traceback on an earlier version)."""

from __future__ import annotations

import pytest

from btc_quant.testing.process import ServerProcess

SECRET_PASSWORD = "hunter2-not-shown"


@pytest.fixture
def exchange():
    server = ServerProcess("btc_quant.testing.exchange", "--clock-start", "2022-01-10").start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    "keys, expected",
    [
        ((), "broker.api_key: binanceusdm needs an API key and secret for a live bot, and none is set"),
        (
            ("broker.api_key=not-a-key", "broker.secret=not-a-secret"),
            "broker.api_key: binanceusdm refused the API key (Invalid API-key, IP, or permissions for action.)",
        ),
    ],
)
def test_live_bot_without_or_with_a_wrong_api_key_is_one_line(quant, exchange, keys, expected):
    proc = quant(
        "run",
        "strategy=grid",
        "broker=live",
        "exchange=binanceusdm",
        f"exchange.url={exchange.url}",
        "--testnet",
        "broker.bot=first",
        *keys,
        env={"QUANT_LOAD_PLUGINS": "live,sim,ccxt_source,grid"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"error: {expected}" and lines[1].startswith("hint: set QUANT_BROKER__API_KEY")
    assert "Traceback" not in proc.stderr and "not-a-secret" not in proc.stderr


@pytest.mark.parametrize(
    "storage, expected",
    [
        ("not a url", "storage: 'not a url' is not a database URL"),
        ("sqlite:///{missing}/study.db", "storage: sqlite:///{missing}/study.db: cannot open it (unable to open database file)"),
        (
            f"postgresql://quant:{SECRET_PASSWORD}@127.0.0.1:1/quant",
            "storage: postgresql://quant:***@127.0.0.1:1/quant: the postgresql database driver is not installed",
        ),
    ],
)
def test_bad_optimize_storage_is_one_line(quant, tmp_path, storage, expected):
    missing = tmp_path / "no" / "such" / "folder"
    storage, expected = storage.format(missing=missing), expected.format(missing=missing)
    proc = quant(
        "optimize", "strategy=sma_cross", "search.fast=2:10", "trials=1", "workers=1", f"storage={storage}", f"out={tmp_path / 'out'}"
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {expected}")
    assert "Traceback" not in proc.stderr and SECRET_PASSWORD not in proc.stderr + proc.stdout

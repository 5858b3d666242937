"""Secrets never reach logs or errors; a world-readable config file with secrets is flagged."""

import logging
import os

from pydantic import SecretStr

from btc_quant.core import secrets
from btc_quant.core.config import gather, read_toml
from btc_quant.sdk import QuantModel


def test_secret_values_are_masked_in_log_records(caplog, tmp_path):
    gather(["exchange.api_key=AKIAsupersecretkey", "strategy.fast=5"], env={}, cwd=tmp_path)
    handler_filter = secrets.MaskingFilter()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "request failed: key=%s", ("AKIAsupersecretkey",), None)
    handler_filter.filter(record)
    assert record.getMessage() == "request failed: key=***"


def test_env_secrets_are_registered(tmp_path):
    gather([], env={"QUANT_EXCHANGE__SECRET": "envsecretvalue123"}, cwd=tmp_path)
    assert secrets.mask("boom envsecretvalue123 boom") == "boom *** boom"


def test_world_readable_config_with_secrets_is_flagged(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(secrets, "insecure_files", {})  # this process's registry, left as it was after
    path = tmp_path / "quant.toml"
    path.write_text('[exchange]\nname = "binanceusdm"\napi_key = "filekeyvalue999"\n')
    os.chmod(path, 0o644)
    with caplog.at_level("WARNING"):
        read_toml(path)
    assert path in secrets.insecure_files
    assert f"{path} holds secrets and is readable by others (mode 644); run: chmod 600 {path}" in caplog.text
    assert "filekeyvalue999" not in caplog.text
    private = tmp_path / "private.toml"
    private.write_text('[exchange]\napi_key = "otherkeyvalue42"\n')
    os.chmod(private, 0o600)
    read_toml(private)
    assert private not in secrets.insecure_files


def test_secretstr_fields_stay_masked_in_config_dumps():
    class Exchange(QuantModel):
        api_key: SecretStr = SecretStr("")

    model = Exchange(api_key="abcdef123456")
    assert "abcdef123456" not in repr(model) and "abcdef123456" not in str(model.model_dump(mode="json"))


def test_cli_error_text_is_masked(quant):
    # the error quotes the bad value, which is also the API key: it must come out masked
    proc = quant("run", "exchange.api_key=leakycredential77", "strategy.fast=leakycredential77")
    assert proc.returncode == 2 and "leakycredential77" not in proc.stderr + proc.stdout
    assert "strategy.fast: Input should be a valid integer" in proc.stderr and "(got '***')" in proc.stderr

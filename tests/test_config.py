"""Config: precedence of sources, dotted keys, plugin sections, and every error path."""

import tomllib
from datetime import UTC, datetime, timedelta

import pytest

from btc_quant.core.config import load_run_config, parse_duration
from btc_quant.core.errors import ConfigError


def cfg(plugins, *pairs, env=None, cwd=None, path=None):
    return load_run_config(list(pairs), plugins.registry, env=env or {}, cwd=cwd, config_path=path)


def test_defaults(plugins, tmp_path):
    c = cfg(plugins, cwd=tmp_path)
    assert (c.strategy.name, c.broker.name, c.store.name, c.exchange.name) == ("sma_cross", "sim", "chdb", "binanceusdm")
    assert (c.strategy.config.fast, c.strategy.config.slow) == (10, 30)
    assert c.broker.config.initial_cash == 10_000.0


def test_sources_merge_defaults_toml_env_cli_in_that_order(plugins, tmp_path):
    (tmp_path / "quant.toml").write_text(
        '[strategy]\nname = "sma_cross"\nfast = 3\nslow = 40\nequity_pct = 0.5\n[broker]\ninitial_cash = 500.0\n'
    )
    env = {"QUANT_STRATEGY__SLOW": "50", "QUANT_BROKER__INITIAL_CASH": "700"}
    c = cfg(plugins, "broker.initial_cash=900", env=env, cwd=tmp_path)
    assert c.strategy.config.fast == 3  # toml over default
    assert c.strategy.config.slow == 50  # env over toml
    assert c.strategy.config.equity_pct == 0.5  # toml
    assert c.broker.config.initial_cash == 900.0  # cli over env
    assert cfg(plugins, env=env, cwd=tmp_path).broker.config.initial_cash == 700.0


def test_explicit_config_path_replaces_quant_toml(plugins, tmp_path):
    (tmp_path / "quant.toml").write_text("[strategy]\nfast = 3\n")
    other = tmp_path / "other.toml"
    other.write_text("[strategy]\nfast = 4\n")
    assert cfg(plugins, cwd=tmp_path, path=other).strategy.config.fast == 4


def test_naming_the_plugin_on_the_command_line_keeps_the_environments_keys_for_it(plugins, tmp_path):
    env = {"QUANT_BROKER__API_KEY": "env-key-123456", "QUANT_BROKER__SECRET": "env-secret-123456"}
    c = cfg(plugins, "broker=live", "broker.bot=b1", env=env, cwd=tmp_path)
    assert c.broker.name == "live"
    assert c.broker.config.api_key.get_secret_value() == "env-key-123456"
    assert c.broker.config.secret.get_secret_value() == "env-secret-123456"


def test_naming_the_same_plugin_on_the_command_line_keeps_quant_toml_settings(plugins, tmp_path):
    (tmp_path / "quant.toml").write_text("[broker]\nleverage = 3\n")
    assert cfg(plugins, "broker=sim", cwd=tmp_path).broker.config.leverage == 3.0
    (tmp_path / "quant.toml").write_text('[broker]\nname = "sim"\nleverage = 3\n')
    assert cfg(plugins, "broker=sim", cwd=tmp_path).broker.config.leverage == 3.0


def test_a_bad_env_value_for_the_plugin_named_on_the_command_line_is_an_error(plugins, tmp_path):
    with pytest.raises(ConfigError, match="strategy.fast: Input should be a valid integer"):
        cfg(plugins, "strategy=sma_cross", env={"QUANT_STRATEGY__FAST": "abc"}, cwd=tmp_path)


def test_a_lower_layers_key_the_chosen_plugin_does_not_know_is_an_error_naming_it(plugins, tmp_path):
    (tmp_path / "quant.toml").write_text('[strategy]\nname = "other"\nlookback = "30d"\n')
    with pytest.raises(ConfigError, match=r"strategy.lookback: unknown key for strategy 'sma_cross'"):
        cfg(plugins, "strategy=sma_cross", "strategy.fast=5", cwd=tmp_path)


def test_cli_bad_env_value_with_the_plugin_on_the_command_line_exits_2(quant):
    proc = quant("run", "strategy=sma_cross", env={"QUANT_STRATEGY__FAST": "abc"})
    assert proc.returncode == 2, proc.stderr
    assert "error: strategy.fast: Input should be a valid integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dates_and_durations_parse(plugins, tmp_path):
    c = cfg(plugins, "data.start=2022-01-10", "data.end=2022-01-12T06:00", "data.max_gap=90m", cwd=tmp_path)
    assert c.data.start == datetime(2022, 1, 10, tzinfo=UTC)
    assert c.data.end == datetime(2022, 1, 12, 6, tzinfo=UTC)
    assert c.data.max_gap == timedelta(minutes=90)
    assert parse_duration("30d") == timedelta(days=30)


@pytest.mark.parametrize(
    "pairs, message",
    [
        (
            ["strategy.fastt=5"],
            "strategy.fastt: unknown key for strategy 'sma_cross' (did you mean 'fast'?); valid keys: equity_pct, fast, slow",
        ),
        (["strategy.fast=abc"], "strategy.fast: Input should be a valid integer, unable to parse string as an integer (got 'abc')"),
        (["strategy.fast=40"], "strategy.slow: must be greater than fast (40) (got 30)"),
        (["strategy=smacross"], "strategy: unknown strategy 'smacross' (did you mean 'sma_cross'?); available: grid, maker_vol, sma_cross"),
        (["broker=simm"], "broker: unknown broker 'simm' (did you mean 'sim'?)"),
        (
            ["broker.fill_model=toch"],
            "broker.fill_model: unknown fill model 'toch' (did you mean 'touch'?); available: prob, queue, through, touch",
        ),
        (["strat=sma_cross"], "strat: unknown key (did you mean 'strategy'?)"),
        (["data.start=yesterday"], "data.start: expected a date like 2021-01-01 or 2021-01-01T12:00, got 'yesterday'"),
        (["data.max_gap=soon"], "data.max_gap: expected a duration like 30d, 1h, 15m or 90s, got 'soon'"),
        (["instrument.maker_fee=cheap"], "instrument.maker_fee: Input should be a valid number"),
        (["risk.max_notional.limit=5"], "risk.max_notional: settings for a check that risk.checks does not enable"),
        (["risk.checks=max_notionl"], "risk.max_notionl: unknown risk check 'max_notionl' (did you mean 'max_notional'?)"),
        (["strategy.fast"], "command line: expected key=value, got 'strategy.fast'"),
        (["data=x", "data.start=2020-01-01"], "data is a value, not a section"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(plugins, tmp_path, pairs, message):
    with pytest.raises(ConfigError) as err:
        cfg(plugins, *pairs, cwd=tmp_path)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_bad_toml_names_the_file(plugins, tmp_path):
    (tmp_path / "quant.toml").write_text("[strategy\nfast = 3\n")
    with pytest.raises(ConfigError, match=r"config file .*quant.toml: .*line 1"):
        cfg(plugins, cwd=tmp_path)


def test_bad_env_value_names_the_key(plugins, tmp_path):
    with pytest.raises(ConfigError, match="strategy.slow: Input should be a valid integer"):
        cfg(plugins, env={"QUANT_STRATEGY__SLOW": "many"}, cwd=tmp_path)


def test_risk_checks_are_validated_by_their_own_models(plugins, tmp_path):
    c = cfg(plugins, "risk.checks=max_notional,max_open_orders", "risk.max_notional.limit=5000", cwd=tmp_path)
    assert [ch.name for ch in c.risk.checks] == ["max_notional", "max_open_orders"]
    assert c.risk.checks[0].config.limit == 5000.0
    with pytest.raises(ConfigError, match="risk.max_notional.limit: Input should be greater than 0"):
        cfg(plugins, "risk.checks=max_notional", "risk.max_notional.limit=-1", cwd=tmp_path)


def test_cli_error_is_one_line_exit_2_and_debug_shows_traceback(quant):
    proc = quant("run", "strategy.fastt=5")
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines[0].startswith("error: strategy.fastt: unknown key for strategy 'sma_cross' (did you mean 'fast'?)")
    assert all("Traceback" not in l for l in lines) and len(lines) == 2 and lines[1].startswith("hint:")
    debug = quant("run", "strategy.fastt=5", "--debug")
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr


def test_cli_unknown_plugin_lists_choices(quant):
    proc = quant("run", "broker=papr")
    assert proc.returncode == 2
    assert "error: broker: unknown broker 'papr'" in proc.stderr and "available:" in proc.stderr


def test_config_show_prints_merged_toml_that_run_accepts(quant, tmp_path):
    proc = quant("config", "show", "strategy.fast=7", "data.start=2022-01-05", check=True)
    shown = tomllib.loads(proc.stdout)
    assert shown["strategy"] == {"name": "sma_cross", "fast": 7, "slow": 30, "equity_pct": 0.95}
    assert shown["data"]["start"].startswith("2022-01-05T00:00:00")
    (tmp_path / "saved.toml").write_text(proc.stdout)
    again = quant("config", "show", "--config", str(tmp_path / "saved.toml"), "--json", check=True)
    assert '"fast": 7' in again.stdout

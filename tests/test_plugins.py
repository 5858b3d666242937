"""Plugin loading: entry points, failures reported by name, QUANT_LOAD_PLUGINS, duplicates, typos."""

import sys
import textwrap
import types

import pytest

from btc_quant.core.config import load_run_config
from btc_quant.core.errors import ConfigError, PluginError
from btc_quant.core.plugins import load_plugins
from btc_quant.sdk import Strategy, hookimpl

FIRST_PARTY = {"sma_cross", "sim", "risk"}


def make_distribution(root, dist, module, source, entry_name=None):
    """A real installed distribution on sys.path: dist-info with an entry point, plus its module."""
    info = root / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[btc_quant]\n{entry_name or module} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fixture_")]:
        del sys.modules[name]


def test_first_party_plugins_load_through_entry_points(plugins):
    assert FIRST_PARTY <= set(plugins.infos)
    sim = plugins.infos["sim"]
    assert sim.distribution == "btc-quant" and sim.version
    assert sim.registered == {"broker": ["sim"], "fill_model": ["through", "touch", "prob", "queue"]}
    assert plugins.registry.get("strategy", "sma_cross").plugin == "sma_cross"


def test_broken_plugin_is_reported_by_name_and_the_rest_load(site):
    make_distribution(site, "fixture-broken", "fixture_broken", "import not_a_module_anywhere\n")
    manager = load_plugins(env={})
    info = manager.infos["fixture_broken"]
    assert info.distribution == "fixture-broken" and info.version == "0.3"
    assert "ModuleNotFoundError" in info.error and "not_a_module_anywhere" in info.error
    assert "sma_cross" in manager.registry.names("strategy")
    # using a name it might have provided says why it may be missing
    with pytest.raises(ConfigError, match="plugin 'fixture_broken' failed to load"):
        load_run_config(["strategy=broken_thing"], manager.registry, env={})


def test_strict_mode_makes_a_broken_plugin_fatal(site):
    make_distribution(site, "fixture-broken2", "fixture_broken2", "raise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match="plugin 'fixture_broken2' .*failed to load: RuntimeError: boom"):
        load_plugins(env={"QUANT_STRICT_PLUGINS": "1"})


def test_load_plugins_env_limits_what_loads(site):
    manager = load_plugins(env={"QUANT_LOAD_PLUGINS": "sim, sma_cross"})
    assert set(manager.infos) == {"sim", "sma_cross"}
    assert manager.registry.names("risk_check") == []
    assert load_plugins(env={"QUANT_LOAD_PLUGINS": ""}).infos == {}


def test_duplicate_name_is_a_startup_error_naming_both_plugins(site):
    make_distribution(
        site,
        "fixture-dup",
        "fixture_dup",
        """
        from btc_quant.sdk import hookimpl, Strategy
        @hookimpl
        def quant_register_strategies(register):
            register("sma_cross", Strategy)
        """,
    )
    with pytest.raises(PluginError, match="strategy 'sma_cross' is registered by two plugins: 'fixture_dup' and 'sma_cross'"):
        load_plugins(env={})


def test_misspelled_hook_fails_loudly(site):
    make_distribution(
        site,
        "fixture-typo",
        "fixture_typo",
        """
        from btc_quant.sdk import hookimpl
        @hookimpl
        def quant_register_strategys(register):
            pass
        """,
    )
    with pytest.raises(PluginError, match="quant_register_strategys"):
        load_plugins(env={})


def test_trace_env_logs_hook_calls(caplog):
    with caplog.at_level("WARNING"):
        load_plugins(env={"QUANT_TRACE_PLUGINS": "1", "QUANT_LOAD_PLUGINS": "sma_cross"})
    assert any("quant_register_strategies" in r.getMessage() for r in caplog.records)


def test_extra_plugin_objects_register_like_entry_points():
    class Mine(Strategy):
        """Does nothing."""

    plugin = types.SimpleNamespace()

    @hookimpl
    def quant_register_strategies(register):
        register("mine", Mine)

    plugin.quant_register_strategies = quant_register_strategies
    manager = load_plugins(env={"QUANT_LOAD_PLUGINS": ""}, extra={"mine_plugin": plugin})
    reg = manager.registry.get("strategy", "mine")
    assert (reg.plugin, reg.factory, reg.description) == ("mine_plugin", Mine, "Does nothing.")


def test_every_installed_plugin_loads_in_strict_mode():
    """What CI runs with: a plugin that fails to import anywhere in the install fails the suite."""
    manager = load_plugins(env={"QUANT_STRICT_PLUGINS": "1"})
    assert manager.failed == [] and FIRST_PARTY <= set(manager.infos)

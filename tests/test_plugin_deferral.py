"""``quant run`` imports a plugin that only registers names when one of its names is used."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, os, sys
from btc_quant.core.cli import plugin_cache
from btc_quant.core.plugins import load_plugins
cached = plugin_cache.recall(dict(os.environ))
plugins = load_plugins(known=cached.infos)
out = {"brokers": plugins.registry.names("broker"), "strategies": plugins.registry.names("strategy")}
out["imported_before"] = sorted(m.rsplit(".", 1)[-1] for m in sys.modules if m.startswith("btc_quant.plugins.") and m.count(".") == 3)
out["backtrader_before"] = "backtrader" in sys.modules
reg = plugins.registry.get("broker", "backtrader")
out["backtrader_plugin"] = reg.plugin
out["backtrader_after"] = "backtrader" in sys.modules
out["infos"] = sorted(plugins.infos)
print(json.dumps(out))
"""


def test_registration_only_plugins_load_when_a_name_they_registered_is_looked_up(quant, isolated_env):
    quant("--help", check=True)  # a full load writes the plugin cache
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout)
    # every name is known before any deferred plugin is imported
    assert {"sim", "backtrader", "live"} <= set(out["brokers"]) and {"maker_vol", "sma_cross", "grid"} <= set(out["strategies"])
    assert not out["backtrader_before"]
    assert "backtrader_broker" not in out["imported_before"] and "grid" not in out["imported_before"]
    # a plugin with an observer hook (maker_vol adds report sections) loads at once
    assert "maker_vol" in out["imported_before"]
    assert out["backtrader_plugin"] == "backtrader" and out["backtrader_after"]
    assert "backtrader" in out["infos"]


def test_quant_run_after_the_cache_names_every_choice_in_errors(quant):
    """(The second ``quant run`` of tests/test_cold_start.py runs a backtest in this mode.)"""
    quant("--help", check=True)
    wrong = quant("run", "strategy=gird")
    assert wrong.returncode == 2
    assert "did you mean 'grid'?" in wrong.stderr and "sma_cross" in wrong.stderr and "maker_vol" in wrong.stderr

"""One test per hook spec (test_hook_<name>), and a meta-test that keeps it that way."""

import inspect
from pathlib import Path

import typer
from conftest import make_plugin, registering
from typer.testing import CliRunner

from btc_quant.core import hookspecs
from btc_quant.core.cli import build_app
from btc_quant.core.fills import FillModel
from btc_quant.core.plugins import load_plugins
from btc_quant.core.run import backtest
from btc_quant.plugins.brokers.sim import SimBroker
from btc_quant.sdk import Field, Store, StoreConfig, Strategy, StrategyConfig
from btc_quant.sdk.testing import bars_from, run_strategy

SPECS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("quant_") and callable(f))


def test_every_hook_spec_has_a_full_docstring_and_a_test():
    here = Path(__file__).read_text()
    for name in SPECS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Called" in doc or "called" in doc, f"{name}: docstring must say when it is called"
        assert "Return" in doc, f"{name}: docstring must say what it returns"
        assert f"def test_hook_{name}(" in here, f"{name} has no test_hook_{name}"


class LimitBuyer(Strategy):
    class Config(StrategyConfig):
        price: float = Field(99.0, description="limit price")

    def on_bar(self, ctx, bar):
        if not ctx.open_orders and ctx.position.is_flat:
            ctx.buy(2.0, self.config.price)


def test_hook_quant_register_strategies():
    pm = load_plugins(env={"QUANT_LOAD_PLUGINS": "sim"}, extra={"x": registering("quant_register_strategies", limit_buyer=LimitBuyer)})
    result = run_strategy("limit_buyer", bars_from([(100, 101, 98, 100), (100, 101, 98.5, 100)]), "strategy.price=99", plugins=pm)
    assert result.fills.price.tolist() == [99.0]


def test_hook_quant_register_brokers():
    class OtherSim(SimBroker):
        """The sim under another name."""

    pm = load_plugins(env={"QUANT_LOAD_PLUGINS": "sim,sma_cross"}, extra={"b": registering("quant_register_brokers", other_sim=OtherSim)})
    result = run_strategy(
        "sma_cross", bars_from([(100 + i % 7, 101 + i % 7, 99 + i % 7, 100 + i % 7) for i in range(80)]), "broker=other_sim", plugins=pm
    )
    assert result.info.broker == "other_sim" and len(result.fills) > 0


def test_hook_quant_register_stores(sample_bars):
    reads = []

    class MemoryStore(Store):
        class Config(StoreConfig):
            label: str = "mem"

        def __init__(self, config, runtime):
            self.config = config

        def read_bars(self, exchange, symbol, timeframe, start_ms=None, end_ms=None):
            reads.append((exchange, symbol, timeframe, start_ms, end_ms, self.config.label))
            return sample_bars[:3000].between(start_ms, end_ms)

    pm = load_plugins(env={"QUANT_LOAD_PLUGINS": "sim,sma_cross"}, extra={"s": registering("quant_register_stores", memory=MemoryStore)})
    result = backtest(["store=memory", "store.label=x", "data.start=2022-01-01T00:00"], plugins=pm)
    assert reads == [("binanceusdm", "BTC/USDT:USDT", "1m", 1640995200000, None, "x")]
    assert result.bars == 3000 - 59 and result.notes == []  # from the store, not the bundled sample


def test_hook_quant_register_data_sources(tmp_path):
    from btc_quant.core.config import QuantModel, load_run_config

    class Source:
        """A source with a setting."""

        class Config(QuantModel):
            testnet: bool = False

    pm = load_plugins(env={"QUANT_LOAD_PLUGINS": "sim,sma_cross"}, extra={"d": registering("quant_register_data_sources", myex=Source)})
    cfg = load_run_config(["exchange=myex", "exchange.testnet=true"], pm.registry, env={}, cwd=tmp_path)
    assert cfg.exchange.name == "myex" and cfg.exchange.config.testnet is True
    assert pm.infos["d"].registered == {"data_source": ["myex"]}


def test_hook_quant_register_risk_checks():
    from btc_quant.sdk import RiskCheck

    class NoSells(RiskCheck):
        def check(self, order, state):
            return "no sells" if order.side.value == "sell" else None

    pm = load_plugins(env={"QUANT_LOAD_PLUGINS": "sim,sma_cross"}, extra={"r": registering("quant_register_risk_checks", no_sells=NoSells)})
    bars = bars_from([(100 + (i // 10) % 2 * 5, 106, 99, 100 + (i // 10) % 2 * 5) for i in range(200)])
    result = run_strategy("sma_cross", bars, "risk.checks=no_sells", "strategy.fast=2", "strategy.slow=5", plugins=pm)
    assert set(result.fills.side) == {"buy"}
    assert (result.orders.status == "rejected").sum() > 0
    assert result.orders[result.orders.status == "rejected"].reason.str.startswith("risk no_sells: no sells").all()


def test_hook_quant_register_fill_models():
    pm = load_plugins(
        env={"QUANT_LOAD_PLUGINS": "sim"},
        extra={
            "f": registering("quant_register_fill_models", generous=FillModel("generous", strict=False)),
            "s": registering("quant_register_strategies", limit_buyer=LimitBuyer),
        },
    )
    bars = bars_from([(100, 101, 99, 100), (100, 101, 99, 100)])
    strict = run_strategy("limit_buyer", bars, "strategy.price=99", plugins=pm)
    loose = run_strategy("limit_buyer", bars, "strategy.price=99", "broker.fill_model=generous", plugins=pm)
    assert strict.fills.empty and loose.fills.price.tolist() == [99.0]


def test_hook_quant_register_commands():
    got = []

    def quant_register_commands(cli, plugins):
        got.append(plugins)

        @cli.command("hello")
        def hello(name: str = typer.Argument("world")):
            typer.echo(f"hello {name}")

    pm = load_plugins(env={"QUANT_LOAD_PLUGINS": ""}, extra={"c": make_plugin(quant_register_commands=quant_register_commands)})
    result = CliRunner().invoke(build_app(pm), ["hello", "btc"])
    assert result.exit_code == 0 and result.output == "hello btc\n"
    assert got == [pm]  # commands that call other hooks get the plugin manager


class Recorder:
    def __init__(self):
        self.calls = []

    def plugin(self):
        rec = self.calls
        return make_plugin(
            quant_on_run_start=lambda run: rec.append(("start", run.strategy)),
            quant_on_order=lambda order, run: rec.append(("order", order.status.value)),
            quant_on_fill=lambda fill, run: rec.append(("fill", fill.side.value)),
            quant_on_run_end=lambda result: rec.append(("end", result.metrics["fills"])),
        )


def _observed():
    rec = Recorder()
    pm = load_plugins(
        env={"QUANT_LOAD_PLUGINS": "sim"},
        extra={"rec": rec.plugin(), "s": registering("quant_register_strategies", limit_buyer=LimitBuyer)},
    )
    run_strategy("limit_buyer", bars_from([(100, 101, 99.5, 100), (100, 101, 98, 100), (100, 101, 99.5, 100)]), plugins=pm)
    return rec.calls


def test_hook_quant_on_run_start():
    assert _observed()[0] == ("start", "limit_buyer")


def test_hook_quant_on_order():
    assert [c for c in _observed() if c[0] == "order"] == [("order", "new")]


def test_hook_quant_on_fill():
    assert [c for c in _observed() if c[0] == "fill"] == [("fill", "buy")]


def test_hook_quant_on_run_end():
    assert _observed()[-1] == ("end", 1)


def test_hook_quant_report_sections():
    from btc_quant.core.report import sections
    from btc_quant.sdk import ReportSection

    def quant_report_sections(result):
        if result.info.strategy == "limit_buyer":
            return ReportSection("Limit buyer", html="<p>levels</p>", order=500)

    pm = load_plugins(
        env={"QUANT_LOAD_PLUGINS": "sim"},
        extra={
            "r": make_plugin(quant_report_sections=quant_report_sections),
            "s": registering("quant_register_strategies", limit_buyer=LimitBuyer),
        },
    )
    result = run_strategy("limit_buyer", bars_from([(100, 101, 99.5, 100), (100, 101, 98, 100)]), plugins=pm)
    titles = [s.title for s in sections(result, pm)]
    assert titles[0] == "Summary" and titles[-1] == "Limit buyer"


def test_hook_quant_on_alert(tmp_path):
    """The watchdog of ``quant serve`` hands every alert to the hook; a failing hook does not stop it."""
    import subprocess
    import sys

    from serve_helpers import write_bot

    from btc_quant.plugins.serve.app import ServeSettings, create_app
    from btc_quant.plugins.serve.bots import bot_view

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    write_bot(tmp_path, "gone", pid=proc.pid)  # its process has exited without a clean stop
    seen = []

    def quant_on_alert(alert):
        seen.append((alert.key, alert.level))
        raise RuntimeError("a broken observer")

    pm = load_plugins(env={"QUANT_LOAD_PLUGINS": ""}, extra={"a": make_plugin(quant_on_alert=quant_on_alert)})
    app = create_app(ServeSettings(home=tmp_path, token="t" * 32, studies_dir=tmp_path, plugins=pm))
    assert bot_view(tmp_path, "gone")["status"] == "dead"
    alerts = app.state.watchdog.check()
    assert seen == [("gone:dead", "alert")] and [a.kind for a in alerts] == ["dead"]

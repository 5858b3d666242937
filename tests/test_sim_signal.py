"""Signal strategies (``sdk.SignalStrategy``, the shipped ``sma_cross``): the sim's compiled
signal loop against the event path, fill for fill.

The event path (engine + sim broker + ``SignalStrategy.on_bar``) is the reference; each comparison
requires identical fills, orders (with client ids), trades, equity, metrics, funding, liquidation
marks and rejections (``assert_same_run`` of ``test_sim_pairs``). The comparison with Backtrader is
in ``test_backtrader.py``. Bars: real 1m stretches of the shared data set, the bundled real sample,
hypothesis random walks (labelled as such: not market data).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import test_sim_pairs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sim_pairs import PERP, assert_same_run, between, engine_for, random_walk_bars, venue_settings
from test_sim_pairs import both as both_paths

from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.core.run import backtest
from btc_quant.sdk import SignalStrategy
from btc_quant.sdk.indicators import sma
from btc_quant.sdk.testing import assert_causal, run_strategy

plugins, real_1m = test_sim_pairs.plugins, test_sim_pairs.real_1m  # the same module-scoped fixtures


def both(plugins, bars, *settings, strategy="sma_cross"):
    """(event path result, compiled result); the market is the settings' (default: spot)."""
    return both_paths(plugins, bars, *settings, strategy=strategy, market=())


@pytest.mark.parametrize(
    "settings",
    [
        ("broker.funding=constant",),
        ("broker.funding=constant", "broker.fill_model=touch", "broker.path=direction", "strategy.fast=3", "strategy.slow=7"),
        ("exchange=binance", "symbol=BTC/USDT"),  # spot
    ],
)
def test_real_stretch_fill_for_fill(plugins, real_1m, settings):
    bars = between(real_1m, "2021-04-26", "2021-05-20")  # into the 2021-05-19 crash
    settings = settings if "exchange=binance" in settings else (*PERP, *settings)
    event, fast = both(plugins, bars, *settings)
    assert len(event.fills) > 1000
    assert_same_run(event, fast)


def test_isolated_liquidations_fill_for_fill(plugins, real_1m):
    """95 % of equity at 50x isolated: a 2 % move against the position liquidates it, many times."""
    bars = between(real_1m, "2021-04-26", "2021-05-20")
    event, fast = both(plugins, bars, *PERP, "broker.funding=constant", "broker.margin_mode=isolated", "broker.leverage=50")
    assert event.metrics["liquidations"] > 3 and len(event.funding) > 10
    assert_same_run(event, fast)


def test_bundled_sample_and_quant_run(plugins):
    bars = read_bars_file(SAMPLE.path)
    event, fast = both(plugins, bars, *PERP)
    assert_same_run(event, fast)
    run = backtest(["strategy=sma_cross", *PERP], bars=bars[:20_000], plugins=plugins)
    assert run.compiled is True


class Flip(SignalStrategy):
    """Long 50 % above SMA(20), short 30 % below it, flat when the close sits within 0.1 %: exits by
    reduce-only orders, a new side only from flat."""

    name = "flip"

    def signal(self, bars):
        mean = sma(bars.close, 20)
        gap = bars.close / mean - 1
        return np.where(np.isnan(mean), np.nan, np.where(gap > 0.001, 0.5, np.where(gap < -0.001, -0.3, 0.0)))


@pytest.mark.parametrize("mode", ["cross", "isolated"])
def test_long_short_signal_fill_for_fill(plugins, real_1m, mode):
    if "flip" not in plugins.registry.names("strategy"):
        plugins.registry.add("strategy", "flip", Flip, "tests")
    bars = between(real_1m, "2024-08-01", "2024-08-10")  # the 2024-08-05 crash
    event, fast = both(plugins, bars, *PERP, "broker.funding=constant", f"broker.margin_mode={mode}", "broker.leverage=10", strategy="flip")
    assert set(event.fills.side) == {"buy", "sell"} and (event.orders.reduce_only).any()
    assert (event.position < 0).any() and (event.position > 0).any()
    assert_same_run(event, fast)


@pytest.mark.parametrize("mode", ["cross", "isolated"])
def test_bundled_sample_long_short_and_liquidations_fill_for_fill(plugins, mode):
    """The bundled real sample (in the repository: runs with or without the shared data set): the
    long/short signal at 50x; isolated, a 2 % move against a position liquidates it."""
    if "flip" not in plugins.registry.names("strategy"):
        plugins.registry.add("strategy", "flip", Flip, "tests")
    bars = read_bars_file(SAMPLE.path)
    event, fast = both(plugins, bars, *PERP, "broker.funding=constant", f"broker.margin_mode={mode}", "broker.leverage=50", strategy="flip")
    assert set(event.fills.side) == {"buy", "sell"} and (event.orders.reduce_only).any()
    assert (event.position < 0).any() and (event.position > 0).any()
    assert (event.metrics["liquidations"] >= 1) == (mode == "isolated")
    assert_same_run(event, fast)


def test_signal_wake_bars_are_causal(real_1m):
    bars = between(real_1m, "2024-08-01", "2024-08-03")
    assert_causal(Flip(), bars)


def test_a_quantity_below_the_minimum_sends_the_run_to_the_event_path(plugins):
    """Too little equity for the minimum notional: an OrderError on the event path, so the compiled
    loop stops and the event path raises it."""
    from btc_quant.core.errors import OrderError

    engine = engine_for(plugins, "sma_cross", ("broker.initial_cash=50",))
    assert engine.strategy.compiled_backtest(engine, read_bars_file(SAMPLE.path)[:3_000]) is None
    with pytest.raises(OrderError, match="minimum notional"):
        run_strategy("sma_cross", read_bars_file(SAMPLE.path)[:3_000], *PERP, "broker.initial_cash=50", plugins=plugins, compiled=True)


class Watched(Flip):
    name = "watched"

    def on_fill(self, ctx, fill):
        pass


def test_overriding_a_handler_sends_the_run_to_the_event_path(plugins):
    plugins.registry.add("strategy", "watched", Watched, "tests")
    engine = engine_for(plugins, "watched", ())
    assert "overrides on_fill" in engine.strategy.why_not(engine)
    assert engine.strategy.compiled_backtest(engine, read_bars_file(SAMPLE.path)[:2_000]) is None


# --- hypothesis: SYNTHETIC random-walk bars (not market data) -----------------------------------------
@st.composite
def walks(draw):
    bars = random_walk_bars(draw, 600, [0.001, 0.004, 0.01])
    strategy = draw(st.sampled_from(["sma_cross", "flip"]))
    return bars, [*PERP, f"strategy={strategy}", *venue_settings(draw, [1, 20, 100])]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(walks())
def test_random_walks_fill_for_fill(plugins, case):
    bars, settings = case
    if "flip" not in plugins.registry.names("strategy"):
        plugins.registry.add("strategy", "flip", Flip, "tests")
    strategy = next(s for s in settings if s.startswith("strategy=")).split("=")[1]
    rest = [s for s in settings if not s.startswith("strategy=")]
    event, fast = both(plugins, bars, *rest, strategy=strategy)
    assert_same_run(event, fast)


# --- the declared fast-path protocol, from a third-party package ------------------------------------
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quant-plugin-example"


@pytest.fixture(scope="module")
def donchian(plugins):
    """The example third-party plugin's strategy, registered as its entry point would register it."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        module = importlib.import_module("quant_plugin_example")
    finally:
        sys.path.remove(str(EXAMPLE))
    if "donchian" not in plugins.registry.names("strategy"):
        plugins.registry.add("strategy", "donchian", module.Donchian, "quant-plugin-example")
    return module


def test_a_third_party_signal_strategy_runs_compiled_through_the_protocol(plugins, donchian):
    source = (EXAMPLE / "quant_plugin_example.py").read_text()
    assert "btc_quant.plugins" not in source and "compiled_backtest" not in source  # no simulator import, no kernel of its own
    bars = read_bars_file(SAMPLE.path)[:20_000]
    event, fast = both(plugins, bars, "strategy.period=120", "strategy.exit_period=60", "broker.funding=constant", strategy="donchian")
    assert len(fast.fills) > 20
    assert_same_run(event, fast)


def test_the_sim_refuses_a_compiled_offer_with_a_reason(plugins, donchian):
    engine = engine_for(plugins, "donchian", ["broker.max_volume_share=0.5"], market=())
    assert engine.strategy.compiled_backtest(engine, read_bars_file(SAMPLE.path)[:2_000]) is None
    assert "max_volume_share" in engine.compiled_refusal
    offer = engine.strategy.compiled_decisions(engine)
    assert offer.kind == "signal" and offer.why_not is None  # the refusal is the broker's, not the strategy's
    assert "no 'queue' decision loop" in engine.broker.compiled_refusal(
        engine_for(plugins, "donchian", [], market=()), type(offer)("queue")
    )

"""Signal strategies (``sdk.SignalStrategy``, the shipped ``sma_cross``): the sim's compiled
signal loop against the event path, fill for fill.

The event path (engine + sim broker + ``SignalStrategy.on_bar``) is the reference; each comparison
requires identical fills, orders (with client ids), trades, equity, metrics, funding, liquidation
marks and rejections (``assert_same_run`` of ``test_sim_pairs``). The comparison with Backtrader is
in ``test_backtrader.py``. Bars: real 1m stretches of the shared data set, the bundled real sample,
hypothesis random walks (labelled as such: not market data).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from btc_quant.core.config import merge_layers, parse_assignments, resolve
from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.core.plugins import load_plugins
from btc_quant.core.run import backtest, build_engine, build_runtime
from btc_quant.sdk import SignalStrategy
from btc_quant.sdk.indicators import sma
from btc_quant.sdk.testing import assert_causal, bars_from, run_strategy

from test_sim_pairs import assert_same_run, between
from test_store import shared_file

PERP = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT")


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(env={})


@pytest.fixture(scope="module")
def real_1m():
    return read_bars_file(shared_file("binance_btcusdt_1m.parquet"))


def _engine(plugins, strategy, settings):
    config = resolve(merge_layers(parse_assignments([f"strategy={strategy}", *settings])), plugins.registry)
    return build_engine(config, build_runtime(config, plugins))


def both(plugins, bars, *settings, strategy="sma_cross"):
    event = _engine(plugins, strategy, settings).run_backtest(bars)
    engine = _engine(plugins, strategy, settings)
    fast = engine.strategy.compiled_backtest(engine, bars)
    assert fast is not None, "the compiled signal loop refused a run it should handle"
    assert fast.extra.get("compiled") is True and "compiled" not in event.extra
    return event, fast


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
    assert event.metrics["liquidations"] > 3 and len(event.extra["funding"]) > 10
    assert_same_run(event, fast)


def test_bundled_sample_and_quant_run(plugins):
    bars = read_bars_file(SAMPLE.path)
    event, fast = both(plugins, bars, *PERP)
    assert_same_run(event, fast)
    run = backtest(["strategy=sma_cross", *PERP], bars=bars[:20_000], plugins=plugins)
    assert run.extra.get("compiled") is True


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
    assert (event.extra["position"] < 0).any() and (event.extra["position"] > 0).any()
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
    assert (event.extra["position"] < 0).any() and (event.extra["position"] > 0).any()
    assert (event.metrics["liquidations"] >= 1) == (mode == "isolated")
    assert_same_run(event, fast)


def test_signal_wake_bars_are_causal(real_1m):
    bars = between(real_1m, "2024-08-01", "2024-08-03")
    assert_causal(Flip(), bars)


def test_a_quantity_below_the_minimum_sends_the_run_to_the_event_path(plugins):
    """Too little equity for the minimum notional: an OrderError on the event path, so the compiled
    loop stops and the event path raises it."""
    from btc_quant.core.errors import OrderError

    engine = _engine(plugins, "sma_cross", (*PERP, "broker.initial_cash=50"))
    assert engine.strategy.compiled_backtest(engine, read_bars_file(SAMPLE.path)[:3_000]) is None
    with pytest.raises(OrderError, match="minimum notional"):
        run_strategy("sma_cross", read_bars_file(SAMPLE.path)[:3_000], *PERP, "broker.initial_cash=50", plugins=plugins, compiled=True)


class Watched(Flip):
    name = "watched"

    def on_fill(self, ctx, fill):
        pass


def test_overriding_a_handler_sends_the_run_to_the_event_path(plugins):
    plugins.registry.add("strategy", "watched", Watched, "tests")
    engine = _engine(plugins, "watched", PERP)
    assert "overrides on_fill" in engine.strategy.why_not(engine)
    assert engine.strategy.compiled_backtest(engine, read_bars_file(SAMPLE.path)[:2_000]) is None


# --- hypothesis: SYNTHETIC random-walk bars (not market data) -----------------------------------------
@st.composite
def walks(draw):
    n = draw(st.integers(60, 600))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    vol = draw(st.sampled_from([0.001, 0.004, 0.01]))
    close = 40_000.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    if draw(st.booleans()):
        close[draw(st.integers(0, n - 1)):] *= draw(st.floats(0.5, 0.9))
    open_ = np.r_[40_000.0, close[:-1]] * np.exp(rng.normal(0.0, vol / 4, n) * draw(st.sampled_from([0.0, 1.0])))
    span = np.abs(rng.normal(0.0, vol, n)) * close
    high = np.maximum(open_, close) + span * rng.random(n)
    low = np.minimum(open_, close) - span * rng.random(n)
    rows = [(round(o, 1), round(h, 1) + 0.1, round(lo, 1) - 0.1, round(c, 1)) for o, h, lo, c in zip(open_, high, low, close)]
    rows = [(o, max(h, o, c), min(lo, o, c), c) for o, h, lo, c in rows]
    settings = [
        *PERP,
        f"strategy={draw(st.sampled_from(['sma_cross', 'flip']))}",
        f"broker.fill_model={draw(st.sampled_from(['through', 'touch']))}",
        f"broker.path={draw(st.sampled_from(['nearest', 'direction']))}",
        f"broker.margin_mode={draw(st.sampled_from(['cross', 'isolated']))}",
        f"broker.leverage={draw(st.sampled_from([1, 20, 100]))}",
        f"broker.funding_interval={draw(st.sampled_from(['8h', '30m']))}",
        "broker.funding=constant",
    ]
    return bars_from(rows, step_ms=900_000), settings


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

"""Order pairs (``sdk.PairGrid``, the shipped ``grid``): the sim's compiled pair loop against the
event path, fill for fill.

The event path (engine + sim broker + PairGrid's ``on_fill``) is the reference. Each comparison
runs the same bars and settings through both and requires identical fills (time, side, price,
quantity, fee, trade id, maker flag, liquidation flag, tag, bar), identical orders (status,
reason, prices, quantities, times, client ids), identical equity, trades, metrics, funding,
liquidation marks and rejections. Bars: real 1m stretches of the shared data set and the bundled
real sample; hypothesis random walks (labelled as such: not market data).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store import shared_file

from btc_quant.core.config import merge_layers, parse_assignments, resolve
from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.core.plugins import load_plugins
from btc_quant.core.run import backtest, build_engine, build_runtime
from btc_quant.plugins.brokers.sim.pairs import why_not as broker_why_not
from btc_quant.sdk import OrderPair, PairGrid
from btc_quant.sdk.testing import bars_from, run_strategy

PERP = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT")


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(env={})


@pytest.fixture(scope="module")
def real_1m():
    return read_bars_file(shared_file("binance_btcusdt_1m.parquet"))


def between(bars, start, end):
    out = bars.between(int(pd.Timestamp(start, tz="UTC").value // 1_000_000), int(pd.Timestamp(end, tz="UTC").value // 1_000_000))
    assert len(out.stretches(60_000)) == 1
    return out


def engine_for(plugins, strategy, settings, market=PERP):
    """An engine for ``strategy`` with ``settings`` after the ``market`` settings (a perpetual)."""
    config = resolve(merge_layers(parse_assignments([f"strategy={strategy}", *market, *settings])), plugins.registry)
    return build_engine(config, build_runtime(config, plugins))


def both(plugins, bars, *settings, strategy="grid", market=PERP):
    """(event path result, compiled result) for the same bars and settings."""
    event = engine_for(plugins, strategy, settings, market).run_backtest(bars)
    engine = engine_for(plugins, strategy, settings, market)
    fast = engine.strategy.compiled_backtest(engine, bars)
    assert fast is not None, f"the compiled {strategy} loop refused a run it should handle"
    assert fast.compiled is True and not event.compiled
    return event, fast


def _number(ids: pd.Series) -> pd.Series:
    """Client ids carry the run id (prefix-N): compare N; liquidations keep theirs."""
    return ids.where(ids.str.startswith("liquidation-"), ids.str.rsplit("-", n=1).str[-1])


def assert_same_run(event, fast):
    cols = ["ts", "side", "price", "quantity", "fee", "trade_id", "is_maker", "is_liquidation", "tag", "bar"]
    pdt.assert_frame_equal(event.fills[cols], fast.fills[cols])
    pdt.assert_series_equal(_number(event.fills.client_id), _number(fast.fills.client_id))
    pdt.assert_frame_equal(event.orders.drop(columns="client_id"), fast.orders.drop(columns="client_id"))
    pdt.assert_series_equal(_number(event.orders.client_id), _number(fast.orders.client_id))
    pdt.assert_frame_equal(event.trades, fast.trades)
    pdt.assert_series_equal(event.equity, fast.equity, rtol=0, atol=0)
    for key in ("position", "liquidation_price", "liquidation_distance"):
        pdt.assert_series_equal(getattr(event, key), getattr(fast, key))
    pdt.assert_frame_equal(event.funding, fast.funding)
    assert event.rejections == fast.rejections
    assert event.metrics == fast.metrics


# --- real bars ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["through", "touch"])
@pytest.mark.parametrize("path", ["nearest", "direction"])
def test_real_stretch_fill_for_fill(plugins, real_1m, model, path):
    """2021-05-17 .. 21 (the 2021-05-19 crash): the long grid fills, re-arms and pays funding."""
    bars = between(real_1m, "2021-05-17", "2021-05-21")
    event, fast = both(plugins, bars, f"broker.fill_model={model}", f"broker.path={path}", "broker.funding=constant")
    assert len(event.fills) > 100 and len(event.funding) > 5
    assert (event.orders.status == "filled").sum() > 100
    assert_same_run(event, fast)


#: half a BTC a level at 50x, filled on touch: a grid that the crashes below liquidate
LIQUIDATING = ("strategy.quantity=0.5", "broker.leverage=50", "broker.funding=constant", "broker.fill_model=touch")


@pytest.mark.parametrize("mode", ["isolated", "cross"])
def test_liquidation_fill_for_fill(plugins, real_1m, mode):
    """A long grid of 0.5 BTC a level at 50x through the 2021-05-19 crash is liquidated: its
    orders are canceled, the position closed at Binance's liquidation price with the clearance fee;
    the margin check refuses the deeper levels first."""
    bars = between(real_1m, "2021-05-18", "2021-05-20")
    event, fast = both(plugins, bars, *LIQUIDATING, f"broker.margin_mode={mode}")
    assert event.metrics["liquidations"] >= 1
    assert (event.orders.reason == "liquidation").sum() > 0 and event.rejections > 0
    assert event.fills.is_liquidation.any()
    assert_same_run(event, fast)


@pytest.mark.parametrize("model", ["through", "touch"])
def test_bundled_sample_fill_for_fill(plugins, model):
    """The bundled real sample (BTCUSDT perpetual 1m, January 2022, in the repository: this runs
    wherever the tests do, the shared data set or not): the grid fills and re-arms through the
    month's fall and pays funding."""
    bars = read_bars_file(SAMPLE.path)
    event, fast = both(plugins, bars, f"broker.fill_model={model}", "broker.funding=constant")
    assert len(event.fills) > 50 and len(event.funding) > 20
    assert_same_run(event, fast)


@pytest.mark.parametrize("mode", ["isolated", "cross"])
def test_bundled_sample_liquidation_fill_for_fill(plugins, mode):
    """0.5 BTC a level at 50x through January 2022's fall (47k -> 33k) on the bundled sample."""
    bars = read_bars_file(SAMPLE.path)
    event, fast = both(plugins, bars, *LIQUIDATING, f"broker.margin_mode={mode}")
    assert event.metrics["liquidations"] >= 1 and event.fills.is_liquidation.any()
    assert_same_run(event, fast)


def test_short_grid_with_margin_refusals_fill_for_fill(plugins, real_1m):
    """A short grid (sell entries above the first price, buy take-profits below) through the
    2024-02 rally, cross margin at 5x: refusals, funding received and paid."""
    bars = between(real_1m, "2024-02-13", "2024-02-23")
    event, fast = both(
        plugins,
        bars,
        "strategy.side=short",
        "strategy.step_pct=0.002",
        "strategy.quantity=0.3",
        "broker.leverage=5",
        "broker.funding=constant",
    )
    assert len(event.fills) > 20 and event.rejections > 0
    assert_same_run(event, fast)


def test_spot_grid_fill_for_fill(plugins):
    """Spot (no leverage, no funding, no liquidation) on the bundled real sample."""
    bars = read_bars_file(SAMPLE.path)[:20_000]
    event, fast = both(plugins, bars, "exchange=binance", "symbol=BTC/USDT", "strategy.step_pct=0.003", "strategy.quantity=0.02")
    assert len(event.fills) > 50
    assert event.funding.empty
    assert_same_run(event, fast)


class Crossing(PairGrid):
    """Legs on the wrong side of the price on arrival (a post-only one expires, a plain one is a taker)."""

    post_only = True

    def pairs(self, ctx):
        p = ctx.price
        return [OrderPair("buy", 0.01, p * 1.01, p * 1.02, post_only=self.post_only), OrderPair("buy", 0.01, p * 0.99, p * 0.995)]


class CrossingTaker(Crossing):
    post_only = False


def test_post_only_leg_that_would_cross_expires_on_both_paths(plugins):
    bars = read_bars_file(SAMPLE.path)[:3_000]
    plugins.registry.add("strategy", "crossing", Crossing, "tests")
    event, fast = both(plugins, bars, strategy="crossing")
    first = event.orders.iloc[0]
    assert first.status == "expired" and "would cross" in first.reason
    assert_same_run(event, fast)


def test_a_taker_leg_sends_the_run_to_the_event_path(plugins):
    """The compiled loop does not fill takers: it stops and the event path runs the backtest."""
    bars = read_bars_file(SAMPLE.path)[:3_000]
    result = run_strategy(CrossingTaker, bars, *PERP, plugins=plugins, compiled=True)
    assert not result.compiled
    assert not result.fills.is_maker.iloc[0] and result.fills.tag.iloc[0] == "pair0:entry"


# --- hypothesis: SYNTHETIC random-walk bars (not market data) -----------------------------------------
def random_walk_bars(draw, max_bars, vols):
    """60..max_bars bars 15 minutes apart, a random walk from 40,000 (volatility one of ``vols``) with
    a crash somewhere half the time; the seed and the shape are drawn by hypothesis."""
    n = draw(st.integers(60, max_bars))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    vol = draw(st.sampled_from(vols))
    close = 40_000.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    if draw(st.booleans()):  # a crash somewhere
        close[draw(st.integers(0, n - 1)) :] *= draw(st.floats(0.5, 0.9))
    open_ = np.r_[40_000.0, close[:-1]] * np.exp(rng.normal(0.0, vol / 4, n) * draw(st.sampled_from([0.0, 1.0])))
    span = np.abs(rng.normal(0.0, vol, n)) * close
    high = np.maximum(open_, close) + span * rng.random(n)
    low = np.minimum(open_, close) - span * rng.random(n)
    rows = [(round(o, 1), round(h, 1) + 0.1, round(lo, 1) - 0.1, round(c, 1)) for o, h, lo, c in zip(open_, high, low, close)]
    rows = [(o, max(h, o, c), min(lo, o, c), c) for o, h, lo, c in rows]
    return bars_from(rows, step_ms=900_000)


def venue_settings(draw, leverages):
    """The sim's settings a random-walk comparison draws: fill model, path, margin mode, leverage, funding."""
    return [
        f"broker.fill_model={draw(st.sampled_from(['through', 'touch']))}",
        f"broker.path={draw(st.sampled_from(['nearest', 'direction']))}",
        f"broker.margin_mode={draw(st.sampled_from(['cross', 'isolated']))}",
        f"broker.leverage={draw(st.sampled_from(leverages))}",
        f"broker.funding_interval={draw(st.sampled_from(['8h', '30m']))}",
        "broker.funding=constant",
    ]


@st.composite
def walks(draw):
    bars = random_walk_bars(draw, 400, [0.001, 0.003, 0.008])
    settings = [
        *venue_settings(draw, [2, 20, 100]),
        f"strategy.side={draw(st.sampled_from(['long', 'short']))}",
        f"strategy.step_pct={draw(st.sampled_from([0.001, 0.004, 0.01]))}",
        f"strategy.levels={draw(st.sampled_from([3, 40]))}",
        f"strategy.quantity={draw(st.sampled_from([0.01, 0.2, 1.0]))}",
    ]
    return bars, settings


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(walks())
def test_random_walks_fill_for_fill(plugins, case):
    bars, settings = case
    event, fast = both(plugins, bars, *settings)
    assert_same_run(event, fast)


# --- the event path itself, and where the compiled loop applies ------------------------------------------
def test_entry_fill_places_take_profit_whose_fill_rearms_the_entry(plugins):
    """Hand-made bars: price falls through the 99 entry, rises through its 100 take-profit, falls
    through 99 again. Event path (as on paper and live)."""

    class One(PairGrid):
        def pairs(self, ctx):
            return [OrderPair("buy", 1.0, 99.0, 100.0, tag="one")]

    rows = [(100.5, 100.6, 100.4, 100.5), (100.5, 100.5, 98.5, 98.8), (98.8, 100.5, 98.7, 100.4), (100.4, 100.4, 98.6, 98.7)]
    result = run_strategy(One, bars_from(rows), "instrument.min_notional=0", plugins=plugins)
    fills = result.fills
    assert fills.side.tolist() == ["buy", "sell", "buy"]
    assert fills.price.tolist() == [99.0, 100.0, 99.0] and fills.bar.tolist() == [1, 2, 3]
    assert fills.tag.tolist() == ["one:entry", "one:tp", "one:entry"]
    assert result.orders.status.tolist() == ["filled", "filled", "filled", "new"]


def test_quant_run_uses_the_compiled_loop(plugins):
    bars = read_bars_file(SAMPLE.path)[:12_000]
    fast = backtest(["strategy=grid", *PERP], bars=bars, plugins=plugins)
    event = run_strategy("grid", bars, *PERP, plugins=plugins)
    assert fast.compiled is True and not event.compiled
    assert len(fast.fills) > 10 and fast.metrics == event.metrics


class Observed(PairGrid):
    """A grid that also looks at its fills: the compiled loop cannot call it, the event path runs."""

    def pairs(self, ctx):
        return [OrderPair("buy", 0.01, ctx.price * 0.99, ctx.price)]

    def on_fill(self, ctx, fill):
        super().on_fill(ctx, fill)


@pytest.mark.parametrize(
    ("strategy", "setting", "reason"),
    [
        (Observed, (), "overrides on_fill"),
        ("grid", ("risk.checks=max_open_orders",), "risk checks"),
    ],
)
def test_conditions_send_other_runs_to_the_event_path(plugins, strategy, setting, reason):
    name = strategy
    if isinstance(strategy, type):
        name = "observed"
        plugins.registry.add("strategy", name, strategy, "tests")
    engine = engine_for(plugins, name, setting)
    assert reason in (engine.strategy.why_not(engine) or "")
    assert engine.strategy.compiled_backtest(engine, read_bars_file(SAMPLE.path)[:2_000]) is None


def test_volume_cap_sends_the_run_to_the_event_path(plugins):
    engine = engine_for(plugins, "grid", ("broker.max_volume_share=0.5",))
    assert engine.strategy.why_not(engine) is None
    assert "max_volume_share" in (broker_why_not(engine.broker) or "")
    assert engine.strategy.compiled_backtest(engine, read_bars_file(SAMPLE.path)[:2_000]) is None


def test_a_third_party_fill_model_is_honoured_alike_by_both_paths(plugins):
    """A fill model registered by another plugin is an object the venue core reads the same way on
    every path (its ``strict`` flag): the compiled loop accepts it and fills as the event path."""
    from btc_quant.sdk import FillModel

    if "strict_copy" not in plugins.registry.names("fill_model"):
        plugins.registry.add("fill_model", "strict_copy", FillModel("strict_copy", True, "a third party's through"), "tests")
    bars = read_bars_file(SAMPLE.path)[:15_000]
    event, fast = both(plugins, bars, "broker.fill_model=strict_copy", "broker.funding=constant")
    _, through = both(plugins, bars, "broker.fill_model=through", "broker.funding=constant")
    assert len(event.fills) > 20
    assert_same_run(event, fast)
    assert_same_run(through, fast)  # strict=True is `through`, whatever its name

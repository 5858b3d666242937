"""maker_vol's compiled backtest against the event path, fill for fill.

The event path (engine + sim broker + MakerVol + OrderSync) is the reference. Every test runs the
same bars and settings through both and requires identical fills (time, side, price, quantity,
fee, trade id, tag, bar), identical orders (status, prices, quantities, client ids), identical
equity, liquidation marks, funding and grid diagnostics. Bars: the bundled real sample, real 1m
stretches of the shared data set (the 2021-05-19 and 2024-08-05 crashes), the SYNTHETIC flash
crash of ``test_maker_vol_flash_crash`` (saturation and liquidation on purpose) and
hypothesis-generated bar sequences (random walks, labelled as such: not market data).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from btc_quant.core.config import merge_layers, parse_assignments, resolve
from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.core.plugins import load_plugins
from btc_quant.core.run import backtest, build_engine, build_runtime
from btc_quant.plugins.strategies.maker_vol_kernel import base36_array, numbered_text, why_not
from btc_quant.sdk.ordersync import base36
from btc_quant.sdk.testing import bars_from

from test_maker_vol_flash_crash import synthetic_flash_crash
from test_store import shared_file

PERP = ("strategy=maker_vol", "broker=sim", "exchange=binanceusdm", "symbol=BTC/USDT:USDT")


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(env={})


def _engine(plugins, settings):
    config = resolve(merge_layers(parse_assignments([*PERP, *settings])), plugins.registry)
    return build_engine(config, build_runtime(config, plugins))


def both(plugins, bars, *settings):
    """(event path result, compiled result) for the same bars and settings."""
    event = _engine(plugins, settings).run_backtest(bars)
    engine = _engine(plugins, settings)
    fast = engine.strategy.compiled_backtest(engine, bars)
    assert fast is not None, "the compiled path refused a run it should handle"
    assert fast.extra.get("compiled") is True and "compiled" not in event.extra
    return event, fast


def _close_ids(ids: pd.Series) -> pd.Series:
    """Market closes get the engine's ids (prefix = strategy + run id): compare their number only."""
    return ids.where(ids.str.startswith("mv:") | ids.str.startswith("liquidation-"), ids.str.rsplit("-", n=1).str[-1])


def assert_same_run(event, fast):
    cols = ["ts", "side", "price", "quantity", "fee", "trade_id", "is_maker", "is_liquidation", "tag", "bar"]
    pdt.assert_frame_equal(event.fills[cols], fast.fills[cols])
    pdt.assert_series_equal(_close_ids(event.fills.client_id), _close_ids(fast.fills.client_id))
    pdt.assert_frame_equal(event.orders.drop(columns="client_id"), fast.orders.drop(columns="client_id"))
    pdt.assert_frame_equal(event.trades, fast.trades)
    pdt.assert_series_equal(_close_ids(event.orders.client_id), _close_ids(fast.orders.client_id))
    pdt.assert_series_equal(event.equity, fast.equity, rtol=1e-9)
    for key in ("position", "liquidation_price", "liquidation_distance"):
        pdt.assert_series_equal(event.extra[key], fast.extra[key])
    pdt.assert_frame_equal(event.extra["funding"], fast.extra["funding"])
    assert event.extra["rejections"] == fast.extra["rejections"]
    assert event.metrics == fast.metrics
    a, b = event.extra["diagnostics"], fast.extra["diagnostics"]
    assert a["summary"] == b["summary"]
    assert a["pnl_attribution"] == pytest.approx(b["pnl_attribution"], rel=1e-9, abs=1e-9)
    for key in ("fills_per_level", "entries", "saturations", "round_trips", "samples"):
        pdt.assert_frame_equal(a[key].reset_index(drop=True), b[key].reset_index(drop=True), check_dtype=False)


# --- real bars ----------------------------------------------------------------------------------------
def test_bundled_sample_fill_for_fill(plugins):
    bars = read_bars_file(SAMPLE.path)[:12_000]
    event, fast = both(plugins, bars)
    assert len(event.fills) > 1_000 and event.extra["diagnostics"]["summary"]["saturation_closes"] > 0
    assert_same_run(event, fast)


@pytest.mark.parametrize(
    ("start", "end", "settings"),
    [
        ("2021-05-17", "2021-05-21", ()),  # the 2021-05-19 crash: fast fall through the grid, saturation
        ("2021-05-17", "2021-05-21", ("broker.fill_model=touch", "broker.path=direction", "strategy.bottom_ratio=0.8")),
        ("2024-08-03", "2024-08-07", ("strategy.order_pct=0.02", "strategy.max_live_orders=8")),  # 2024-08-05 crash, cash pauses
    ],
)
def test_real_crash_stretches_fill_for_fill(plugins, start, end, settings):
    bars = read_bars_file(shared_file("binance_btcusdt_1m.parquet"))
    bars = bars.between(int(pd.Timestamp(start, tz="UTC").value // 1_000_000), int(pd.Timestamp(end, tz="UTC").value // 1_000_000))
    assert len(bars.stretches(60_000)) == 1
    event, fast = both(plugins, bars, *settings)
    assert len(event.fills) > 200
    assert_same_run(event, fast)


# --- SYNTHETIC flash crash (saturation, liquidation) -------------------------------------------------
@pytest.mark.parametrize(
    "settings",
    [(), ("strategy.bottom_ratio=0.75",), ("broker.fill_model=touch", "broker.path=direction"), ("strategy.bottom_ratio=0.75", "broker.fill_model=touch")],
)
def test_synthetic_flash_crash_fill_for_fill(plugins, settings):
    event, fast = both(plugins, synthetic_flash_crash(), *settings)
    assert event.extra["diagnostics"]["summary"]["saturation_closes"] > 0
    if "strategy.bottom_ratio=0.75" in settings:
        assert event.metrics["liquidations"] == 1 == fast.metrics["liquidations"]
    assert_same_run(event, fast)


# --- hypothesis: SYNTHETIC random-walk bars (not market data) -----------------------------------------
@st.composite
def walks(draw):
    n = draw(st.integers(60, 400))
    seed = draw(st.integers(0, 2**31 - 1))
    vol = draw(st.sampled_from([0.001, 0.003, 0.008]))
    rng = np.random.default_rng(seed)
    close = 40_000.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    if draw(st.booleans()):  # a crash somewhere
        at = draw(st.integers(0, n - 1))
        close[at:] *= draw(st.floats(0.5, 0.9))
    open_ = np.r_[40_000.0, close[:-1]] * np.exp(rng.normal(0.0, vol / 4, n) * draw(st.sampled_from([0.0, 1.0])))
    span = np.abs(rng.normal(0.0, vol, n)) * close
    high = np.maximum(open_, close) + span * rng.random(n)
    low = np.minimum(open_, close) - span * rng.random(n)
    rows = [(round(o, 1), round(h, 1) + 0.1, round(lo, 1) - 0.1, round(c, 1)) for o, h, lo, c in zip(open_, high, low, close)]
    rows = [(o, max(h, o, c), min(lo, o, c), c) for o, h, lo, c in rows]
    settings = [
        f"broker.fill_model={draw(st.sampled_from(['through', 'touch']))}",
        f"broker.path={draw(st.sampled_from(['nearest', 'direction']))}",
        f"strategy.order_pct={draw(st.sampled_from([0.002, 0.01, 0.05]))}",
        f"strategy.max_live_orders={draw(st.sampled_from([3, 20]))}",
        f"strategy.bottom_ratio={draw(st.sampled_from([0.5, 0.8, 0.9]))}",
        f"strategy.recompute={draw(st.sampled_from(['10m', '1h']))}",
        f"strategy.lookback={draw(st.sampled_from(['30m', '30d']))}",
        f"broker.funding_interval={draw(st.sampled_from(['8h', '30m']))}",
    ]
    # 15-minute spacing: a run of a few hours compounds its return to a year (CAGR) past float range
    return bars_from(rows, step_ms=900_000), settings


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(walks())
def test_random_walks_fill_for_fill(plugins, case):
    bars, settings = case
    event, fast = both(plugins, bars, *settings)
    assert_same_run(event, fast)


# --- where the compiled path applies ------------------------------------------------------------------
def test_quant_run_uses_the_compiled_path_and_fast_false_the_event_path():
    bars = read_bars_file(SAMPLE.path)[:3_000]
    fast = backtest([*PERP], bars=bars)
    event = backtest([*PERP, "strategy.fast=false"], bars=bars)
    assert fast.extra.get("compiled") is True and "compiled" not in event.extra
    assert fast.metrics == event.metrics
    pdt.assert_frame_equal(fast.fills.drop(columns="client_id"), event.fills.drop(columns="client_id"))


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("strategy.fast=false", "strategy.fast=false"),
        ("strategy.side=short", "side=short"),
        ("strategy.side=both", "side=both"),
        ("strategy.global_stop=0.2", "global_stop"),
        ("strategy.max_requests=5", "max_requests"),
        ("broker.max_volume_share=0.5", "max_volume_share"),
        ("risk.checks=max_open_orders", "risk checks"),
    ],
)
def test_conditions_send_other_runs_to_the_event_path(plugins, setting, reason):
    engine = _engine(plugins, [setting])
    assert reason in (why_not(engine.strategy, engine) or "")
    assert why_not(_engine(plugins, []).strategy, _engine(plugins, [])) is None
    bars = read_bars_file(SAMPLE.path)[:2_000]
    assert engine.strategy.compiled_backtest(engine, bars) is None


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5), st.floats(0.5, 2.0)), min_size=1, max_size=60))
def test_compiled_trades_match_trades_frame(rows):
    """The compiled flat-to-flat walk gives trades_frame's rows (buys and sells that cross zero)."""
    from btc_quant.core.metrics import trades_frame
    from btc_quant.plugins.strategies.maker_vol_kernel import _trades_frame

    fills = pd.DataFrame({
        "ts": pd.to_datetime(np.arange(len(rows), dtype=np.int64) * 60_000, unit="ms", utc=True),
        "side": ["buy" if b else "sell" for b, _, _ in rows],
        "price": [100.0 * p for _, _, p in rows],
        "quantity": [q * 0.001 for _, q, _ in rows],
        "fee": [0.01 * q for _, q, _ in rows],
    })
    pdt.assert_frame_equal(_trades_frame(fills), trades_frame(fills))


def test_base36_array_matches_base36():
    values = np.array([0, 1, 35, 36, 1295, 1296, 1_764_000_000_000, 2**40 + 12345])
    assert base36_array(values).to_pylist() == [base36(int(v)) for v in values]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**53), st.integers(0, 2**53)), max_size=40))
def test_numbered_text_matches_fstrings(rows):
    forms = [("mv:b", 10, ".", 36), ("sim-", 10), ("", 36, "x", 10), ("liquidation", 0)]
    expected = [
        f"mv:b{a}.{base36(b)}" if f == 0 else f"sim-{a}" if f == 1 else f"{base36(a)}x{b}" if f == 2 else "liquidation"
        for f, a, b in rows
    ]
    form, first, second = (np.array([row[k] for row in rows], dtype=np.int64) for k in range(3))
    assert numbered_text(forms, form, first, second).to_pylist() == expected

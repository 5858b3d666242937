"""Liquidation on the mark price (Binance) versus the last price, in every backtest path.

Real data: the Binance USDⓈ-M BTCUSDT perpetual's hourly trade klines and hourly mark-price klines
of the COVID crash (``../shared/data``). At 2020-03-13 02:00 UTC the last-price low was 3,621.81
while the mark low was 3,801.83: a long whose liquidation price lies between the two is liquidated
when the last price triggers it and survives when the mark price does (Binance's rule).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_sim_pairs import assert_same_run
from test_store import shared_file

from btc_quant.core.config import merge_layers, parse_assignments, resolve
from btc_quant.core.data import BarArrays, align_mark, read_bars_file
from btc_quant.core.errors import DataError
from btc_quant.core.plugins import load_plugins
from btc_quant.core.run import build_engine, build_runtime
from btc_quant.plugins.brokers.sim.venue import liquidation_bounds
from btc_quant.sdk import OrderPair, PairGrid, SignalStrategy

HOUR = 3_600_000
START = 1_584_061_200_000  # 2020-03-13 01:00 UTC
CRASH = 1_584_064_800_000  # 2020-03-13 02:00 UTC: last low 3,621.81, mark low 3,801.83
PERP = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT", "timeframe=1h", "broker.funding=off", "broker.check_margin=false")


@pytest.fixture(scope="module")
def plugins():
    """A plugin manager of this module's own: the test strategies registered here must not show
    up in other modules' choice lists (the session-wide one is shared)."""
    return load_plugins(env={})


@pytest.fixture(scope="module")
def crash_bars():
    """Hourly perp bars 2020-03-13 01:00 .. 12:00 and the same bars carrying the mark klines."""
    last = read_bars_file(shared_file("binance_btcusdt_perp_1h.parquet")).between(START, START + 12 * HOUR)
    mark = read_bars_file(shared_file("binance_btcusdt_perp_mark_1h.parquet"))
    return last, last.with_mark(mark, HOUR, HOUR)


class AllIn(SignalStrategy):
    """Long ``share`` x equity from the first close, never closed."""

    name = "mark_test_allin"
    share = 10.7

    def signal(self, bars):
        out = np.full(len(bars), np.nan)
        out[0] = self.share
        return out


class OnePair(PairGrid):
    """One long entry resting just below the first close (it fills on the crash bar), take-profit far away."""

    name = "mark_test_pair"

    def pairs(self, ctx):
        return [OrderPair("buy", 26.0, 4050.0, 9000.0)]


def _engine(plugins, strategy, *settings):
    plugins.registry.add("strategy", strategy.name, strategy, "tests") if strategy.name not in plugins.registry.names("strategy") else None
    config = resolve(merge_layers(parse_assignments([f"strategy={strategy.name}", *PERP, *settings])), plugins.registry)
    return build_engine(config, build_runtime(config, plugins))


def _runs(plugins, strategy, bars, *settings):
    """(event-path result, compiled result) of ``strategy`` over ``bars``."""
    event = _engine(plugins, strategy, *settings).run_backtest(bars)
    engine = _engine(plugins, strategy, *settings)
    fast = engine.strategy.compiled_backtest(engine, bars)
    assert fast is not None and fast.compiled is True, "the compiled loop refused the run"
    return event, fast


def test_the_crash_bar_has_the_mark_low_above_the_last_low(crash_bars):
    last, marked = crash_bars
    i = int(np.searchsorted(last.ts, CRASH))
    assert last.low[i] == pytest.approx(3621.81)
    assert marked.mark_low[i] == pytest.approx(3801.83, abs=0.01)
    low, _high, source = liquidation_bounds(marked)
    assert source == "mark" and low[i] == pytest.approx(3801.83, abs=0.01)
    assert liquidation_bounds(last)[2] == "last"


@pytest.mark.parametrize("strategy", [AllIn, OnePair], ids=["signal", "pairs"])
def test_a_long_between_mark_and_last_low_dies_on_last_and_survives_on_mark(plugins, crash_bars, strategy):
    last, marked = crash_bars
    i = int(np.searchsorted(last.ts, CRASH))
    on_last, on_last_fast = _runs(plugins, strategy, last)
    on_mark, on_mark_fast = _runs(plugins, strategy, marked)
    # the position's liquidation price at the crash bar lies between the two lows
    liq = on_mark.liquidation_price.to_numpy()[i]
    assert last.low[i] < liq < marked.mark_low[i], f"liquidation price {liq} is not between the lows: change the position size"
    assert on_last.metrics["liquidations"] == 1
    liq_fill = on_last.fills[on_last.fills.is_liquidation]
    assert int(liq_fill.bar.iloc[0]) == i and liq_fill.price.iloc[0] == pytest.approx(liq)  # the same position, closed at its price
    assert on_mark.metrics["liquidations"] == 0
    assert on_mark.position.to_numpy()[-1] > 0  # still long at the end
    # the compiled loop gives the same run as the event path, under both rules
    assert_same_run(on_last, on_last_fast)
    assert_same_run(on_mark, on_mark_fast)


def test_a_short_uses_the_mark_high(plugins):
    """Synthetic bars (not market data): the last-price high spikes past a short's liquidation
    price, the mark high does not; then both do."""
    ts = START + HOUR * np.arange(6)
    close = np.full(6, 100.0)
    high = np.array([100.0, 100.0, 130.0, 100.0, 130.0, 100.0])
    bars = BarArrays(ts, close.copy(), high, close - 1, close.copy(), np.ones(6))
    mark = BarArrays(ts, close.copy(), np.array([100.0, 100.0, 101.0, 100.0, 129.0, 100.0]), close - 1, close.copy(), np.zeros(6))
    marked = bars.with_mark(mark, HOUR, HOUR)

    class Short(AllIn):
        name = "mark_test_short"
        share = -10.0

    on_last = _engine(plugins, Short, "instrument.min_notional=0").run_backtest(bars)
    on_mark = _engine(plugins, Short, "instrument.min_notional=0").run_backtest(marked)
    assert on_last.fills[on_last.fills.is_liquidation].bar.tolist() == [2]
    assert on_mark.fills[on_mark.fills.is_liquidation].bar.tolist() == [4]


def test_hourly_mark_under_minute_bars_and_minute_mark_under_hourly_bars():
    """Synthetic klines (not market data): how mark klines of another timeframe map onto the bars."""
    minute = 60_000
    ts = START + minute * np.arange(120)
    mark = BarArrays(START + HOUR * np.arange(2), np.ones(2), np.array([5.0, 7.0]), np.array([1.0, 2.0]), np.ones(2), np.zeros(2))
    low, high = align_mark(ts, minute, mark, HOUR)
    assert low.tolist() == [1.0] * 60 + [2.0] * 60 and high.tolist() == [5.0] * 60 + [7.0] * 60
    fine = BarArrays(ts, np.ones(120), np.arange(120.0) + 2, np.arange(120.0), np.ones(120), np.zeros(120))
    low, high = align_mark(START + HOUR * np.arange(2), HOUR, fine, minute)
    assert low.tolist() == [0.0, 60.0] and high.tolist() == [61.0, 121.0]
    with pytest.raises(DataError, match="no mark kline covers the bar at 2020-03-13 03:00"):
        align_mark(START + HOUR * np.arange(3), HOUR, mark, HOUR)


def test_maker_vol_kernel_triggers_on_the_mark_as_the_event_path_does(plugins):
    """maker_vol's compiled kernel against the event path on the SYNTHETIC flash crash (not market
    data) of ``test_maker_vol_flash_crash``, which liquidates the grid on the last price; with a
    mark price that stays at the first open (a mark kline per bar that never moves) nothing is
    liquidated, and both paths agree fill for fill."""
    from test_maker_vol_flash_crash import synthetic_flash_crash
    from test_maker_vol_kernel import assert_same_run as assert_same_maker_vol_run
    from test_maker_vol_kernel import both

    bars = synthetic_flash_crash()
    flat = np.full(len(bars), float(bars.open[0]))
    body = BarArrays(bars.ts, flat, flat, flat, flat, np.zeros(len(bars)))
    step = int(np.diff(bars.ts).min())
    marked = bars.with_mark(body, step, step)
    event, fast = both(plugins, bars, "strategy.bottom_ratio=0.75")
    assert event.metrics["liquidations"] == 1
    event_m, fast_m = both(plugins, marked, "strategy.bottom_ratio=0.75")
    assert_same_maker_vol_run(event_m, fast_m)
    assert event_m.metrics["liquidations"] == 0 and len(event_m.fills) > 10


def test_hourly_mark_klines_under_minute_bars_of_the_crash(plugins):
    """The real 1m perpetual bars of the crash hour (2020-03-13 02:00 .. 03:25) under the real 1h
    mark klines: with the last price the long dies at the minute the 1m low crosses its price;
    with the hourly mark (low 3,801.83 in that hour) it survives, on both paths."""
    minute = read_bars_file(shared_file("binance_btcusdt_perp_1m_2020-03-12_crash.parquet")).between(CRASH - 60_000, None)
    mark = read_bars_file(shared_file("binance_btcusdt_perp_mark_1h.parquet"))
    marked = minute.with_mark(mark, 60_000, HOUR)
    on_last, on_last_fast = _runs(plugins, AllIn, minute, "timeframe=1m")
    on_mark, on_mark_fast = _runs(plugins, AllIn, marked, "timeframe=1m")
    liq = on_mark.liquidation_price.to_numpy()[1]  # entered at the 02:00 open
    assert minute.low.min() < liq < 3801.83
    dead = on_last.fills[on_last.fills.is_liquidation]
    assert len(dead) == 1 and minute.low[int(dead.bar.iloc[0])] <= liq < minute.low[: int(dead.bar.iloc[0])].min()
    assert on_mark.metrics["liquidations"] == 0
    assert_same_run(on_last, on_last_fast)
    assert_same_run(on_mark, on_mark_fast)

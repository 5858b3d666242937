"""maker_vol's liquidation promise, enforced: the position's liquidation price (Binance formula, the
symbol's brackets) stays at or below bottom while the price is above it.

Pure rules with hand-made numbers (the margin a position must hold, the bracket cap, the minimum
notional merge, the share to close), one bar sequence per enforcement path (a recompute moves the
line, a top-up the balance cannot fund, a lot whose leverage is over the bracket's cap), and real
bars: the bundled sample and, when ``../shared/data`` is there, the real stretches of issue 14.
Bar sequences here are made up (SYNTHETIC), to drive one path each; the real ones are named.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from btc_quant.core import margin as mm
from btc_quant.core.data import read_bars_file
from btc_quant.core.instruments import instrument_for
from btc_quant.plugins.strategies.maker_vol import DEFAULT_MMR, MakerVol
from btc_quant.plugins.strategies.maker_vol_grid import (
    bracket_table,
    entry_sizes,
    entry_sizes_from,
    level_sizes,
    lot_leverage,
    position_leverage,
    required_margin,
    restore_share,
)
from btc_quant.sdk.testing import bars_from, run_strategy

PERP = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT")
BRACKETS = instrument_for("binanceusdm", "BTC/USDT:USDT").margin_brackets
BB = bracket_table(BRACKETS, DEFAULT_MMR)


# --- the rules (pure) -------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.floats(0.001, 300.0), st.floats(0.3, 0.99), st.sampled_from([1, -1]))
def test_required_margin_puts_the_position_liquidation_exactly_at_bottom(qty, ratio, direction):
    """Across the brackets (up to ~12M USDT notional), the margin from required_margin gives, by
    core.margin's Binance formula, a liquidation price at bottom."""
    entry = 40_000.0
    bottom = entry * ratio if direction > 0 else entry / ratio
    margin = required_margin(qty, entry, bottom, direction, BB)
    liq = mm.liquidation_price(direction * qty, entry, margin, BRACKETS)
    assert liq == pytest.approx(bottom, rel=1e-9)


def test_lot_leverage_is_capped_at_its_brackets_maximum():
    bottom = 37_380.0
    # 0.12% above bottom: the formula asks 1 / (1.004 - 0.9988) ~ 190x; bracket 1 allows 125x
    assert 1 / (1 + 0.004 - bottom / 37_425.0) > 125
    assert lot_leverage(37_425.0, bottom, 1, 2_000.0, BB) == 125.0
    assert lot_leverage(37_425.0, bottom, 1, 200_000.0, BB) == 100.0  # bracket 2 (50k..600k): 100x
    # under the cap, the spec's formula with the bracket's own maintenance rate
    assert lot_leverage(40_000.0, 20_000.0, 1, 2_000.0, BB) == pytest.approx(1 / (1 + 0.004 - 0.5))
    assert lot_leverage(40_000.0, 20_000.0, 1, 100_000.0, BB) == pytest.approx(1 / (1 + 0.005 - 0.5))
    # the position's setting: what its most leveraged lot needs, rounded up, under its bracket's cap
    assert position_leverage(2.1, 10_000.0, BB) == 3.0
    assert position_leverage(190.3, 10_000.0, BB) == 125.0
    assert position_leverage(190.3, 700_000.0, BB) == 75.0


def test_orders_under_the_minimum_notional_merge_levels_instead_of_being_raised():
    prices = 39_900.0 * 0.998 ** np.arange(1, 300)
    bottom, margin, lot, min_notional = 21_000.0, 20.0, 0.001, 100.0
    qty, lev = np.zeros(len(prices)), np.zeros(len(prices))
    merged = level_sizes(prices, bottom, 1, margin, BB, lot, 1000.0, min_notional, qty, lev)
    placed = qty > 0
    assert merged == (~placed).sum() > 0
    assert (qty[placed] * prices[placed] >= min_notional - 1e-9).all()  # no order under the minimum
    # near top (2x: 40 USDT a level) three levels make one order; near bottom every level is one
    assert list(placed[:6]) == [True, False, False, True, False, False]
    assert placed[-20:].all()
    # no margin is invented: an order's margin is at most the levels it stands for (the lot rounds down)
    group = np.diff(np.r_[np.flatnonzero(placed), len(prices)])
    order_margin = qty[placed] * prices[placed] / lev[placed]
    assert (order_margin <= group * margin + 1e-9).all() and (order_margin > (group - 1) * margin).all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=12), st.floats(5.0, 400.0), st.sampled_from([1, -1]))
def test_a_ladder_sized_in_pieces_gets_the_sizes_of_one_go(steps, margin, direction):
    """The compiled backtest sizes entries as far as its desired set reaches (entry_sizes_from,
    piece by piece); the event path sizes the whole ladder at each recompute (entry_sizes): the
    same quantities, margins and merged count, merges across the pieces' ends included."""
    top, bottom = (39_900.0, 21_000.0) if direction > 0 else (39_900.0, 75_000.0)
    prices = np.round(top * (1 - direction * 0.002) ** np.arange(1, 320), 1)
    prices = prices[direction * (prices - bottom) > 0]
    first = 2
    args = (bottom, direction, margin, BB, 0.001, 1000.0, 100.0)
    whole_qty, whole_margin = np.zeros(len(prices)), np.zeros(len(prices))
    whole = entry_sizes(prices, first, *args, whole_qty, whole_margin)
    qty, mar = np.zeros(len(prices)), np.zeros(len(prices))
    at, merged = first, 0
    for step in [*steps, len(prices)]:  # the last piece sizes the rest
        at, more = entry_sizes_from(prices, at, min(at + step, len(prices)), *args, qty, mar)
        merged += more
    assert merged == whole
    np.testing.assert_array_equal(qty, whole_qty)
    np.testing.assert_array_equal(mar, whole_margin)


def test_restore_share_funds_the_rest_of_the_position():
    qty, entry, price, bottom = 4.0, 37_300.0, 37_050.0, 34_000.0
    required = required_margin(qty, entry, bottom, 1, BB)
    held, available, fee = 9_000.0, 900.0, 0.0005
    share = restore_share(required, held, available, qty, entry, price, 1, fee)
    assert 0 < share < 1
    # after closing that share: margin left + what the close released >= what the rest needs
    rest = qty * (1 - share)
    freed = available + share * held + share * qty * (price - entry) - share * qty * price * fee
    assert (1 - share) * held + freed >= required_margin(rest, entry, bottom, 1, BB) - 1e-6
    assert restore_share(required, required, 0.0, qty, entry, price, 1, fee) == 0.0


# --- one bar sequence per enforcement path (SYNTHETIC bars) ------------------------------------------------
HOUR = 3_600_000
START = 1_600_000_000_000 - 1_600_000_000_000 % HOUR  # on an hour boundary


def recompute_lowers_bottom():
    """SYNTHETIC: the first bar's high (42,000) sets top 39,900 / bottom 21,000 x ratio, a spike to
    40,000 at minute 40, a drop to 37,000 at minute 41 that fills a few levels, flat to the next
    hour; then (lookback 30 min) the 42,000 has left the window and the recompute takes 40,000:
    bottom falls by 1/21 while the lots keep their old line."""
    rows = [(37_500.0, 42_000.0, 37_450.0, 37_500.0)] + [(37_500.0,) * 4] * 39
    rows += [(37_500.0, 40_000.0, 37_500.0, 37_500.0), (37_500.0, 37_500.0, 37_000.0, 37_050.0)]
    rows += [(37_050.0,) * 4] * 28
    return bars_from(rows, start_ms=START)


class LineProbe(MakerVol):
    """Records at every wake-up, after the strategy acted: (ts, price, bottom, the broker's
    liquidation price, a restore close under way)."""

    name = "probe_line"
    seen: list = []

    def on_bar(self, ctx, bar):
        super().on_bar(ctx, bar)
        grid = self.grids[0]
        restoring = any(why == "restore" for _, _, why in self._closing.values())
        LineProbe.seen.append((bar.ts_ms, ctx.price, grid.ladder.bottom, ctx.margin.liquidation_price or math.nan, restoring))


def line_run(*settings):
    LineProbe.seen = []
    result = run_strategy(LineProbe, recompute_lowers_bottom(), *PERP, "strategy.lookback=30m", *settings)
    seen = pd.DataFrame(LineProbe.seen, columns=["ts", "price", "bottom", "liq", "restoring"])
    return result, seen


def test_recompute_that_lowers_bottom_moves_the_line_with_isolated_margin():
    result, seen = line_run()
    summary = result.diagnostics["summary"]
    assert seen.bottom.iloc[0] == pytest.approx(21_000.0) and seen.bottom.iloc[-1] == pytest.approx(20_000.0)
    assert (result.fills.side == "buy").sum() >= 3  # lots were open when bottom fell
    after = seen[seen.ts >= START + HOUR]
    assert (after.liq <= 20_000.0 + 1e-6).all() and (after.liq > 19_000.0).all()  # moved down to the new bottom, not beyond need
    assert summary["liq_line_restores"] >= 1 and summary["liq_line_restore_closes"] == 0
    assert summary["liq_line_breaches"] == 0 and summary["margin_call_refused"] == 0


def test_top_up_the_balance_cannot_fund_closes_the_most_leveraged_lots():
    """30% of equity a level at ~20x (bottom 85%): three lots hold nearly all the wallet; the
    recompute needs ~8,000 more margin than the ~900 available, so lots are closed at market."""
    result, seen = line_run("strategy.order_pct=0.3", "strategy.bottom_ratio=0.85")
    diag = result.diagnostics
    summary = diag["summary"]
    assert summary["liq_line_restore_closes"] >= 1 and summary["margin_call_refused"] >= 1
    restores = result.fills[result.fills.tag.str.startswith("restore:")]
    assert len(restores) == summary["liq_line_restore_closes"] and (~restores.is_maker).all()
    entries = result.fills[result.fills.side == "buy"].sort_values("price")
    assert restores.quantity.iloc[0] == entries.quantity.iloc[0]  # the deepest (most leveraged) lot first
    # the line is back at the new bottom once the closes filled, and never beyond it otherwise
    assert summary["liq_line_breaches"] == 0 and summary["liquidations_above_bottom"] == 0
    beyond = seen[(seen.liq > seen.bottom * (1 + 1e-6)) & (seen.price > seen.bottom)]
    assert beyond.restoring.all() and len(beyond) <= 1
    assert seen.liq.iloc[-1] <= 34_000.0 + 1e-6 and result.diagnostics["pnl_attribution"]["restore_pnl"] < 0
    attribution = diag["pnl_attribution"]
    assert sum(v for k, v in attribution.items() if k != "open_lots") == pytest.approx(
        result.equity.iloc[-1] - result.initial_equity, abs=1e-6
    )


def test_lot_whose_leverage_is_over_the_brackets_cap_is_still_funded_to_bottom():
    """Bottom at 89% of 42,000 = 37,380: the first levels under 37,500 need ~190x; capped at 125x
    they hold more margin, the leverage setting is never refused and the line stays at bottom."""
    LineProbe.seen = []
    rows = [(37_500.0, 42_000.0, 37_450.0, 37_500.0), (37_500.0, 37_500.0, 37_420.0, 37_450.0)] + [(37_450.0,) * 4] * 5
    result = run_strategy(LineProbe, bars_from(rows, start_ms=START), *PERP, "strategy.bottom_ratio=0.89")
    strategy = result.strategy_object
    lots = list(strategy.grids[0].book.lots.values())
    assert lots and max(lot.leverage for lot in lots) == 125.0
    summary = result.diagnostics["summary"]
    assert summary["margin_call_refused"] == 0 and summary["liq_line_breaches"] == 0
    seen = pd.DataFrame(LineProbe.seen, columns=["ts", "price", "bottom", "liq", "restoring"]).dropna()
    assert len(seen) and (seen.liq <= 37_380.0 + 1e-6).all()


# --- real bars --------------------------------------------------------------------------------------------
def test_bundled_sample_keeps_the_line_compiled(sample_bars):
    """January 2022 (real, bundled), the whole month, on the compiled path as `quant run` takes it."""
    result = run_strategy("maker_vol", sample_bars, *PERP, compiled=True)
    summary = result.diagnostics["summary"]
    assert result.compiled is True
    assert summary["liq_line_breaches"] == 0 and summary["liquidations_above_bottom"] == 0
    assert summary["liq_line_restores"] > 0  # the line moved (bottom recomputed, funding) and was restored
    # a grid's trades are its completed round trips, not the net position's flat-to-flat trades
    assert result.metrics["trades"] == summary["round_trips"] > 1000
    assert result.diagnostics["samples"].broker_liquidation_price.notna().sum() > 100


def test_bundled_sample_short_side_keeps_its_line_compiled(sample_bars):
    """The short grid (5% above the 1-day low, bottom at twice it) on the same real month, compiled."""
    result = run_strategy("maker_vol", sample_bars, *PERP, "strategy.side=short", "strategy.lookback=1d", compiled=True)
    summary = result.diagnostics["summary"]
    assert result.compiled is True and summary["round_trips"] > 10
    assert summary["liq_line_breaches"] == 0 and summary["liquidations_above_bottom"] == 0
    samples = result.diagnostics["samples"].dropna(subset=["broker_liquidation_price"])
    assert len(samples) > 10 and (samples.distance_to_liquidation > 0).all()
    assert result.metrics["trades"] == summary["round_trips"]


def _shared(name):
    from test_store import shared_file

    return shared_file(name)


@pytest.mark.parametrize(
    ("file", "start", "end", "side"),
    [
        # issue 14: the broker's line was above bottom on 1,015 wake-ups (up to 1.038x), 2,999, and
        # on the perpetual hourly stretch 19 liquidations above bottom
        ("binance_btcusdt_1m.parquet", "2021-03-26 03:00", "2021-05-20 20:41", "long"),
        ("binance_btcusdt_1m.parquet", "2022-05-27 08:40", "2022-07-19 20:19", "long"),
        ("binance_btcusdt_perp_1h.parquet", "2020-01-15", "2020-04-30", "long"),
        ("binance_btcusdt_perp_1h.parquet", "2020-01-15", "2020-04-30", "short"),
        ("binance_btcusdt_perp_1m_2020-03-12_crash.parquet", "2020-03-12", "2020-03-14", "long"),
    ],
)
def test_real_stretches_of_issue_14_keep_the_line(file, start, end, side):
    bars = read_bars_file(_shared(file))
    bars = bars.between(int(pd.Timestamp(start, tz="UTC").value // 1_000_000), int(pd.Timestamp(end, tz="UTC").value // 1_000_000))
    result = run_strategy("maker_vol", bars, *PERP, f"strategy.side={side}", compiled=True)
    summary = result.diagnostics["summary"]
    assert summary["liq_line_breaches"] == 0 and summary["liquidations_above_bottom"] == 0
    assert len(result.fills) > 50


@pytest.mark.parametrize(
    "settings",
    [
        (),
        ("strategy.order_pct=0.3", "strategy.bottom_ratio=0.85"),
        ("strategy.order_pct=0.3", "strategy.bottom_ratio=0.85", "broker.fill_model=touch"),
    ],
)
def test_enforcement_paths_compiled_fill_for_fill(settings):
    """The compiled backtest restores the line as the event path does (margin top-up, restore closes)."""
    from test_maker_vol_kernel import assert_same_run, both

    from btc_quant.core.plugins import load_plugins

    event, fast = both(load_plugins(env={}), recompute_lowers_bottom(), "strategy.lookback=30m", *settings)
    assert event.diagnostics["summary"]["liq_line_restores"] >= 1
    assert_same_run(event, fast)


class SideLineProbe(MakerVol):
    """``side=both`` in hedge mode: at every wake-up, after the strategy acted, each grid's bottom
    and its own position's liquidation price (``ctx.margin_of``), and whether a restore or
    saturation close of that grid waits for the next open."""

    name = "probe_side_lines"
    seen: list = []

    def on_bar(self, ctx, bar):
        super().on_bar(ctx, bar)
        for grid in self.grids:
            pside = grid.position_side(ctx)
            waiting = any(g is grid and why in ("restore", "saturation") for g, _, why in self._closing.values())
            line = ctx.margin_of(pside).liquidation_price
            held = ctx.position_of(pside).quantity
            SideLineProbe.seen.append((bar.ts_ms, ctx.price, grid.direction, grid.ladder.bottom, line or math.nan, held, waiting))


@pytest.mark.parametrize(
    "settings",
    [
        (),
        ("strategy.order_pct=0.02", "broker.fill_model=touch"),  # restore closes on both sides
    ],
)
def test_both_sides_in_hedge_mode_keep_each_line_on_the_event_path(settings):
    """Real 1m bars around the 2021-05-19 crash, ``side=both broker.position_mode=hedge`` on the
    event path (as paper and live run it): the LONG position's liquidation price stays at or below
    the long grid's bottom and the SHORT's at or above the short grid's, at every wake-up with the
    price on the safe side (a close restoring it may wait for the next open)."""
    bars = read_bars_file(_shared("binance_btcusdt_1m.parquet"))
    bars = bars.between(
        int(pd.Timestamp("2021-05-17", tz="UTC").value // 1_000_000), int(pd.Timestamp("2021-05-21", tz="UTC").value // 1_000_000)
    )
    SideLineProbe.seen = []
    result = run_strategy(SideLineProbe, bars, *PERP, "strategy.side=both", "broker.position_mode=hedge", "strategy.lookback=1d", *settings)
    assert result.compiled is False
    seen = pd.DataFrame(SideLineProbe.seen, columns=["ts", "price", "direction", "bottom", "liq", "held", "waiting"])
    for direction in (1, -1):
        side = seen[(seen.direction == direction) & (seen.held * direction > 0)]
        assert len(side) > 100 and side.liq.notna().all()  # the side held a position, and it has a line
        safe = side[direction * (side.price - side.bottom) > 0]
        beyond = safe[direction * (safe.liq - safe.bottom) > 1e-6 * safe.bottom]
        assert beyond.waiting.all(), beyond.head()
    summary = result.diagnostics["summary"]
    assert summary["liq_line_breaches"] == 0 and summary["liquidations_above_bottom"] == 0
    assert summary["isolated_margin_calls"] == "yes"

"""maker_vol: each rule of STRATEGY_MAKER_VOL.md pinned with hand-made numbers and bar sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from btc_quant.core import margin as mm
from btc_quant.core.model import MarginBracket
from btc_quant.plugins.strategies.maker_vol import MakerVol, MakerVolConfig
from btc_quant.plugins.strategies.maker_vol_grid import GridBook, Ladder, bracket_table, order_leverage
from btc_quant.sdk.testing import bars_from, run_strategy

PERP = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT")


def isolated_liquidation_price(quantity, entry, margin, mmr, direction=1):
    """Binance's liquidation price of one isolated position with one bracket of rate ``mmr``: the
    readable reference (core.margin), not the strategy's code."""
    bracket = MarginBracket(notional_floor=0.0, notional_cap=math.inf, max_leverage=125.0, maintenance_rate=mmr, maintenance_amount=0.0)
    return mm.liquidation_price(direction * quantity, entry, margin, (bracket,))


# --- ladder and leverage (pure) -------------------------------------------------------------------
def test_ladder_is_geometric_from_top_and_stops_before_bottom():
    ladder = Ladder(100.0, 50.0, 0.1)
    np.testing.assert_allclose(ladder.prices[:3], [100.0, 90.0, 81.0])
    assert ladder.prices[-1] > 50.0 and ladder.prices[-1] * 0.9 <= 50.0
    short = Ladder(100.0, 200.0, 0.1, direction=-1)
    np.testing.assert_allclose(short.prices[:3], [100.0, 110.0, 121.0])
    assert short.prices[-1] < 200.0


@pytest.mark.parametrize("price", [49_000.0, 40_000.0, 30_000.0, 26_000.0])
def test_leverage_puts_liquidation_at_bottom(price):
    bottom, mmr = 25_000.0, 0.004
    lev = order_leverage(price, bottom, mmr)
    assert lev == pytest.approx(1 / (1 + mmr - bottom / price))
    qty = 0.01
    margin = qty * price / lev
    liq = isolated_liquidation_price(qty, price, margin, mmr)
    assert liq <= bottom + 1e-6 and liq > bottom * 0.99  # at bottom, on the safe side by the maintenance term


def test_short_leverage_is_the_mirror_image():
    lev = order_leverage(40_000.0, 80_000.0, 0.004, direction=-1)
    assert lev == pytest.approx(1 / (1.004 * 2.0 - 1))
    liq = isolated_liquidation_price(0.01, 40_000.0, 0.01 * 40_000 / lev, 0.004, direction=-1)
    assert liq == pytest.approx(80_000.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.51, 0.95), st.floats(0.001, 0.05)), min_size=1, max_size=60))
def test_book_of_lots_liquidates_at_or_below_bottom(lots):
    """Summing orders whose margin is their loss at bottom keeps the account's liquidation at bottom."""
    high, mmr = 50_000.0, 0.004
    ladder = Ladder(0.95 * high, 0.5 * high, 0.002)
    book = GridBook(ladder, 0.002)
    for frac, qty in lots:
        p = frac * high
        lev = order_leverage(p, ladder.bottom, mmr)
        book.open_lot(0, p, qty, qty * p / lev, lev)
    assert book.liquidation_price(bracket_table((), mmr)) <= ladder.bottom * (1 + 1e-9)


# --- take-profit rules (pure) ------------------------------------------------------------------
def make_book(levels=10):
    ladder = Ladder(100.0, 100.0 * 0.99**levels * 0.999, 0.01)
    return ladder, GridBook(ladder, 0.01)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["open", "withdraw", "close", "relay", "restore"]), st.integers(0, 40)), max_size=60))
def test_the_book_counts_the_levels_holding_a_take_profit(ops):
    """``totals[B_NTP]`` (read at every wake-up instead of the whole ladder) is the number of levels
    holding a take-profit, whatever the book went through: fills and saturations, withdrawals,
    closes, re-lays onto longer and shorter ladders, restore closes."""
    from btc_quant.plugins.strategies.maker_vol_grid import B_NTP

    ladder, book = make_book(12)
    for op, k in ops:
        lots = sorted(book.lots)
        if op == "open":
            level = k % len(book.ladder)
            book.place_tp(book.open_lot(level, float(book.ladder.prices[level]), 1.0, 1.0, 2.0 + k % 3))
        elif op == "withdraw" and lots:
            book.withdraw_tp(book.lots[lots[k % len(lots)]])
        elif op == "close" and lots:
            book.close_lot(lots[k % len(lots)])
        elif op == "relay":
            book.relay(Ladder(100.0 * (0.97 + k / 400), 100.0 * 0.99 ** (5 + k % 15), 0.01))
        elif op == "restore" and lots:
            book.restore_closes(float(k % 4))
        assert book.totals[B_NTP] == np.count_nonzero(book.tp_lots)


def test_take_profit_goes_to_first_level_at_or_above_fill_plus_tp():
    ladder, book = make_book()
    lot = book.open_lot(5, float(ladder.prices[5]), 1.0, 1.0, 2.0)
    assert book.place_tp(lot) is None
    assert lot.tp_level == 4 and ladder.prices[4] >= ladder.prices[5] * 1.01 - 1e-9


def test_take_profit_moves_up_when_level_taken():
    ladder, book = make_book()
    first = book.open_lot(5, float(ladder.prices[5]), 1.0, 1.0, 2.0)
    book.place_tp(first)
    second = book.open_lot(5, float(ladder.prices[5]), 1.0, 1.0, 2.0)  # the same level filled again
    book.place_tp(second)
    third = book.open_lot(5, float(ladder.prices[5]), 1.0, 1.0, 2.0)
    book.place_tp(third)
    assert (first.tp_level, second.tp_level, third.tp_level) == (4, 3, 2)
    assert len(set(book.tp_at)) == 3


def test_saturation_closes_the_lot_with_the_highest_take_profit():
    ladder, book = make_book()
    lots = []
    for _ in range(3):  # levels 2, 1, 0 (top) taken by lots entered at level 3
        lot = book.open_lot(3, float(ladder.prices[3]), 1.0, 1.0, 2.0)
        assert book.place_tp(lot) is None
        lots.append(lot)
    assert [l.tp_level for l in lots] == [2, 1, 0]
    newcomer = book.open_lot(3, float(ladder.prices[3]), 1.0, 1.0, 2.0)
    victim = book.place_tp(newcomer)
    assert victim is lots[2] and victim.closing and victim.freed_tp == ladder.top  # its take-profit was at top, the highest
    assert newcomer.tp_level == 0 and book.tp_at[0] == newcomer.lot_id
    assert min(book.tp_at) == 0  # never beyond top


def test_relay_keeps_take_profits_and_caps_them_at_the_new_top():
    ladder, book = make_book(20)
    lots = [book.open_lot(lv, float(ladder.prices[lv]), 1.0, 1.0, 2.0) for lv in (3, 8)]
    for lot in lots:
        book.place_tp(lot)
    old_prices = [book.tp_price(l) for l in lots]
    lower = Ladder(float(ladder.prices[5]), ladder.bottom, 0.01)  # top falls below the first take-profit
    assert book.relay(lower) == []
    assert book.tp_price(lots[0]) == pytest.approx(lower.top)  # capped at the new top
    assert book.tp_price(lots[1]) >= old_prices[1] - 1e-9  # kept (never nearer its entry)


# --- the compiled rules both paths call (maker_vol_grid), on hand-made arrays -----------------
def test_desired_levels_skip_closing_lots_and_pause_when_free_margin_runs_out():
    from btc_quant.plugins.strategies.maker_vol_grid import desired_levels

    ladder, book = make_book(10)
    held = book.open_lot(6, float(ladder.prices[6]), 1.0, 1.0, 2.0)
    closing = book.open_lot(7, float(ladder.prices[7]), 1.0, 1.0, 2.0)
    book.place_tp(held), book.place_tp(closing)  # take-profits at levels 5 and 6
    closing.closing = True
    qty, margin = np.ones(len(ladder)), np.full(len(ladder), 10.0)
    qty[8] = 0.0  # merged into level 7
    tp_out, entry_out = np.empty(5, dtype=np.int64), np.empty(5, dtype=np.int64)
    price = float(ladder.prices[6]) * 0.999  # just under level 6: levels 7 .. 9 are adverse of it
    args = (book.totals, book.L, book.tp_lots, ladder.prices, 0, len(ladder), 1, qty, margin, len(ladder), price, 1, 5)
    assert len(ladder) == 11
    ntp, nentry, armed, paused, free, more = desired_levels(*args, 30.0, tp_out, entry_out)
    assert tp_out[:ntp].tolist() == [held.tp_level]  # the closing lot's take-profit is held back
    assert entry_out[:nentry].tolist() == [7, 9, 10] and not paused and free == pytest.approx(0.0) and more == -1
    assert armed == (len(ladder) - 7) + 2  # levels 7 .. 10 (none holds a take-profit) and the two lots
    ntp, nentry, armed, paused, free, more = desired_levels(*args, 15.0, tp_out, entry_out)
    assert entry_out[:nentry].tolist() == [7] and paused  # the next one cannot be funded
    # levels sized only up to 9: it stops at level 9 and asks for its size
    sized_to_9 = (*args[:9], 9, *args[10:])
    *_, more = desired_levels(*sized_to_9, 30.0, tp_out, entry_out)
    assert more == 9


def test_line_funding_adds_margin_refuses_or_closes_a_share():
    from btc_quant.plugins.strategies.maker_vol_grid import LINE_ADD, LINE_CLOSE, LINE_OK, LINE_REFUSED, line_funding, restore_share

    common = (1.0, 100.0, 90.0, 50.0, 1, 0.0005)  # qty, entry, price, bottom, long, taker fee
    assert line_funding(60.0, 60.0, 0.0, *common, True) == (LINE_OK, 0.0)
    assert line_funding(60.0, 50.0, 20.0, *common, True) == (LINE_ADD, pytest.approx(10.0))
    assert line_funding(60.0, 50.0, 5.0, *common, False)[0] == LINE_REFUSED  # not at a wake-up: no close
    assert line_funding(60.0, 50.0, 5.0, 1.0, 100.0, 49.0, 50.0, 1, 0.0005, True)[0] == LINE_REFUSED  # price beyond bottom
    action, amount = line_funding(60.0, 50.0, 5.0, *common, True)
    assert action == LINE_CLOSE and amount == pytest.approx(restore_share(60.0, 50.0, 5.0, 1.0, 100.0, 90.0, 1, 0.0005))
    assert 0 < amount < 1


def test_restore_closes_pick_the_most_leveraged_lots_first():
    ladder, book = make_book(10)
    lots = [book.open_lot(lv, float(ladder.prices[lv]), 1.0, 1.0, lev) for lv, lev in ((3, 2.0), (6, 5.0), (8, 5.0), (9, 3.0))]
    for lot in lots:
        book.place_tp(lot)
    chosen = book.restore_closes(1.5)
    assert chosen == [lots[1], lots[2]]  # leverage 5 twice, the older first; 2 lots cover 1.5
    assert all(l.closing and l.tp_level == -1 for l in chosen)
    assert book.restore_closes(1.5) == []  # the closes under way already cover it


def test_a_partial_close_that_leaves_less_than_half_a_lot_closes_the_lot():
    ladder, book = make_book(10)
    lot = book.open_lot(5, float(ladder.prices[5]), 0.010, 1.0, 2.0)
    pnl = book.close_fill(lot, 0.006, float(ladder.prices[4]), False, 0.0005)
    assert pnl == pytest.approx(0.006 * (ladder.prices[4] - ladder.prices[5]))
    assert lot.lot_id in book.lots and lot.quantity == pytest.approx(0.004) and book.margin == pytest.approx(0.4)
    book.close_fill(lot, 0.0036, float(ladder.prices[4]), False, 0.0005)  # 0.0004 left: under half a lot
    assert lot.lot_id not in book.lots and book.quantity == 0.0 and book.margin == 0.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(1.0, 100.0), min_size=1, max_size=60), st.integers(1, 20), st.integers(1, 5))
def test_lookback_range_is_the_window_max_and_min(highs, n_bars, step):
    from btc_quant.plugins.strategies.maker_vol_grid import lookback_range

    ts = np.arange(len(highs), dtype=np.int64) * 60_000 * step
    high = np.array(highs)
    low = high - 0.5
    lookback_ms = 60_000 * 7
    at = np.arange(len(highs))
    got_high, got_low = lookback_range(ts, high, low, at, n_bars, lookback_ms)
    for i in at:
        window = [j for j in range(max(0, i + 1 - n_bars), i + 1) if ts[j] > ts[i] - lookback_ms]
        assert got_high[i] == max(high[window]) and got_low[i] == min(low[window])


# --- in the simulated broker ----------------------------------------------------------------
# Bars near real January-2022 prices; the first bar's high (42,000) sets top = 39,900, bottom = 21,000.
TOP = 39_900.0
L1 = 39_820.2  # level 1: 39,900 x 0.998, rounded down to the 0.1 tick


def opening(rows):
    return [(40_000.0, 42_000.0, 39_950.0, 40_000.0)] + rows


@pytest.mark.parametrize("model, fills", [("through", 0), ("touch", 1)])
def test_level_fills_only_when_the_fill_model_says(model, fills):
    bars = bars_from(opening([(40_000.0, 40_010.0, L1, 39_990.0), (39_990.0, 40_000.0, 39_950.0, 39_960.0)]))
    result = run_strategy("maker_vol", bars, *PERP, f"broker.fill_model={model}")
    entries = result.fills[result.fills.side == "buy"]
    assert len(entries) == fills
    if fills:
        assert entries.price.iloc[0] == L1


def test_filled_entry_gets_its_take_profit_and_the_round_trip_closes():
    rows = [(40_000.0, 40_010.0, L1 - 10, 39_850.0), (39_850.0, TOP + 50, 39_840.0, 39_950.0)]
    result = run_strategy("maker_vol", bars_from(opening(rows)), *PERP)
    assert list(result.fills.side) == ["buy", "sell"]
    assert result.fills.price.tolist() == [L1, TOP]  # the take-profit sat on the next level up
    diag = result.diagnostics
    assert diag["summary"]["round_trips"] == 1
    assert diag["pnl_attribution"]["grid_profit"] == pytest.approx((TOP - L1) * result.fills.quantity.iloc[0])


def test_only_max_live_orders_nearest_the_price_are_live():
    class Probe(MakerVol):
        name = "probe_live"
        seen: list = []

        def on_bar(self, ctx, bar):
            super().on_bar(ctx, bar)
            Probe.seen.append(sorted(o.price for o in ctx.open_orders))

    # 1% a level: every level's order is over the minimum notional (none merged)
    run_strategy(
        Probe,
        bars_from(opening([(40_000.0, 40_010.0, 39_990.0, 40_000.0)])),
        *PERP,
        "strategy.max_live_orders=3",
        "strategy.order_pct=0.01",
    )
    live = Probe.seen[0]
    # top itself is no entry (its take-profit would have no room): levels 1, 2, 3
    assert live == [39_661.0, 39_740.5, L1]


def test_no_new_order_when_free_margin_is_short():
    class Probe(MakerVol):
        name = "probe_cash"
        seen: list = []

        def on_bar(self, ctx, bar):
            super().on_bar(ctx, bar)
            Probe.seen.append(len(ctx.open_orders))

    # each order takes 30% of equity as margin: three fit, the fourth does not
    result = run_strategy(Probe, bars_from(opening([(40_000.0, 40_010.0, 39_990.0, 40_000.0)])), *PERP, "strategy.order_pct=0.3")
    assert Probe.seen[0] == 3
    assert result.diagnostics["summary"]["cash_pauses"] == 1


def test_levels_are_relaid_when_top_moves():
    class Probe(MakerVol):
        name = "probe_relay"
        seen: list = []

        def on_bar(self, ctx, bar):
            super().on_bar(ctx, bar)
            Probe.seen.append((bar.ts_ms, max(o.price for o in ctx.open_orders)))

    start = 1_600_000_000_000 - 1_600_000_000_000 % 3_600_000  # on an hour boundary
    rows = [(40_000.0, 42_000.0, 39_950.0, 40_000.0)] + [(40_000.0, 40_010.0, 39_990.0, 40_000.0)] * 59
    rows += [(40_000.0, 41_000.0, 39_990.0, 40_000.0)]  # next hour: the lookback still holds 42,000
    bars = bars_from(rows, start_ms=start)
    run_strategy(Probe, bars, *PERP, "strategy.lookback=30m")  # after 30 minutes 42,000 leaves the window
    first, last = Probe.seen[0], Probe.seen[-1]
    assert first[1] == L1
    assert last[0] == bars.ts[-1] and last[1] == pytest.approx(0.95 * 41_000.0 * 0.998, abs=0.2)  # level 1 of the new ladder


def test_short_side_is_the_mirror_image():
    # the first bar's low (38,000) sets short top = 39,900 (1.05 x) and bottom = 76,000
    rows = [(40_000.0, 40_050.0, 38_000.0, 39_850.0), (39_850.0, 39_990.0, 39_840.0, 39_980.0), (39_980.0, 40_000.0, 39_800.0, 39_810.0)]
    result = run_strategy("maker_vol", bars_from(rows), *PERP, "strategy.side=short")
    assert list(result.fills.side) == ["sell", "buy"]
    sell, buy = result.fills.price.tolist()
    assert sell == pytest.approx(39_900 * 1.002, abs=0.1) and buy == pytest.approx(39_900.0)


def test_config_rejects_inverted_ratios():
    with pytest.raises(ValueError, match="bottom_ratio"):
        MakerVolConfig(top_ratio=0.5, bottom_ratio=0.6)


def test_runs_on_the_bundled_sample(sample_bars):
    result = run_strategy("maker_vol", sample_bars[:15000], *PERP)  # Jan 1-11 2022: 47k -> 41k
    diag = result.diagnostics
    assert diag["summary"]["round_trips"] > 0
    assert diag["summary"]["liq_line_breaches"] == 0 and diag["summary"]["liquidations_above_bottom"] == 0
    assert diag["summary"]["max_live_orders_seen"] <= 40
    attribution = diag["pnl_attribution"]
    explained = sum(
        attribution[k]
        for k in (
            "grid_profit",
            "maker_fees",
            "taker_fees",
            "funding",
            "saturation_loss",
            "liquidation_loss",
            "stop_pnl",
            "restore_pnl",
            "unrealised_inventory",
        )
    )
    assert explained == pytest.approx(result.equity.iloc[-1] - result.initial_equity, abs=1e-6)


def test_cli_fill_band_runs_through_and_touch_side_by_side(quant):
    import json

    proc = quant("run", "strategy=maker_vol", "broker=sim", "data.end=2022-01-06", "--fill-band", "--json", check=True)
    band = json.loads(proc.stdout)
    assert list(band) == ["through", "touch"]
    assert band["through"]["diagnostics"]["round_trips"] > 0
    # touch fills a superset of what through fills on the same bars
    assert band["touch"]["fills"] >= band["through"]["fills"]
    table = quant("run", "strategy=maker_vol", "data.end=2022-01-02", "--fill-band", check=True).stdout
    assert "fill-model band" in table and "saturation_closes" in table and "pnl.grid_profit" in table


def test_cli_fill_band_refuses_a_fixed_fill_model(quant):
    proc = quant("run", "strategy=maker_vol", "broker.fill_model=touch", "--fill-band")
    assert proc.returncode == 2 and "fill-band" in proc.stderr


def test_readme_main_command_runs_maker_vol_on_the_bundled_sample(quant):
    """`quant run strategy=maker_vol broker=sim`, the README's first command, from an empty store."""
    import json

    proc = quant("run", "strategy=maker_vol", "broker=sim", "--json", check=True)
    summary = json.loads(proc.stdout)
    assert "bundled sample" in proc.stderr
    assert (summary["strategy"], summary["bars"]) == ("maker_vol", 45031)
    diag = summary["diagnostics"]
    assert diag["round_trips"] > 1000 and diag["liq_line_breaches"] == 0
    explained = sum(v for k, v in diag.items() if k.startswith("pnl.") and k != "pnl.open_lots")
    assert explained == pytest.approx(summary["final_equity"] - summary["initial_equity"], abs=1e-6)


def test_each_filled_order_gets_the_leverage_that_liquidates_it_at_bottom():
    class Probe(MakerVol):
        name = "probe_leverage"
        lots: list = []

        def on_fill(self, ctx, fill):
            super().on_fill(ctx, fill)
            Probe.lots.extend(l for g in self.grids for l in g.book.lots.values() if l not in Probe.lots)

    rows = [(40_000.0, 40_010.0, 39_000.0, 39_100.0), (39_100.0, 39_150.0, 38_000.0, 38_100.0)]
    run_strategy(Probe, bars_from(opening(rows)), *PERP, "strategy.order_pct=0.01")  # no level merged
    assert len(Probe.lots) >= 20
    bottom = 0.5 * 42_000.0
    for lot in Probe.lots:
        assert lot.leverage == pytest.approx(1 / (1 + 0.004 - bottom / lot.entry), rel=1e-12)
        assert lot.margin == pytest.approx(lot.quantity * lot.entry / lot.leverage)
        assert isolated_liquidation_price(lot.quantity, lot.entry, lot.margin, 0.004) <= bottom


def test_both_sides_run_a_long_grid_below_mid_and_a_short_grid_above():
    class Probe(MakerVol):
        name = "probe_both"
        seen: list = []

        def on_bar(self, ctx, bar):
            super().on_bar(ctx, bar)
            Probe.seen.append(sorted((o.side.value, o.price) for o in ctx.open_orders))

    # lookback range 38,000 .. 42,000: mid 40,000; the price sits at 40,000
    rows = [(40_000.0, 42_000.0, 38_000.0, 40_000.0), (40_000.0, 40_010.0, 39_990.0, 40_000.0)]
    result = run_strategy(Probe, bars_from(rows), *PERP, "strategy.side=both", "strategy.max_live_orders=2")
    live = Probe.seen[0]
    buys = [p for s, p in live if s == "buy"]
    sells = [p for s, p in live if s == "sell"]
    assert len(buys) == 2 and len(sells) == 2
    assert max(buys) < 40_000.0 < min(sells)
    # long top = min(0.95 x high, mid) = 39,900; short top = max(1.05 x low, one step above mid) = 40,080
    assert max(buys) == L1 and min(sells) == pytest.approx(40_080.0 * 1.002, abs=0.1)
    assert result.orders.client_id.str.match(r"^mv:[bs]\d+\.").all()


def test_global_stop_closes_everything_and_halts():
    # the grid fills on the way down; equity falls 1% below its peak and the stop closes all at market
    rows = [(40_000.0, 40_010.0, 39_990.0, 40_000.0)] + [
        (40_000.0 - 400 * k, 40_000.0 - 400 * k, 39_600.0 - 400 * k, 39_600.0 - 400 * k) for k in range(8)
    ]
    rows += [(36_800.0, 36_900.0, 36_700.0, 36_800.0)] * 3
    result = run_strategy("maker_vol", bars_from(opening(rows)), *PERP, "strategy.global_stop=0.01", "strategy.order_pct=0.01")
    diag = result.diagnostics
    assert diag["summary"]["halted"] and "global stop" in diag["summary"]["halted"]
    fills = result.fills
    assert not fills[~fills.is_maker].empty  # closed at market
    position = fills.assign(q=fills.quantity.where(fills.side == "buy", -fills.quantity)).q.sum()
    assert position == pytest.approx(0.0, abs=1e-9)
    assert (result.orders.status.isin(["filled", "canceled"])).all()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fill", "tp", "relay"]), st.integers(1, 40), st.floats(0.9, 1.1)), max_size=80))
def test_grid_book_never_shares_a_level_and_saturates_the_highest(ops):
    ladder = Ladder(100.0, 60.0, 0.01)
    book = GridBook(ladder, 0.01)
    for op, level, factor in ops:
        if op == "fill":
            level = min(level, len(book.ladder) - 1)
            nearest_top = book.tp_levels[0] if book.tp_levels else None
            lot = book.open_lot(level, float(book.ladder.prices[level]), 1.0, 1.0, 2.0)
            victim = book.place_tp(lot)
            if victim is not None:
                assert victim.freed_tp == book.ladder.prices[nearest_top]  # the highest take-profit went
                book.close_lot(victim.lot_id)
        elif op == "tp" and book.tp_levels:
            book.close_lot(book.tp_at[book.tp_levels[min(level, len(book.tp_levels) - 1)]])
        elif op == "relay":
            top = 100.0 * factor
            for victim in book.relay(Ladder(top, 60.0, 0.01)):
                book.close_lot(victim.lot_id)
        assert book.tp_levels == sorted(book.tp_at) and len(set(book.tp_at.values())) == len(book.tp_at)
        assert all(0 <= lv < len(book.ladder) for lv in book.tp_levels)  # never beyond top
        for lv, lot_id in book.tp_at.items():
            assert book.lots[lot_id].tp_level == lv
            assert book.ladder.prices[lv] >= book.lots[lot_id].entry or lv == 0  # never below the entry unless capped
        assert book.quantity == pytest.approx(sum(l.quantity for l in book.lots.values()))


def test_report_figures_from_diagnostics(sample_bars):
    from btc_quant.plugins.strategies.maker_vol_report import grid_figures

    result = run_strategy("maker_vol", sample_bars[:15000], *PERP)
    diagnostics = result.diagnostics
    figures = grid_figures(diagnostics)
    titles = [t for t, _ in figures]
    assert titles[:4] == [
        "Grid: fills per level",
        "Grid: entries per level over time (heatmap)",
        "Grid: take-profit occupancy, live vs virtual orders",
        "Grid: distance to the lots' liquidation price",
    ]
    assert len(figures[1][1].data[0].x) == diagnostics["fills_per_level"].entry_fills.sum()
    assert titles[-1] == "Grid: PnL attribution" and any(t.startswith("Grid: saturation closes") for t in titles)
    fills = figures[0][1].data[0]
    assert sum(fills.y) == diagnostics["fills_per_level"].entry_fills.sum()
    # a saved run gives the diagnostics back as plain records: same figures
    plain = {k: (v.to_dict("records") if hasattr(v, "to_dict") else v) for k, v in diagnostics.items()}
    assert [t for t, _ in grid_figures(plain)] == titles


def test_report_section_hook_when_installed(sample_bars, plugins):
    import btc_quant.sdk as sdk

    if not hasattr(sdk, "ReportSection"):
        pytest.skip("the quant_report_sections hook (backtester issue) is not in this tree yet")
    result = run_strategy("maker_vol", sample_bars[:15000], *PERP)
    sections = [
        s
        for answer in plugins.hook.quant_report_sections(result=result)
        if answer
        for s in (answer if isinstance(answer, list) else [answer])
    ]
    assert [s.title for s in sections][0] == "Grid: fills per level" and all(s.order >= 200 for s in sections)


def test_broker_liquidation_price_stays_at_or_below_bottom_when_the_broker_models_isolated_margin(sample_bars):
    """The spec's invariant checked against the broker's own Binance-formula liquidation price."""
    result = run_strategy("maker_vol", sample_bars[:15000], *PERP)
    summary = result.diagnostics["summary"]
    assert summary["isolated_margin_calls"] == "yes"
    assert summary["liq_line_breaches"] == 0 and summary["margin_call_refused"] == 0
    samples = result.diagnostics["samples"].dropna(subset=["broker_liquidation_price"])
    assert len(samples) > 100


def test_spot_instrument_is_refused_in_one_line(quant):
    proc = quant("run", "strategy=maker_vol", "exchange=binance", "symbol=BTC/USDT", "data.start=2022-01-02", "data.end=2022-01-03")
    assert proc.returncode == 2
    assert "maker_vol trades a perpetual with leverage; binance BTC/USDT is spot" in proc.stderr


def test_side_both_closes_a_small_lot_reduce_only_and_waits_while_the_close_would_open_below_the_minimum():
    """side=both nets both grids in one position. A lot of 0.001 BTC (about 40 USDT, under the
    100 minimum) is closed reduce-only while the position holds it on its side (Binance exempts
    reduce-only orders from MIN_NOTIONAL); while the position is on the other side the close would
    open a new position below the minimum, so it waits and goes out once it can."""

    class Probe(MakerVol):
        name = "probe_small_close"
        needs_every_bar = True
        seen: list = []

        def on_bar(self, ctx, bar):
            super().on_bar(ctx, bar)
            step = len(Probe.seen)
            long_grid, short_grid = self.grids
            if step == 0:
                ctx.buy(0.003)  # the net position: long 0.003
            elif step == 1:
                self._close_lot(ctx, long_grid, long_grid.book.open_lot(5, 40_000.0, 0.001, 4.0, 10.0), "stop")
                self._close_lot(ctx, short_grid, short_grid.book.open_lot(5, 40_000.0, 0.001, 4.0, 10.0), "stop")
            elif step == 2:
                ctx.sell(0.003)  # long 0.002 -> short 0.001: now the short lot's close reduces
            Probe.seen.append((round(ctx.position.quantity, 6), self.counts["closes_waiting"]))

    rows = [(40_000.0, 42_000.0, 38_000.0, 40_000.0)] + [(40_000.0, 40_010.0, 39_990.0, 40_000.0)] * 5
    result = run_strategy(Probe, bars_from(rows), *PERP, "strategy.side=both", "strategy.max_live_orders=2")
    assert Probe.seen[:5] == [(0.0, 0), (0.003, 1), (0.002, 1), (-0.001, 1), (0.0, 1)]
    closes = result.orders[result.orders.tag.fillna("").str.startswith("stop:")]
    assert list(zip(closes.side, closes.quantity, closes.reduce_only, closes.status)) == [
        ("sell", 0.001, True, "filled"),
        ("buy", 0.001, True, "filled"),
    ]
    assert not result.diagnostics["pnl_attribution"]["open_lots"]


def test_side_both_take_profit_of_a_lot_under_the_minimum_notional_is_reduce_only():
    """side=both take-profits are plain limits (the net position may be on the other side), but one
    under the 100 USDT minimum can only rest reduce-only (Binance -4164)."""

    class Probe(MakerVol):
        name = "probe_small_tp"
        flags: dict = {}

        def on_bar(self, ctx, bar):
            super().on_bar(ctx, bar)
            if Probe.flags:
                return
            book = self.grids[0].book
            level = self.grids[0].first_entry + 3
            small = book.open_lot(level, float(book.ladder.prices[level]), 0.001, 4.0, 10.0)
            full = book.open_lot(level + 1, float(book.ladder.prices[level + 1]), 0.003, 12.0, 10.0)
            book.place_tp(small), book.place_tp(full)
            below = float(book.ladder.prices[level + 5])  # the price under both lots: their take-profits are live
            orders, _, _ = self.desired(ctx, below, ctx.equity)
            Probe.flags.update({vo.quantity: vo.reduce_only for vo in orders if vo.key.startswith("t")})

    rows = [(40_000.0, 42_000.0, 38_000.0, 40_000.0), (40_000.0, 40_010.0, 39_990.0, 40_000.0)]
    run_strategy(Probe, bars_from(rows), *PERP, "strategy.side=both", "strategy.max_live_orders=2")
    assert Probe.flags == {0.001: True, 0.003: False}

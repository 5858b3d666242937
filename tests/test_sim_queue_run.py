"""``broker=sim broker.fill_model=queue``: a run whose resting orders fill on the stored trade tape.

Scripted tapes in a chDB store (queue ahead, partial fills, trade-through, latency of entry and
cancel, post-only crossing the best offer), the one-line error when the period has no trades, and
a real Binance tape imported with ``quant data import`` and run through ``quant run``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from test_sim_broker import fills_of, scripted, statuses
from test_store import shared_file

from btc_quant.core.errors import DataError
from btc_quant.core.plugins import load_plugins
from btc_quant.core.run import backtest
from btc_quant.core.trades import QuoteArrays, TradeArrays
from btc_quant.plugins.storage.clickhouse import ChdbConfig, ChdbStore
from btc_quant.sdk import Side
from btc_quant.sdk.testing import bars_from, run_strategy

EX, SYM = "binanceusdm", "BTC/USDT:USDT"
T0 = 1_700_000_040_000  # a minute boundary
M = 60_000
BUY, SELL = 1, -1


def store_tape(path, prints, quotes=()):
    """prints: (ts, price, qty, taker side); quotes: (ts, bid, bid qty, ask, ask qty)."""
    store = ChdbStore(ChdbConfig(path=path))
    try:
        ts, px, qty, side = (np.array(c) for c in zip(*prints))
        ids = np.arange(len(ts)) + 1
        store.write_trades(EX, SYM, TradeArrays(ts, ids, ids, px.astype(float), qty.astype(float), side))
        if quotes:
            ts, bid, bq, ask, aq = (np.array(c) for c in zip(*quotes))
            store.write_quotes(EX, SYM, QuoteArrays(ts, np.arange(len(ts)), bid, bq, ask, aq))
    finally:
        store.close()


def bars_of(prints, n):
    """n one-minute bars from T0 whose OHLC are the prints' (a flat bar at the last price when a
    minute has none): the bars the strategy's clock runs on."""
    rows, last = [], prints[0][1]
    for i in range(n):
        px = [p for t, p, *_ in prints if T0 + i * M <= t < T0 + (i + 1) * M] or [last]
        rows.append((px[0], max(px), min(px), px[-1], 1.0))
        last = px[-1]
    return bars_from(rows, start_ms=T0)


def limit(ctx, side, price, qty, post_only=True, tag=None):
    place = ctx.buy if side is Side.BUY else ctx.sell
    return place(qty, price, post_only=post_only, tag=tag)


def run_queue(tmp_path, prints, quotes, actions, n_bars, *settings, model="queue"):
    path = tmp_path / "chdb"
    store_tape(path, prints, quotes)
    script, log = scripted(actions)
    extra = ["broker.fill_model=queue", *settings] if model == "queue" else [f"broker.fill_model={model}"]
    result = run_strategy(
        script,
        bars_of(prints, n_bars),
        f"exchange={EX}",
        f"symbol={SYM}",
        f"store.path={path}",
        "instrument.min_notional=0",
        "broker.funding=off",
        *extra,
        plugins=load_plugins(env={}),
    )
    return result, log


def fill_times(result):
    return [int(t.value // 1_000_000) for t in pd.to_datetime(result.fills["ts"], utc=True)]


def test_order_at_the_bid_fills_only_after_the_displayed_queue_ahead_has_traded(tmp_path):
    quotes = [(T0 + 10_000, 100.0, 5.0, 100.1, 1.0)]
    prints = [
        (T0 + 20_000, 100.1, 0.1, BUY),
        (T0 + M + 10_000, 100.0, 2.0, SELL),  # 3 ahead after it
        (T0 + M + 11_000, 100.1, 4.0, BUY),  # at the ask: not ours
        (T0 + M + 12_000, 100.0, 2.0, SELL),  # 1 ahead
        (T0 + M + 13_000, 100.0, 3.0, SELL),  # 1 for the queue, 1.5 for us
        (T0 + 2 * M + 5_000, 100.1, 0.1, BUY),
    ]
    actions = {0: lambda ctx: limit(ctx, Side.BUY, 100.0, 1.5)}
    result, log = run_queue(tmp_path, prints, quotes, actions, 3)
    assert fills_of(log) == [("buy", 100.0, 1.5, True, False, None)]
    assert fill_times(result) == [T0 + M + 13_000]  # the print that ate the queue, not the bar's start
    assert result.fills["fee"].iloc[0] == pytest.approx(1.5 * 100.0 * 0.0002)  # maker fee (Binance BTCUSDT 0.02 %)
    touch, _ = run_queue(tmp_path / "t", prints, quotes, actions, 3, model="touch")
    assert fill_times(touch) == [T0 + M]  # touch fills on the first bar that reaches the price


def test_partial_fills_then_the_price_trades_through(tmp_path):
    quotes = [(T0 + 10_000, 100.0, 5.0, 100.2, 1.0)]
    prints = [
        (T0 + 20_000, 100.1, 0.1, BUY),
        (T0 + M + 10_000, 100.1, 0.5, SELL),  # inside the spread: first in line
        (T0 + M + 11_000, 100.1, 0.25, SELL),
        (T0 + M + 12_000, 100.0, 0.1, SELL),  # through: the rest
    ]
    actions = {0: lambda ctx: limit(ctx, Side.BUY, 100.1, 2.0)}
    result, log = run_queue(tmp_path, prints, quotes, actions, 2)
    assert [f[2] for f in fills_of(log)] == [0.5, 0.25, 1.25]
    assert fill_times(result) == [T0 + M + 10_000, T0 + M + 11_000, T0 + M + 12_000]
    assert [s for _, s in statuses(log)] == ["new"] and result.orders["status"].tolist() == ["filled"]
    assert result.metrics["final_equity"] == pytest.approx(10_000 - 2.0 * 100.1 * 0.0002 + 2.0 * (100.0 - 100.1))


def test_latency_delays_entry_and_cancel(tmp_path):
    prints = [
        (T0 + 20_000, 100.2, 0.1, BUY),
        (T0 + M + 2_000, 99.9, 0.1, SELL),  # through, but the order is not there yet
        (T0 + M + 3_000, 100.1, 0.1, BUY),
        (T0 + M + 8_000, 100.0, 0.5, SELL),  # eats half the assumed queue of 1.0
        (T0 + M + 9_000, 100.0, 0.7, SELL),  # 0.5 for the queue, 0.2 for us
        (T0 + 2 * M + 3_000, 99.8, 0.1, SELL),  # through, after the cancel was asked for
    ]
    actions = {0: lambda ctx: limit(ctx, Side.BUY, 100.0, 1.0), 1: lambda ctx: [ctx.cancel(o.client_id) for o in ctx.open_orders]}
    result, log = run_queue(tmp_path, prints, (), actions, 3, "broker.latency_ms=5000", "broker.queue_qty=1.0")
    # live from 5 s into bar 1; the cancel asked at bar 1's close takes effect 5 s into bar 2: the
    # print 3 s into bar 2 still fills the rest
    assert [f[2] for f in fills_of(log)] == [0.2, 0.8]
    assert fill_times(result) == [T0 + M + 9_000, T0 + 2 * M + 3_000]
    instant, log0 = run_queue(tmp_path / "0", prints, (), actions, 3, "broker.queue_qty=1.0")
    assert [f[2] for f in fills_of(log0)] == [1.0] and fill_times(instant) == [T0 + M + 2_000]


def test_cancel_wins_when_it_arrives_before_the_print(tmp_path):
    prints = [(T0 + 20_000, 100.2, 0.1, BUY), (T0 + M + 30_000, 100.1, 0.1, BUY), (T0 + 2 * M + 3_000, 99.8, 0.1, SELL)]
    actions = {0: lambda ctx: limit(ctx, Side.BUY, 100.0, 1.0), 1: lambda ctx: [ctx.cancel(o.client_id) for o in ctx.open_orders]}
    _, log = run_queue(tmp_path, prints, (), actions, 3, "broker.latency_ms=2000")
    assert fills_of(log) == [] and [s for _, s in statuses(log)] == ["new", "canceled"]


@pytest.mark.parametrize("quote_advance, filled", [(True, [1.0]), (False, [])])
def test_quotes_shorten_the_queue_unless_told_not_to(tmp_path, quote_advance, filled):
    """5 displayed at the bid when the order joins; the bid then shows 1 (orders ahead canceled):
    a print of 2 at the bid fills 1 of ours. With quote_advance=false only prints count: 3 ahead."""
    quotes = [(T0 + 10_000, 100.0, 5.0, 100.1, 1.0), (T0 + M + 5_000, 100.0, 1.0, 100.1, 1.0)]
    prints = [(T0 + 20_000, 100.1, 0.1, BUY), (T0 + M + 10_000, 100.0, 2.0, SELL)]
    setting = [] if quote_advance else ["broker.quote_advance=false"]
    _, log = run_queue(tmp_path, prints, quotes, {0: lambda ctx: limit(ctx, Side.BUY, 100.0, 1.0)}, 2, *setting)
    assert [f[2] for f in fills_of(log)] == filled


def test_an_amended_order_joins_the_back_of_its_new_price_queue(tmp_path):
    """Amended from 99.0 to the bid (100.0, 2 displayed): it waits behind those 2 again."""
    quotes = [(T0 + 10_000, 100.0, 2.0, 100.1, 1.0)]
    prints = [
        (T0 + 20_000, 100.1, 0.1, BUY),
        (T0 + M + 10_000, 100.0, 1.5, SELL),  # 0.5 ahead after it
        (T0 + M + 20_000, 100.0, 1.0, SELL),  # 0.5 for the queue, 0.5 for us
    ]

    def amend(ctx):
        for order in ctx.open_orders:
            ctx.amend(order.client_id, price=100.0)

    result, log = run_queue(tmp_path, prints, quotes, {0: lambda ctx: (limit(ctx, Side.BUY, 99.0, 1.0), amend(ctx))}, 2)
    assert fills_of(log) == [("buy", 100.0, 0.5, True, False, None)]
    assert fill_times(result) == [T0 + M + 20_000]


def amend_to(price):
    def amend(ctx):
        for order in ctx.open_orders:
            ctx.amend(order.client_id, price=price)

    return amend


def test_an_amend_takes_effect_after_the_latency_and_the_order_fills_at_its_old_price_until_then(tmp_path):
    """Binance's modify order is a request like any other: asked at bar 1's close (99.0 -> 98.0),
    it lands 5 s into bar 2. A print at 99.0 before that fills at the old price; the print through
    98.0 after it fills the rest at the new one. Taking effect at once, only the second fills."""
    prints = [
        (T0 + 20_000, 100.2, 0.1, BUY),
        (T0 + M + 30_000, 100.1, 0.1, BUY),
        (T0 + 2 * M + 2_000, 99.0, 1.0, SELL),  # at the old price: 0.5 for the queue, 0.5 for us
        (T0 + 2 * M + 8_000, 97.9, 0.1, SELL),  # through the new price, after the amend landed
    ]
    actions = {0: lambda ctx: limit(ctx, Side.BUY, 99.0, 1.0), 1: amend_to(98.0)}
    result, log = run_queue(tmp_path, prints, (), actions, 3, "broker.latency_ms=5000", "broker.queue_qty=0.5")
    assert [(f[1], f[2]) for f in fills_of(log)] == [(99.0, 0.5), (98.0, 0.5)]
    assert fill_times(result) == [T0 + 2 * M + 2_000, T0 + 2 * M + 8_000]
    instant, log0 = run_queue(tmp_path / "0", prints, (), actions, 3, "broker.queue_qty=0.5")
    assert [(f[1], f[2]) for f in fills_of(log0)] == [(98.0, 1.0)]


def test_an_amend_landing_after_the_order_filled_does_nothing(tmp_path):
    prints = [
        (T0 + 20_000, 100.2, 0.1, BUY),
        (T0 + M + 30_000, 100.1, 0.1, BUY),
        (T0 + 2 * M + 2_000, 98.9, 0.1, SELL),  # through 99.0 before the amend to 100.0 lands
        (T0 + 2 * M + 8_000, 99.9, 0.1, SELL),
    ]
    actions = {0: lambda ctx: limit(ctx, Side.BUY, 99.0, 1.0), 1: amend_to(100.0)}
    result, log = run_queue(tmp_path, prints, (), actions, 3, "broker.latency_ms=5000", "broker.queue_qty=0.5")
    assert [(f[1], f[2]) for f in fills_of(log)] == [(99.0, 1.0)]
    assert result.orders["status"].tolist() == ["filled"] and result.orders["price"].tolist() == [99.0]


def test_an_order_canceled_as_it_is_placed_never_rests(tmp_path):
    """Placed and canceled in the same millisecond with latency: both requests reach the exchange
    together, the cancel wins, and the through print after it fills nothing."""

    def place_and_cancel(ctx):
        order = limit(ctx, Side.BUY, 100.0, 1.0)
        ctx.cancel(order.client_id)

    prints = [(T0 + 20_000, 100.2, 0.1, BUY), (T0 + M + 30_000, 99.0, 1.0, SELL)]
    result, log = run_queue(tmp_path, prints, (), {0: place_and_cancel}, 2, "broker.latency_ms=100")
    assert fills_of(log) == [] and [s for _, s in statuses(log)] == ["canceled"]
    assert result.orders["updated"].iloc[0] == pd.Timestamp(T0 + M + 100, unit="ms", tz="UTC")


def test_post_only_crossing_the_best_offer_expires_and_a_taker_pays_the_ask(tmp_path):
    quotes = [(T0 + 10_000, 100.0, 5.0, 100.1, 1.0)]
    prints = [(T0 + 20_000, 100.0, 0.1, SELL), (T0 + M + 5_000, 100.0, 0.1, SELL)]
    actions = {0: lambda ctx: (limit(ctx, Side.BUY, 100.1, 0.5, tag="gtx"), limit(ctx, Side.BUY, 100.1, 0.5, post_only=False, tag="taker"))}
    result, log = run_queue(tmp_path, prints, quotes, actions, 2)
    expired = [e for e in log if e[0] == "order" and e[2] == "expired"]
    assert len(expired) == 1 and "GTX" in expired[0][3]
    assert fills_of(log) == [("buy", 100.1, 0.5, False, False, "taker")]
    assert result.fills["fee"].iloc[0] == pytest.approx(0.5 * 100.1 * 0.0005)  # taker fee (0.05 %)


def test_queue_settings_need_the_queue_model(plugins):
    from btc_quant.core.config import load_run_config

    with pytest.raises(Exception, match="latency_ms: used only by fill_model=queue"):
        load_run_config(["broker.latency_ms=50"], plugins.registry)


def test_a_period_without_trades_is_one_line_naming_it(tmp_path, quant, isolated_env):
    script, _ = scripted({})
    with pytest.raises(DataError, match=r"no binanceusdm BTC/USDT:USDT trades stored for 2023-11-14"):
        run_strategy(script, bars_of([(T0, 100.0, 1.0, BUY)], 2), f"store.path={tmp_path / 'empty'}", "broker.fill_model=queue")
    done = quant("run", "strategy=grid", "broker.fill_model=queue", "data.start=2022-01-10", "data.end=2022-01-10T01:00")
    assert done.returncode == 2, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        "error: broker.fill_model=queue: no binanceusdm BTC/USDT:USDT trades stored for 2022-01-10 00:00 .. 2022-01-10 01:00 UTC"
    ]
    assert "quant data import FILE exchange=binanceusdm symbol=BTC/USDT:USDT kind=trades" in done.stderr
    assert "Traceback" not in done.stderr


def test_real_tape_imported_then_run_fills_fewer_maker_orders_than_touch(quant, isolated_env):
    """The 2024-07-18 Binance perpetual tape (10,701 prints, 52,260 best bid/offer updates): a grid
    3 bp apart on bars built from it. Orders resting at a minute's low or high wait behind the
    displayed bid/ask, so the queue replay fills fewer of them than touch (which fills them all)."""
    name = "binance_btcusdt_perp_2024-07-18_2357"
    env = {"QUANT_HOME": str(isolated_env)}
    for kind in ("trades", "bookticker"):
        file = shared_file(f"trades/{name}_{kind}.parquet")
        quant(
            "data",
            "import",
            str(file),
            f"exchange={EX}",
            f"symbol={SYM}",
            f"kind={'quotes' if kind == 'bookticker' else 'trades'}",
            env=env,
            check=True,
        )
    settings = [
        "strategy=grid",
        "strategy.levels=8",
        "strategy.step_pct=0.00003",
        "strategy.quantity=0.01",
        f"exchange={EX}",
        f"symbol={SYM}",
    ]
    done = quant("run", *settings, "broker.fill_model=queue", env=env, check=True)
    said = " ".join(done.stderr.split())  # log lines wrap
    assert "9 bars built from its trades" in said
    assert "fill_model=queue: 10,701 trades and 52,260 best bid/offer updates over 2024-07-18 23:57 .. 2024-07-19 00:06 UTC" in said
    cli_fills = int(re.search(r"^fills\s+(\d+)", done.stdout, re.M).group(1))
    plugins = load_plugins(env={})
    queue = backtest([*settings, "broker.fill_model=queue"], plugins=plugins)
    touch = backtest([*settings, "broker.fill_model=touch"], plugins=plugins)
    assert cli_fills == len(queue.fills)  # the same run in-process
    assert queue.fills["is_maker"].all() and touch.fills["is_maker"].all()
    assert 0 < len(queue.fills) < len(touch.fills), (len(queue.fills), len(touch.fills))
    # queue fills happen at the print that filled them, inside the minute; touch fills at bar starts
    ms = pd.to_datetime(queue.fills["ts"], utc=True).astype("int64") // 1_000_000
    assert (ms % M != 0).any()


def test_funding_and_liquidation_are_the_cores_as_on_bars(tmp_path):
    """A market buy at 100 (the last print, and the next bar's open), funding at bar 2's open (every
    2 minutes from T0), then a print far below the liquidation price: the queue replay books the
    same entry, funding payment and liquidation (price, quantity, clearance fee) as the bar walk, by
    the same core functions. (A taker placed at a close fills at once on the tape and at the next
    open on bars; funding is due at neither moment here.)"""
    prints = [
        (T0 + 20_000, 100.0, 0.1, BUY),
        (T0 + M + 1_000, 100.0, 0.1, BUY),
        (T0 + 2 * M + 1_000, 99.0, 0.1, SELL),
        (T0 + 2 * M + 30_000, 90.0, 5.0, SELL),
        (T0 + 3 * M + 1_000, 91.0, 0.1, BUY),
    ]
    settings = ("broker.initial_cash=100", "broker.funding=constant", "broker.funding_interval=2m", "broker.funding_rate=0.001")
    actions = {0: lambda ctx: ctx.buy(19.0)}
    runs = {}
    for model in ("queue", "through"):
        path = tmp_path / model
        store_tape(path, prints)
        script, log = scripted(actions)
        result = run_strategy(
            script,
            bars_of(prints, 4),
            f"exchange={EX}",
            f"symbol={SYM}",
            f"store.path={path}",
            "instrument.min_notional=0",
            f"broker.fill_model={model}",
            *settings,
            plugins=load_plugins(env={}),
        )
        runs[model] = (result, fills_of(log))
    (queue, qfills), (bars, bfills) = runs["queue"], runs["through"]
    assert qfills == bfills and len(qfills) == 2 and qfills[1][4]  # the entry, then the liquidation
    assert queue.fills[["price", "quantity", "fee"]].values.tolist() == bars.fills[["price", "quantity", "fee"]].values.tolist()
    assert queue.metrics["liquidations"] == bars.metrics["liquidations"] == 1
    assert (
        queue.funding[["rate", "mark", "position", "amount"]].values.tolist()
        == bars.funding[["rate", "mark", "position", "amount"]].values.tolist()
    )
    assert len(queue.funding) >= 1
    assert queue.metrics["final_equity"] == pytest.approx(bars.metrics["final_equity"])


def test_the_run_mode_fills_as_the_compiled_replay_on_a_real_tape(tmp_path):
    """Eight post-only orders placed at a minute's close on the real 2024-08-08 tape, never
    canceled: the run (the sim walking the tape, booking through the venue core) fills them at the
    same prints, prices and quantities as sim_queue.replay_orders (the calibration's replay)."""
    from btc_quant.plugins.brokers.sim_queue import QueueParams, replay_orders

    name = "binance_btcusdt_perp_2024-08-08_2354"
    trades = TradeArrays.from_frame(pd.read_parquet(shared_file(f"trades/{name}_trades.parquet")))
    quotes = QuoteArrays.from_frame(pd.read_parquet(shared_file(f"trades/{name}_bookticker.parquet")))
    path = tmp_path / "chdb"
    store = ChdbStore(ChdbConfig(path=path))
    try:
        store.write_trades(EX, SYM, trades)
        store.write_quotes(EX, SYM, quotes)
        bars = store.trade_bars(EX, SYM, "1m")
    finally:
        store.close()
    place = int(bars.ts[1]) + M  # the close of the tape's second bar
    mid = float(trades.price[np.searchsorted(trades.ts, place) - 1])
    prices = np.round(mid + np.array([-6.0, -3.0, -1.0, -0.1, 0.1, 1.0, 3.0, 6.0]), 1)

    def place_grid(ctx):
        for p in prices:
            limit(ctx, Side.BUY if p < mid else Side.SELL, float(p), 0.05)

    script, _ = scripted({1: place_grid})
    result = run_strategy(
        script,
        bars,
        f"exchange={EX}",
        f"symbol={SYM}",
        f"store.path={path}",
        "broker.initial_cash=1000000",
        "broker.funding=off",
        "broker.fill_model=queue",
        "broker.queue_qty=1.0",
        plugins=load_plugins(env={}),
    )
    rows = pd.DataFrame({"side": np.where(prices < mid, 1, -1), "price": prices, "qty": 0.05, "place_ts": place})
    whole = replay_orders(trades, rows, QueueParams(tick=0.1, queue_qty=1.0), quotes)
    want = sorted((int(r.ts), float(r.price), round(float(r.qty), 3)) for r in whole.fills.itertuples())
    got = sorted(zip(fill_times(result), result.fills["price"].tolist(), result.fills["quantity"].round(3).tolist()))
    assert got == want and len(want) >= 4

"""The queue-aware trade replay (``fill_model=queue``): scripted tapes, then the real Binance tapes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_store import shared_file

from btc_quant.core.trades import QuoteArrays, TradeArrays
from btc_quant.plugins.brokers.sim_queue import QueueParams, join_queue, on_quote, on_trade, replay_orders

BUY, SELL = 1, -1


def tape(*prints) -> TradeArrays:
    """prints: (ts, price, qty, taker side)."""
    ts, px, qty, side = zip(*prints)
    ids = np.arange(len(ts)) + 1
    return TradeArrays(np.array(ts), ids, ids, np.array(px, float), np.array(qty, float), np.array(side))


def book(*quotes) -> QuoteArrays:
    """quotes: (ts, bid, bid qty, ask, ask qty)."""
    ts, bid, bq, ask, aq = zip(*quotes)
    return QuoteArrays(
        np.array(ts),
        np.zeros(len(ts), dtype=np.int64),
        np.array(bid, float),
        np.array(bq, float),
        np.array(ask, float),
        np.array(aq, float),
    )


def orders(*rows) -> pd.DataFrame:
    """rows: (side, price, qty, place_ts[, cancel_ts])."""
    cols = ["side", "price", "qty", "place_ts", "cancel_ts"]
    return pd.DataFrame([r + (None,) * (5 - len(r)) for r in rows], columns=cols)


def test_pure_rules():
    # at the bid: behind its displayed qty; inside the spread: first; below: the parameter; at the ask: crosses
    assert join_queue(BUY, 100.0, 100.0, 5.0, 100.1, 2.0, -1.0, 9.0, 0.1) == 5.0
    assert join_queue(BUY, 100.05, 100.0, 5.0, 100.1, 2.0, -1.0, 9.0, 0.01) == 0.0
    assert join_queue(BUY, 99.5, 100.0, 5.0, 100.1, 2.0, -1.0, 9.0, 0.1) == 9.0
    assert join_queue(BUY, 100.1, 100.0, 5.0, 100.1, 2.0, -1.0, 9.0, 0.1) == -1.0
    assert join_queue(SELL, 100.1, 100.0, 5.0, 100.1, 2.0, -1.0, 9.0, 0.1) == 2.0
    assert join_queue(SELL, 100.0, 100.0, 5.0, 100.1, 2.0, -1.0, 9.0, 0.1) == -1.0
    # no quotes: the parameter, and crossing judged against the last print
    assert join_queue(BUY, 100.0, -1.0, 0.0, -1.0, 0.0, 100.0, 9.0, 0.1) == 9.0
    assert join_queue(BUY, 100.2, -1.0, 0.0, -1.0, 0.0, 100.0, 9.0, 0.1) == -1.0
    # prints: same-side takers never fill; at the price they eat the queue first; through fills all
    assert on_trade(BUY, 100.0, 1.0, 3.0, 100.0, 5.0, BUY, 0.1) == (0.0, 3.0)
    assert on_trade(BUY, 100.0, 1.0, 3.0, 100.0, 2.0, SELL, 0.1) == (0.0, 1.0)
    assert on_trade(BUY, 100.0, 1.0, 3.0, 100.0, 3.5, SELL, 0.1) == (0.5, 0.0)
    assert on_trade(BUY, 100.0, 1.0, 3.0, 99.9, 0.001, SELL, 0.1) == (1.0, 0.0)
    assert on_trade(SELL, 100.0, 1.0, 3.0, 100.1, 0.001, BUY, 0.1) == (1.0, 0.0)
    assert on_trade(SELL, 100.0, 1.0, 0.0, 100.0, 0.4, BUY, 0.1) == (0.4, 0.0)
    # quotes only shorten the queue: to what is displayed, to nothing when the level is gone
    assert on_quote(BUY, 100.0, 3.0, 100.0, 1.0, 100.1, 1.0, 0.1) == 1.0
    assert on_quote(BUY, 100.0, 3.0, 100.0, 7.0, 100.1, 1.0, 0.1) == 3.0
    assert on_quote(BUY, 100.0, 3.0, 99.9, 7.0, 100.0, 1.0, 0.1) == 0.0
    assert on_quote(BUY, 100.0, 3.0, 100.2, 7.0, 100.3, 1.0, 0.1) == 3.0


def test_order_at_the_bid_fills_only_after_the_queue_ahead_has_traded():
    quotes = book((0, 100.0, 5.0, 100.1, 1.0))
    prints = tape((10, 100.0, 2.0, SELL), (11, 100.1, 4.0, BUY), (12, 100.0, 2.0, SELL), (13, 100.0, 3.0, SELL))
    got = replay_orders(prints, orders((BUY, 100.0, 1.5, 1)), QueueParams(tick=0.1), quotes)
    assert got.fills[["ts", "price", "qty"]].values.tolist() == [[13, 100.0, 1.5]]
    assert got.orders.status.tolist() == ["filled"]


def test_partial_fills_then_trade_through():
    quotes = book((0, 100.0, 5.0, 100.2, 1.0))
    prints = tape((10, 100.1, 0.5, SELL), (11, 100.1, 0.25, SELL), (12, 100.0, 0.1, SELL))
    got = replay_orders(prints, orders((BUY, 100.1, 2.0, 1)), QueueParams(tick=0.1), quotes)
    assert got.fills[["ts", "qty"]].values.tolist() == [[10, 0.5], [11, 0.25], [12, 1.25]]
    assert got.orders.status.tolist() == ["filled"]


def test_a_touch_with_too_little_volume_does_not_fill():
    prints = tape((10, 100.0, 0.2, SELL), (11, 100.0, 0.3, SELL), (12, 100.3, 1.0, BUY))
    got = replay_orders(prints, orders((BUY, 100.0, 1.0, 0)), QueueParams(tick=0.1, queue_qty=1.0))
    assert got.fills.empty
    assert got.orders.status.tolist() == ["resting"] and got.orders.queue_left.tolist() == [pytest.approx(0.5)]


def test_quotes_shorten_the_queue_unless_told_not_to():
    quotes = book((0, 100.0, 5.0, 100.1, 1.0), (5, 100.0, 0.5, 100.1, 1.0))
    prints = tape((10, 100.0, 1.0, SELL))
    shortened = replay_orders(prints, orders((BUY, 100.0, 1.0, 1)), QueueParams(tick=0.1), quotes)
    assert shortened.fills.qty.tolist() == [0.5]
    strict = replay_orders(prints, orders((BUY, 100.0, 1.0, 1)), QueueParams(tick=0.1, quote_advance=False), quotes)
    assert strict.fills.empty and strict.orders.queue_left.tolist() == [4.0]


def test_latency_delays_entry_and_cancel():
    prints = tape((12, 99.0, 1.0, SELL), (15, 99.0, 1.0, SELL), (22, 98.0, 1.0, SELL), (26, 97.0, 1.0, SELL))
    params = QueueParams(tick=0.1, latency_ms=5, post_only=False)
    got = replay_orders(prints, orders((BUY, 99.5, 1.0, 10)), params)
    assert got.fills.ts.tolist() == [15]  # the print at 12 came before the order reached the book
    # a cancel requested at 20 takes effect at 25: the print at 22 still fills, the one at 26 would not
    got = replay_orders(prints, orders((BUY, 98.5, 1.0, 10, 20), (BUY, 97.5, 1.0, 10, 20)), params)
    assert got.fills.ts.tolist() == [22]
    assert got.orders.status.tolist() == ["filled", "cancelled"]


def test_post_only_orders_that_would_cross_are_rejected():
    quotes = book((0, 100.0, 5.0, 100.1, 1.0))
    prints = tape((10, 100.1, 1.0, BUY))
    got = replay_orders(prints, orders((BUY, 100.1, 1.0, 1), (SELL, 100.0, 1.0, 1), (SELL, 100.1, 1.0, 1)), QueueParams(tick=0.1), quotes)
    assert got.orders.status.tolist() == ["rejected", "rejected", "resting"]
    assert got.orders.queue_left.tolist()[2] == 0.0  # the taker buy of 1.0 ate the ask's 1.0 ahead


# ----------------------------------------------------------------------------------------------
# The real tapes


def real(name):
    trades = TradeArrays.from_frame(pd.read_parquet(shared_file(f"trades/{name}_trades.parquet")))
    quotes = QuoteArrays.from_frame(pd.read_parquet(shared_file(f"trades/{name}_bookticker.parquet")))
    return trades, quotes


@pytest.mark.parametrize(
    "name", ["binance_btcusdt_perp_2024-08-08_2354", "binance_btcusdt_perp_2023-04-04_2358", "binance_btcusdt_perp_2024-07-18_2357"]
)
def test_real_tape_order_at_best_bid_waits_for_the_displayed_quantity(name):
    trades, quotes = real(name)
    q = quotes.to_frame()
    t = trades.to_frame()
    checked = earlier_touch = 0
    for i in range(500, len(q) - 1000, len(q) // 25):
        place = int(q.ts[i]) + 1
        # the book the order meets: the last quote before it goes live (same-ms quotes come after it)
        seen = q[q.ts < place].iloc[-1]
        price, ahead = float(seen.bid_px), float(seen.bid_qty)
        after = t[t.ts >= place]
        at_price_sells = after[(after.price == price) & (after.side == SELL)]
        through = after[after.price < price - 0.05]
        cum = at_price_sells.qty.cumsum()
        eaten = at_price_sells[cum > ahead]
        expect_ts = min(int(eaten.ts.iloc[0]) if len(eaten) else 2**62, int(through.ts.iloc[0]) if len(through) else 2**62)
        if expect_ts == 2**62:
            continue
        order = orders((BUY, price, 0.001, place))
        strict = replay_orders(trades, order, QueueParams(tick=0.1, quote_advance=False), quotes)
        assert strict.fills.ts.iloc[0] == expect_ts, f"quote {i}"
        # the first touch of the price (what a `touch` bar fill assumes) comes no later
        touch = after[after.price <= price]
        assert int(touch.ts.iloc[0]) <= expect_ts
        earlier_touch += int(touch.ts.iloc[0]) < expect_ts
        # letting quotes shorten the queue can only bring the fill forward
        loose = replay_orders(trades, order, QueueParams(tick=0.1), quotes)
        assert loose.fills.ts.iloc[0] <= expect_ts
        checked += 1
    assert checked >= 10
    assert earlier_touch >= checked // 2  # mostly, the price touches the order well before it fills

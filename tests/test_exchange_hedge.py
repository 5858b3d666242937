"""Hedge mode (Binance ``dualSidePosition``) on the local Binance USD-M, through the real ccxt
``binanceusdm`` client: switching, orders with ``positionSide``, Binance's errors for the wrong
combination, per-side positions, the user-data ``ps`` field and the hedge-mode liquidation."""

from __future__ import annotations

import ccxt
import numpy as np
import pytest
from test_exchange_trading import BARS, KEYS, START, SYMBOL, client, last_price, server  # noqa: F401 - fixtures

from btc_quant.plugins.brokers.sim import venue as vc
from btc_quant.testing.exchange.trading import _BB, TEST_API_KEY


def by_side(positions) -> dict:
    return {p["side"]: p for p in positions}


def test_switching_position_mode_is_read_back_and_refused_like_binance(client, server):  # noqa: F811
    assert client.fetch_position_mode(SYMBOL)["hedged"] is False
    with pytest.raises(ccxt.ExchangeError, match="-4059"):  # already one-way: "No need to change position side."
        client.set_position_mode(False)
    client.set_position_mode(True)
    assert client.fetch_position_mode(SYMBOL)["hedged"] is True
    client.create_order(SYMBOL, "market", "buy", 0.01, None, {"positionSide": "LONG"})
    with pytest.raises(ccxt.ExchangeError, match="-4068"):  # a position exists
        client.set_position_mode(False)
    client.create_order(SYMBOL, "market", "sell", 0.01, None, {"positionSide": "LONG"})
    client.create_order(SYMBOL, "limit", "buy", 0.01, round(last_price(server) - 500, 1), {"positionSide": "LONG"})
    with pytest.raises(ccxt.ExchangeError, match="-4067"):  # an open order exists
        client.set_position_mode(False)


def test_long_and_short_are_held_at_once_and_closed_by_sell_long_and_buy_short(client, server):  # noqa: F811
    server.state.trading.accounts[TEST_API_KEY].wallet = 150.0  # small enough for a liquidation price to exist
    client.set_position_mode(True)
    long = client.create_order(SYMBOL, "market", "buy", 0.02, None, {"positionSide": "LONG"})
    short = client.create_order(SYMBOL, "market", "sell", 0.01, None, {"positionSide": "SHORT"})
    assert (long["info"]["positionSide"], short["info"]["positionSide"]) == ("LONG", "SHORT")
    sides = by_side(client.fetch_positions([SYMBOL]))
    assert (sides["long"]["contracts"], sides["short"]["contracts"]) == (0.02, 0.01)
    assert sides["long"]["hedged"] and sides["short"]["hedged"]
    # cross margin: Binance's hedge-mode formula gives the account one liquidation price, the venue core's
    truth = server.state.trading.truth(TEST_API_KEY)
    legs = truth["positions"]
    assert set(legs) == {"BTCUSDT|LONG", "BTCUSDT|SHORT"} and truth["dual_side"] is True
    lp, _ = vc.hedged_liquidation_price(truth["wallet"], 0.02, legs["BTCUSDT|LONG"]["entry"], 0.01, legs["BTCUSDT|SHORT"]["entry"], _BB)
    assert lp > 0 and sides["long"]["liquidationPrice"] == sides["short"]["liquidationPrice"] == pytest.approx(lp, rel=1e-6)
    # the v2 account lists both legs too
    rows = client.fapiPrivateV2GetAccount()["positions"]
    assert {r["positionSide"] for r in rows if float(r["positionAmt"])} == {"LONG", "SHORT"}
    # closing: SELL LONG / BUY SHORT, never more than the side holds
    with pytest.raises(ccxt.InvalidOrder, match="-2022"):
        client.create_order(SYMBOL, "market", "buy", 0.02, None, {"positionSide": "SHORT"})
    client.create_order(SYMBOL, "market", "sell", 0.02, None, {"positionSide": "LONG"})
    assert [(p["side"], p["contracts"]) for p in client.fetch_positions([SYMBOL])] == [("short", 0.01)]
    trades = client.fetch_my_trades(SYMBOL)
    assert [t["info"]["positionSide"] for t in trades] == ["LONG", "SHORT", "LONG"]
    assert float(trades[-1]["info"]["realizedPnl"]) != 0.0 or trades[-1]["price"] == trades[0]["price"]


@pytest.mark.parametrize(
    ("hedged", "params", "error"),
    [
        (False, {"positionSide": "LONG"}, "-4061"),  # one-way account, LONG order
        (True, {}, "-4061"),  # hedge account, BOTH order
        (True, {"positionSide": "LONG", "reduceOnly": True}, "-1106"),  # reduceOnly not accepted in hedge mode
    ],
)
def test_wrong_position_side_or_reduce_only_in_hedge_mode_is_refused(client, server, hedged, params, error):  # noqa: F811
    if hedged:
        client.set_position_mode(True)
    with pytest.raises(ccxt.BaseError, match=error):
        client.create_order(SYMBOL, "limit", "sell", 0.01, round(last_price(server) + 500, 1), params)
    assert client.fetch_open_orders(SYMBOL) == []


def test_cross_hedge_liquidation_closes_both_legs_at_the_one_price(client, server):  # noqa: F811
    trading = server.state.trading
    trading.accounts[TEST_API_KEY].wallet = 60.0  # a small wallet: the net long is liquidated soon
    client.set_position_mode(True)
    client.set_leverage(100, SYMBOL)
    client.create_order(SYMBOL, "market", "buy", 0.05, None, {"positionSide": "LONG"})
    client.create_order(SYMBOL, "market", "sell", 0.03, None, {"positionSide": "SHORT"})
    sides = by_side(client.fetch_positions([SYMBOL]))
    lp = sides["long"]["liquidationPrice"]
    assert lp == sides["short"]["liquidationPrice"] and lp < last_price(server)
    i = int(np.searchsorted(BARS.ts, START, "right"))
    k = i + int(np.argmax(BARS.low[i:] < lp - 0.05))
    assert BARS.low[k] < lp  # the recorded path does reach it
    server.state.clock.set(int(BARS.ts[k]) + 60_000)
    assert client.fetch_positions([SYMBOL]) == []
    closes = [o for o in client.fetch_orders(SYMBOL) if o["info"]["origType"] == "LIQUIDATION"]
    assert sorted(o["info"]["positionSide"] for o in closes) == ["LONG", "SHORT"]
    # both legs at the one price; funding paid on the way (08:00 UTC) moves LP a little from the start's
    assert closes[0]["average"] == closes[1]["average"] == pytest.approx(lp, rel=2e-3)
    assert client.fetch_balance()["USDT"]["total"] >= 0

"""Trading on the local Binance USD-M through the real ccxt ``binanceusdm`` client."""

from __future__ import annotations

import asyncio

import ccxt
import numpy as np
import pytest

from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.plugins.exchanges.ccxt_client import make_exchange
from btc_quant.testing.exchange import ExchangeServer, binance_state
from btc_quant.testing.exchange.trading import MAKER_FEE, TAKER_FEE, TEST_API_KEY, TEST_SECRET

SYMBOL = "BTC/USDT:USDT"
KEYS = {"apiKey": TEST_API_KEY, "secret": TEST_SECRET}
BARS = read_bars_file(SAMPLE.path)
START = int(BARS.ts[3000]) + 30_000  # half-way through a real minute of January 2022


@pytest.fixture
def server():
    with ExchangeServer(binance_state(clock_start_ms=START)) as srv:
        yield srv


@pytest.fixture
def client(server):
    c = make_exchange("binanceusdm", url=server.url, credentials=KEYS)
    c.load_markets()
    return c


def last_price(server) -> float:
    return server.state.trading.price("BTCUSDT")


def first_cross_below(level: float, after_ms: int) -> int:
    """Open time of the first recorded minute after ``after_ms`` whose low is strictly below ``level``."""
    i = int(np.searchsorted(BARS.ts, after_ms, "right"))
    k = i + int(np.argmax(BARS.low[i:] < level))
    assert BARS.low[k] < level
    return int(BARS.ts[k])


async def user_streams_open(state, count: int = 1, timeout_s: float = 10.0) -> None:
    """Wait until ``count`` user-data connections follow the account (events from then on reach them)."""

    async def poll():
        while state.count("/fstream/private/ws") < count:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout_s)


def test_post_only_order_rests_is_found_by_both_ids_and_cancels(client, server):
    price = round(last_price(server) - 100, 1)
    order = client.create_order(SYMBOL, "limit", "buy", 0.01, price, {"postOnly": True, "clientOrderId": "bot-1"})
    assert (order["status"], order["postOnly"], order["clientOrderId"], order["price"]) == ("open", True, "bot-1", price)
    assert [o["id"] for o in client.fetch_open_orders(SYMBOL)] == [order["id"]]
    assert client.fetch_order(order["id"], SYMBOL)["clientOrderId"] == "bot-1"
    assert client.fetch_order(None, SYMBOL, {"clientOrderId": "bot-1"})["id"] == order["id"]
    assert client.cancel_order(order["id"], SYMBOL)["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound):  # -2011 Unknown order sent.
        client.cancel_order(order["id"], SYMBOL)
    with pytest.raises(ccxt.OrderNotFound):  # -2013 Order does not exist.
        client.fetch_order("123", SYMBOL)
    assert client.fetch_open_orders(SYMBOL) == []
    assert [o["status"] for o in client.fetch_orders(SYMBOL)] == ["canceled"]


def test_post_only_that_would_take_is_rejected_and_not_recorded(client, server):
    with pytest.raises(ccxt.OrderNotFillable, match="-5022"):
        client.create_order(SYMBOL, "limit", "buy", 0.01, round(last_price(server) + 10, 1), {"postOnly": True})
    with pytest.raises(ccxt.InvalidOrder, match="-4164"):  # 0.001 BTC is under the 100 USDT minimum notional
        client.create_order(SYMBOL, "limit", "buy", 0.001, round(last_price(server) - 10, 1), {"postOnly": True})
    assert client.fetch_orders(SYMBOL) == []


def test_client_order_id_is_unique_among_open_orders(client, server):
    price = round(last_price(server) - 200, 1)
    first = client.create_order(SYMBOL, "limit", "buy", 0.01, price, {"postOnly": True, "clientOrderId": "dup"})
    with pytest.raises(ccxt.InvalidOrder, match="-4116"):
        client.create_order(SYMBOL, "limit", "buy", 0.01, price, {"postOnly": True, "clientOrderId": "dup"})
    client.cancel_order(first["id"], SYMBOL)
    again = client.create_order(SYMBOL, "limit", "buy", 0.01, price, {"postOnly": True, "clientOrderId": "dup"})
    assert again["id"] != first["id"]
    assert client.fetch_order(None, SYMBOL, {"clientOrderId": "dup"})["id"] == again["id"]  # the open one


def test_resting_limit_fills_only_when_the_real_price_trades_through(client, server):
    level = round(last_price(server) - 150, 1)
    order = client.create_order(SYMBOL, "limit", "buy", 0.01, level, {"postOnly": True})
    cross_minute = first_cross_below(level, START)
    server.state.clock.set(cross_minute - 1)
    assert client.fetch_order(order["id"], SYMBOL)["status"] == "open"
    server.state.clock.set(cross_minute + 60_000)
    filled = client.fetch_order(order["id"], SYMBOL)
    assert (filled["status"], filled["filled"], filled["average"]) == ("closed", 0.01, level)
    (trade,) = client.fetch_my_trades(SYMBOL)
    assert trade["takerOrMaker"] == "maker" and cross_minute <= trade["timestamp"] < cross_minute + 60_000
    assert trade["fee"]["cost"] == pytest.approx(level * 0.01 * MAKER_FEE)
    (position,) = client.fetch_positions([SYMBOL])
    assert (position["side"], position["contracts"], position["entryPrice"]) == ("long", 0.01, level)


def test_market_round_trip_books_realised_pnl_and_fees(client, server):
    buy = client.create_order(SYMBOL, "market", "buy", 0.02)
    p1 = buy["average"]
    assert buy["status"] == "closed" and p1 == last_price(server)
    later = START + 7 * 60 * 60_000
    server.state.clock.set(later)
    p2 = last_price(server)
    with pytest.raises(ccxt.InvalidOrder, match="-2022"):  # reduce-only in the wrong direction
        client.create_order(SYMBOL, "market", "buy", 0.01, None, {"reduceOnly": True})
    sell = client.create_order(SYMBOL, "market", "sell", 0.02, None, {"reduceOnly": True})
    assert sell["average"] == p2
    trades = client.fetch_my_trades(SYMBOL)
    assert [t["side"] for t in trades] == ["buy", "sell"]
    assert float(trades[1]["info"]["realizedPnl"]) == pytest.approx(0.02 * (p2 - p1))
    # one real funding time (08:00 UTC) falls inside: longs pay notional x rate when it is positive
    market = server.state.market("usdm", "BTCUSDT")
    (k,) = np.flatnonzero((market.funding_ts > START) & (market.funding_ts <= later))
    funding = -0.02 * market.price_at(int(market.funding_ts[k])) * market.funding_rate[k]
    (paid,) = client.fetch_funding_history(SYMBOL)
    assert paid["timestamp"] == market.funding_ts[k] and paid["amount"] == pytest.approx(funding)
    expected = 10_000 + 0.02 * (p2 - p1) - 0.02 * (p1 + p2) * TAKER_FEE + funding
    assert client.fetch_balance()["USDT"]["total"] == pytest.approx(expected, abs=1e-6)
    assert client.fetch_positions() == []


def test_leverage_margin_mode_and_insufficient_margin(client, server):
    assert client.set_leverage(5, SYMBOL)["leverage"] == 5
    client.set_margin_mode("isolated", SYMBOL)
    with pytest.raises(ccxt.MarginModeAlreadySet):  # -4046 "No need to change margin type."
        client.set_margin_mode("isolated", SYMBOL)
    leverage = client.fetch_leverages([SYMBOL])[SYMBOL]
    assert (leverage["marginMode"], leverage["longLeverage"]) == ("isolated", 5)
    price = last_price(server)
    too_big = round(10_000 * 5 / price + 0.01, 3)
    with pytest.raises(ccxt.InsufficientFunds, match="-2019"):
        client.create_order(SYMBOL, "limit", "buy", too_big, round(price - 100, 1), {"postOnly": True})
    client.create_order(SYMBOL, "market", "buy", 0.1)
    with pytest.raises(ccxt.ExchangeError, match="-4048"):
        client.set_margin_mode("cross", SYMBOL)
    (position,) = client.fetch_positions([SYMBOL])
    assert position["marginMode"] == "isolated"
    assert position["collateral"] == pytest.approx(0.1 * price / 5)
    client.add_margin(SYMBOL, 100)
    (position,) = client.fetch_positions([SYMBOL])
    assert position["collateral"] == pytest.approx(0.1 * price / 5 + 100)


def test_isolated_position_is_liquidated_where_the_price_path_reaches_its_liquidation_price(client, server):
    client.set_leverage(100, SYMBOL)
    client.set_margin_mode("isolated", SYMBOL)
    client.create_order(SYMBOL, "market", "buy", 0.01)
    (position,) = client.fetch_positions([SYMBOL])
    liq = position["liquidationPrice"]
    entry = position["entryPrice"]
    # Binance's formula for one isolated long: (WB - |pos|*EP) / (|pos|*MMR - |pos|), MMR 0.4%
    wallet = 0.01 * entry / 100
    assert liq == pytest.approx((wallet - 0.01 * entry) / (0.01 * 0.004 - 0.01))
    minute = first_cross_below(liq + 0.05, START)
    server.state.clock.set(minute + 60_000)
    assert client.fetch_positions() == []
    orders = client.fetch_orders(SYMBOL)
    assert orders[-1]["clientOrderId"].startswith("autoclose-") and orders[-1]["info"]["origType"] == "LIQUIDATION"
    fees = 0.01 * entry * TAKER_FEE
    assert client.fetch_balance()["USDT"]["total"] == pytest.approx(10_000 - fees - wallet, abs=0.5)


def test_signature_key_and_timestamp_are_checked(server):
    bad = make_exchange("binanceusdm", url=server.url, credentials={"apiKey": TEST_API_KEY, "secret": "wrong"})
    bad.load_markets()
    with pytest.raises(ccxt.AuthenticationError, match="-1022"):
        bad.fetch_balance()
    unknown = make_exchange("binanceusdm", url=server.url, credentials={"apiKey": "nobody", "secret": "x"})
    unknown.load_markets()
    with pytest.raises(ccxt.AuthenticationError, match="-2015"):
        unknown.fetch_balance()
    good = make_exchange("binanceusdm", url=server.url, credentials=KEYS)
    good.load_markets()
    server.state.trading.clock_skew_ms = 60_000
    with pytest.raises(ccxt.InvalidNonce, match="-1021"):
        good.fetch_balance()
    server.state.trading.clock_skew_ms = 0
    assert good.fetch_balance()["USDT"]["free"] == 10_000
    # ccxt rounds to the filters; its implicit API does not, and Binance's filter errors come back
    order = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
    with pytest.raises(ccxt.BadRequest, match="-1111"):
        good.fapiPrivatePostOrder({**order, "quantity": "0.0105", "price": "40000"})
    with pytest.raises(ccxt.ExchangeError, match="-4014"):
        good.fapiPrivatePostOrder({**order, "quantity": "0.01", "price": "40000.05"})


def test_async_client_trades_and_sees_the_same_truth(server):
    async def run():
        client = make_exchange("binanceusdm", url=server.url, credentials=KEYS, pro=True)
        try:
            await client.load_markets()
            price = server.state.trading.price("BTCUSDT")
            orders = await asyncio.gather(
                *[client.create_order(SYMBOL, "limit", "sell", 0.01, round(price + 50 * (k + 1), 1), {"postOnly": True}) for k in range(3)]
            )
            await client.cancel_all_orders(SYMBOL)
            return orders, await client.fetch_open_orders(SYMBOL)
        finally:
            await client.close()

    orders, still_open = asyncio.run(run())
    assert len({o["id"] for o in orders}) == 3 and still_open == []
    truth = server.state.trading.truth()
    assert truth["open_orders"] == [] and truth["orders"] == 3 and truth["wallet"] == 10_000


def _control(url: str, path: str, body: dict | None = None) -> dict:
    import json
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


def test_process_keeps_trading_state_for_a_restarted_bot_and_answers_the_control_api():
    from btc_quant.testing.process import ServerProcess

    with ServerProcess("btc_quant.testing.exchange", "--port", "0", "--clock-start", str(START), "--usdt", "5000") as proc:
        bot = make_exchange("binanceusdm", url=proc.url, credentials=KEYS)
        bot.load_markets()
        price = float(bot.fetch_ohlcv(SYMBOL, "1m", limit=1)[-1][4])
        resting = bot.create_order(SYMBOL, "limit", "buy", 0.01, round(price - 300, 1), {"postOnly": True, "clientOrderId": "keep"})
        gone = bot.create_order(SYMBOL, "limit", "sell", 0.01, round(price + 300, 1), {"postOnly": True})
        del bot  # the bot "dies"; the exchange process keeps its book
        cancelled = _control(proc.url, "/_control/cancel", {"order_id": int(gone["id"])})
        assert cancelled["status"] == "CANCELED"
        restarted = make_exchange("binanceusdm", url=proc.url, credentials=KEYS)
        restarted.load_markets()
        assert [o["clientOrderId"] for o in restarted.fetch_open_orders(SYMBOL)] == ["keep"]
        assert restarted.fetch_order(gone["id"], SYMBOL)["status"] == "canceled"
        partial = _control(proc.url, "/_control/partial_fill", {"order_id": int(resting["id"]), "qty": 0.004})
        assert (partial["status"], partial["executedQty"]) == ("PARTIALLY_FILLED", "0.004")
        truth = _control(proc.url, "/_control/truth")
        assert truth["positions"]["BTCUSDT"]["amt"] == pytest.approx(0.004)
        assert [f["qty"] for f in truth["fills"]] == ["0.004"]
        assert [o["clientOrderId"] for o in truth["open_orders"]] == ["keep"]
        assert truth["wallet"] == pytest.approx(5000 - 0.004 * (price - 300) * MAKER_FEE)
        level = round(price - 300, 1)
        until = first_cross_below(level, START) + 60_000
        assert _control(proc.url, "/_control/advance", {"to_ms": until})["now_ms"] == until
        assert restarted.fetch_order(resting["id"], SYMBOL)["status"] == "closed"
        assert _control(proc.url, "/_control/truth")["positions"]["BTCUSDT"]["amt"] == pytest.approx(0.01)


def test_ticker_and_funding_rate_come_from_the_recorded_data(client, server):
    ticker = client.fetch_ticker(SYMBOL)
    day = BARS.between(START - 86_400_000, START)
    assert ticker["last"] == last_price(server)
    assert ticker["high"] >= day.high.max() and ticker["low"] <= day.low.min()
    rate = client.fetch_funding_rate(SYMBOL)
    market = server.state.market("usdm", "BTCUSDT")
    k = int(np.searchsorted(market.funding_ts, START, "right"))
    assert (rate["markPrice"], rate["fundingRate"], rate["fundingTimestamp"]) == (
        last_price(server),
        pytest.approx(market.funding_rate[k]),
        market.funding_ts[k],
    )


def test_edit_order_amends_in_place_or_cancels_like_binance(client, server):
    price = last_price(server)
    order = client.create_order(SYMBOL, "limit", "buy", 0.01, round(price - 100, 1), {"postOnly": True, "clientOrderId": "e-1"})
    edited = client.edit_order(order["id"], SYMBOL, "limit", "buy", 0.02, round(price - 50, 1))
    assert (edited["id"], edited["clientOrderId"], edited["amount"], edited["price"]) == (order["id"], "e-1", 0.02, round(price - 50, 1))
    assert client.fetch_open_orders(SYMBOL)[0]["amount"] == 0.02
    # a post-only order moved to a price that would take is cancelled, not filled
    gone = client.edit_order(order["id"], SYMBOL, "limit", "buy", 0.02, round(price + 50, 1))
    assert gone["status"] == "canceled" and client.fetch_open_orders(SYMBOL) == []
    with pytest.raises(ccxt.OrderNotFound):
        client.edit_order(order["id"], SYMBOL, "limit", "buy", 0.02, round(price - 50, 1))

"""The local Binance USD-M user-data websocket through ccxt.pro's watch_* methods."""

from __future__ import annotations

import asyncio

import ccxt
import pytest
from test_exchange_trading import START, SYMBOL, first_cross_below, user_streams_open

from btc_quant.plugins.exchanges.ccxt_client import make_exchange
from btc_quant.testing.exchange import ExchangeServer, FaultPlan, binance_state
from btc_quant.testing.exchange.faults import TRADING_PATHS
from btc_quant.testing.exchange.trading import TEST_API_KEY, TEST_SECRET

KEYS = {"apiKey": TEST_API_KEY, "secret": TEST_SECRET}


def pro_client(url: str):
    return make_exchange("binanceusdm", url=url, pro=True, credentials=KEYS)


async def collect(watch, until, timeout_s: float = 10.0) -> list:
    """Call ``watch()`` until ``until(items)`` holds; return everything seen."""
    seen: list = []

    async def loop():
        while not until(seen):
            seen.extend(await watch())

    await asyncio.wait_for(loop(), timeout_s)
    return seen


def test_watch_orders_and_my_trades_follow_a_resting_order_to_its_fill():
    state = binance_state(clock_start_ms=START)

    async def run(url):
        client = pro_client(url)
        try:
            await client.load_markets()
            orders_task = asyncio.create_task(
                collect(lambda: client.watch_orders(SYMBOL), lambda s: any(o["status"] == "closed" for o in s))
            )
            trades_task = asyncio.create_task(collect(lambda: client.watch_my_trades(SYMBOL), lambda s: len(s) >= 1))
            await user_streams_open(state)  # both subscriptions share one connection
            level = round(state.trading.price("BTCUSDT") - 150, 1)
            placed = await client.create_order(SYMBOL, "limit", "buy", 0.01, level, {"postOnly": True, "clientOrderId": "w-1"})
            await asyncio.sleep(0.3)
            state.clock.set(first_cross_below(level, START) + 60_000)
            orders, trades = await asyncio.gather(orders_task, trades_task)
            return placed, level, orders, trades
        finally:
            await client.close()

    with ExchangeServer(state) as server:
        placed, level, orders, trades = asyncio.run(run(server.url))
    mine = [o for o in orders if o["id"] == placed["id"]]
    assert [o["clientOrderId"] for o in mine] == ["w-1"] * len(mine)
    assert mine[-1]["status"] == "closed" and mine[-1]["filled"] == 0.01 and mine[-1]["average"] == level
    assert mine[-1]["postOnly"] is True
    (trade,) = {t["id"]: t for t in trades}.values()
    truth = state.trading.truth()
    assert (trade["id"], trade["price"], trade["amount"]) == (str(truth["fills"][0]["id"]), level, 0.01)
    assert trade["takerOrMaker"] == "maker"


def test_watch_balance_and_positions_report_account_updates():
    state = binance_state(clock_start_ms=START)

    async def run(url):
        client = pro_client(url)
        try:
            await client.load_markets()
            assert await client.watch_positions([SYMBOL]) == []  # ccxt's REST snapshot: flat
            balance_task = asyncio.create_task(client.watch_balance())
            positions_task = asyncio.create_task(client.watch_positions([SYMBOL]))
            await user_streams_open(state)
            await client.create_order(SYMBOL, "market", "sell", 0.02)
            return await asyncio.wait_for(balance_task, 10), await asyncio.wait_for(positions_task, 10)
        finally:
            await client.close()

    with ExchangeServer(state) as server:
        balance, positions = asyncio.run(run(server.url))
    truth = state.trading.truth()
    assert balance["USDT"]["total"] == pytest.approx(truth["wallet"])
    (position,) = positions
    assert (position["side"], position["contracts"], position["marginMode"]) == ("short", 0.02, "cross")
    assert position["entryPrice"] == truth["positions"]["BTCUSDT"]["entry"]


def test_closing_the_listen_key_ends_the_stream():
    state = binance_state(clock_start_ms=START)

    async def run(url):
        client = pro_client(url)
        try:
            await client.load_markets()
            watching = asyncio.create_task(client.watch_orders(SYMBOL))
            await user_streams_open(state)
            key = client.options["linear"]["listenKey"]
            await client.fapiPrivateDeleteListenKey()
            with pytest.raises(Exception):
                await asyncio.wait_for(watching, 5)
            return key
        finally:
            await client.close()

    with ExchangeServer(state) as server:
        key = asyncio.run(run(server.url))
    assert key not in state.trading.listen_keys


def test_a_dropped_user_stream_fails_the_watch_and_the_next_watch_reconnects():
    state = binance_state(clock_start_ms=START, faults=FaultPlan(paths=TRADING_PATHS).script("ws", "drop"))

    async def run(url):
        client = pro_client(url)
        try:
            await client.load_markets()
            first = asyncio.create_task(client.watch_orders(SYMBOL))
            await user_streams_open(state)
            price = state.trading.price("BTCUSDT")
            lost = await client.create_order(SYMBOL, "limit", "buy", 0.01, round(price - 100, 1), {"postOnly": True})
            with pytest.raises(ccxt.NetworkError):
                await asyncio.wait_for(first, 5)
            second = asyncio.create_task(client.watch_orders(SYMBOL))
            await user_streams_open(state, 2)
            seen = await client.create_order(SYMBOL, "limit", "buy", 0.01, round(price - 110, 1), {"postOnly": True})
            return lost, seen, await asyncio.wait_for(second, 5)
        finally:
            await client.close()

    with ExchangeServer(state) as server:
        lost, seen, orders = asyncio.run(run(server.url))
    # the event pushed while the stream was down is gone (as on Binance): REST must fill the gap
    assert [o["id"] for o in orders] == [seen["id"]] and lost["id"] != seen["id"]
    assert state.count("/fstream/private/ws") == 2


def test_a_listen_key_not_kept_alive_expires_and_its_stream_ends():
    state = binance_state(clock_start_ms=START)
    state.trading.listen_key_ttl_s = 0.8

    async def run(url):
        client = pro_client(url)
        try:
            await client.load_markets()
            watching = asyncio.create_task(client.watch_orders(SYMBOL))
            await user_streams_open(state)
            for _ in range(4):  # kept alive: still open after twice the TTL
                await asyncio.sleep(0.4)
                await client.fapiPrivatePutListenKey()
            assert not watching.done()
            with pytest.raises(ccxt.NetworkError):  # left alone: listenKeyExpired, then closed
                await asyncio.wait_for(watching, 5)
            with pytest.raises(ccxt.AuthenticationError, match="-1125"):
                await client.fapiPrivatePutListenKey()
        finally:
            await client.close()

    with ExchangeServer(state) as server:
        asyncio.run(run(server.url))
    assert state.trading.listen_keys == {}

"""The local Bybit's trading rules, through the real ccxt client (REST and ccxt.pro)."""

from __future__ import annotations

import asyncio

import ccxt
import pytest

from btc_quant.core import margin as mm
from btc_quant.core.instruments import instrument_for
from btc_quant.plugins.exchanges.ccxt_client import make_exchange
from btc_quant.testing.exchange import ExchangeServer
from btc_quant.testing.exchange.dialects.bybit import bybit_state

START_MS = 1641772800000  # 2022-01-10 00:00 UTC
KEYS = {"apiKey": "local-test-key", "secret": "local-test-secret"}
SYMBOL = "BTC/USDT:USDT"


@pytest.fixture
def server():
    with ExchangeServer(bybit_state(clock_start_ms=START_MS)) as server:
        yield server


@pytest.fixture
def client(server):
    client = make_exchange("bybit", url=server.url, credentials=KEYS)
    client.load_markets()
    return client


def lookup(client, link_id):
    return client.fetch_order(None, SYMBOL, {"orderLinkId": link_id, "acknowledged": True})


def test_post_only_that_would_take_is_accepted_then_cancelled(server, client):
    price = server.state.trading.price("BTCUSDT")
    placed = client.create_order(SYMBOL, "limit", "buy", 0.001, price + 100, {"clientOrderId": "po-1", "postOnly": True})
    assert placed["id"] and placed["clientOrderId"] == "po-1"  # Bybit answers success ...
    order = lookup(client, "po-1")
    assert order["status"] == "canceled" and order["info"]["rejectReason"] == "EC_PostOnlyWillTakeLiquidity"
    assert order["filled"] == 0 and client.fetch_open_orders(SYMBOL) == []
    resting = client.create_order(SYMBOL, "limit", "buy", 0.001, price - 100, {"clientOrderId": "po-2", "postOnly": True})
    assert lookup(client, "po-2")["status"] == "open" and lookup(client, "po-2")["postOnly"]
    assert resting["id"] != placed["id"]


def test_an_order_link_id_never_repeats(client):
    client.create_order(SYMBOL, "market", "buy", 0.001, None, {"clientOrderId": "once"})
    assert lookup(client, "once")["status"] == "closed"
    with pytest.raises(ccxt.InvalidOrder, match="110072"):  # also after the first is done (Binance: only while open)
        client.create_order(SYMBOL, "market", "buy", 0.001, None, {"clientOrderId": "once"})


def test_refusals_carry_bybits_codes(client):
    with pytest.raises(ccxt.InsufficientFunds, match="110007"):
        client.create_order(SYMBOL, "limit", "buy", 50, 30000, {"clientOrderId": "big"})
    with pytest.raises(ccxt.OrderNotFound, match="110001"):
        client.cancel_order(None, SYMBOL, {"orderLinkId": "never-placed"})
    with pytest.raises(ccxt.BadRequest, match="110043"):
        client.set_leverage(20, SYMBOL)  # the default is 20: "not modified"
    with pytest.raises(ccxt.InvalidOrder, match="110094"):  # 0.001 BTC at 1,000 USDT is below the 5 USDT minimum
        client.create_order(SYMBOL, "limit", "buy", 0.001, 1000, {"clientOrderId": "tiny"})
    with pytest.raises(ccxt.AuthenticationError, match="10004"):
        make_exchange("bybit", url=client.urls["api"]["private"], credentials={"apiKey": KEYS["apiKey"], "secret": "wrong"}).fetch_balance()


def test_isolated_position_margin_and_liquidation_price_are_bybits(server, client):
    client.set_margin_mode("isolated", SYMBOL)
    client.set_leverage(10, SYMBOL)
    client.create_order(SYMBOL, "market", "buy", 0.1, None, {"clientOrderId": "long"})
    fill = client.fetch_my_trades(SYMBOL)[0]
    entry = fill["price"]
    assert fill["fee"]["cost"] == pytest.approx(0.1 * entry * 0.00055) and fill["takerOrMaker"] == "taker"  # Bybit's taker fee
    position = client.fetch_positions([SYMBOL])[0]
    assert position["contracts"] == pytest.approx(0.1) and position["side"] == "long" and position["leverage"] == 10
    tiers = instrument_for("bybit", SYMBOL).margin_brackets
    margin = 0.1 * entry / 10
    assert position["liquidationPrice"] == pytest.approx(mm.bybit_liquidation_price(0.1, entry, margin, tiers, isolated=True))
    # adding margin moves it away by amount / size
    client.private_post_v5_position_add_margin({"category": "linear", "symbol": "BTCUSDT", "margin": "50", "positionIdx": 0})
    moved = client.fetch_positions([SYMBOL])[0]["liquidationPrice"]
    assert moved == pytest.approx(position["liquidationPrice"] - 50 / 0.1)
    wallet = client.fetch_balance()
    assert wallet["USDT"]["total"] == pytest.approx(10_000 - fill["fee"]["cost"])


def test_private_stream_pushes_orders_fills_positions_and_wallet(server):
    async def run():
        client = make_exchange(
            "bybit",
            url=server.url,
            pro=True,
            credentials=KEYS,
            options={"watchPositions": {"fetchPositionsSnapshot": False, "awaitPositionsSnapshot": False}},
        )
        try:
            await client.load_markets()
            orders = asyncio.ensure_future(client.watch_orders(SYMBOL))
            trades = asyncio.ensure_future(client.watch_my_trades(SYMBOL))
            positions = asyncio.ensure_future(client.watch_positions([SYMBOL]))
            balance = asyncio.ensure_future(client.watch_balance())
            for _ in range(200):  # subscribed once the exchange follows the account's events
                await asyncio.sleep(0.02)
                if server.state.count("/stream/v5/private", 101):
                    break
            await asyncio.sleep(0.3)
            await client.create_order(SYMBOL, "market", "buy", 0.002, None, {"clientOrderId": "ws-1"})
            got = await asyncio.wait_for(asyncio.gather(orders, trades, positions, balance), 10)
        finally:
            await client.close()
        return got

    orders, trades, positions, balance = asyncio.run(run())
    assert orders[0]["clientOrderId"] == "ws-1"
    assert trades[0]["amount"] == pytest.approx(0.002) and trades[0]["fee"]["cost"] > 0
    assert positions[0]["contracts"] == pytest.approx(0.002) and positions[0]["side"] == "long"
    assert balance["USDT"]["total"] == pytest.approx(10_000 - trades[0]["fee"]["cost"])

"""Seeded faults of the local Binance USD-M trading exchange, seen through the real ccxt client."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import ccxt
import pytest
from test_exchange_trading import KEYS, START, SYMBOL, first_cross_below, user_streams_open

from btc_quant.plugins.exchanges.ccxt_client import make_exchange
from btc_quant.testing.exchange import ExchangeServer, FaultPlan, binance_state
from btc_quant.testing.exchange.faults import TRADING_PATHS


def trading_server(plan: FaultPlan) -> ExchangeServer:
    return ExchangeServer(binance_state(clock_start_ms=START, faults=plan))


def client_for(server, timeout_ms: int = 10_000):
    client = make_exchange("binanceusdm", url=server.url, credentials=KEYS, timeout_ms=timeout_ms)
    client.load_markets()
    return client


def below(server, ticks: float = 100.0) -> float:
    return round(server.state.trading.price("BTCUSDT") - ticks, 1)


def test_timeout_after_acceptance_leaves_the_order_on_the_exchange():
    plan = FaultPlan(paths=TRADING_PATHS, timeout_s=2.0).script("order", "accepted_timeout")
    with trading_server(plan) as server:
        client = client_for(server, timeout_ms=500)
        with pytest.raises(ccxt.RequestTimeout):
            client.create_order(SYMBOL, "limit", "buy", 0.01, below(server), {"postOnly": True, "clientOrderId": "late"})
        found = client.fetch_order(None, SYMBOL, {"clientOrderId": "late"})  # looked up by client id: it exists
        assert found["status"] == "open"
        plan.script("order", "timeout")
        with pytest.raises(ccxt.RequestTimeout):  # held BEFORE execution: the order never existed
            client.create_order(SYMBOL, "limit", "buy", 0.01, below(server), {"postOnly": True, "clientOrderId": "lost"})
        with pytest.raises(ccxt.OrderNotFound):
            client.fetch_order(None, SYMBOL, {"clientOrderId": "lost"})
        assert [o["clientOrderId"] for o in client.fetch_open_orders(SYMBOL)] == ["late"]


def test_server_errors_before_and_after_execution():
    plan = FaultPlan(paths=TRADING_PATHS).script("order", "server_error", "accepted_error")
    with trading_server(plan) as server:
        client = client_for(server)
        with pytest.raises(ccxt.OperationFailed, match="-1001"):  # not executed
            client.create_order(SYMBOL, "limit", "buy", 0.01, below(server), {"postOnly": True, "clientOrderId": "a"})
        with pytest.raises(ccxt.RequestTimeout, match="-1007"):  # executed, status unknown to the client
            client.create_order(SYMBOL, "limit", "buy", 0.01, below(server), {"postOnly": True, "clientOrderId": "b"})
        assert [o["clientOrderId"] for o in client.fetch_open_orders(SYMBOL)] == ["b"]
        assert server.state.count("/fapi/v1/order", 503) == 2


def test_requests_during_retry_after_escalate_from_429_to_418():
    plan = FaultPlan(paths=TRADING_PATHS, retry_after_s=30, ban_after=2, ban_s=30).script("openOrders", "rate_limit")
    with trading_server(plan) as server:
        client = client_for(server)
        client.enableRateLimit = False  # a bot that ignores Retry-After
        for _ in range(4):
            with pytest.raises(ccxt.DDoSProtection):
                client.fetch_open_orders(SYMBOL)
        statuses = [status for _, path, _, status in server.state.requests if path.endswith("openOrders")]
        assert statuses == [429, 429, 418, 418]
        assert client.last_response_headers["Retry-After"] == "30"
        assert plan.counts() == {"rate_limit": 2, "ip_ban": 2}


def test_partial_fills_are_seeded_and_the_rest_fills_later():
    plan = FaultPlan(paths=TRADING_PATHS).script("match", "partial_fill")
    with trading_server(plan) as server:
        client = client_for(server)
        level = below(server, 150)
        order = client.create_order(SYMBOL, "limit", "buy", 0.05, level, {"postOnly": True})
        minute = first_cross_below(level, START)
        server.state.clock.set(minute + 60_000)
        trades = client.fetch_my_trades(SYMBOL)
        assert len(trades) == 2 and 0.001 <= trades[0]["amount"] < 0.05
        assert sum(t["amount"] for t in trades) == pytest.approx(0.05)
        assert client.fetch_order(order["id"], SYMBOL)["status"] == "closed"
        assert plan.counts() == {"partial_fill": 1}


def test_an_order_is_cancelled_by_the_user_after_the_seeded_delay():
    plan = FaultPlan(paths=TRADING_PATHS, user_cancel_after_ms=45_000).script("match", "user_cancel")
    with trading_server(plan) as server:
        client = client_for(server)
        order = client.create_order(SYMBOL, "limit", "sell", 0.01, below(server, -500), {"postOnly": True})
        server.state.clock.set(START + 44_000)
        assert client.fetch_order(order["id"], SYMBOL)["status"] == "open"
        server.state.clock.set(START + 46_000)
        cancelled = client.fetch_order(order["id"], SYMBOL)
        assert cancelled["status"] == "canceled" and cancelled["lastUpdateTimestamp"] == START + 45_000


def test_same_seed_same_faults_and_same_exchange_truth():
    def run(seed: int):
        plan = FaultPlan(seed=seed, paths=TRADING_PATHS, rates={"server_error": 0.3, "partial_fill": 0.5, "user_cancel": 0.3})
        with trading_server(plan) as server:
            client = client_for(server)
            client.enableRateLimit = False
            for k in range(12):
                try:
                    client.create_order(
                        SYMBOL, "limit", "buy", 0.02, below(server, 20 * (k + 1)), {"postOnly": True, "clientOrderId": f"s{k}"}
                    )
                except ccxt.OperationFailed:
                    pass
            server.state.clock.set(START + 6 * 3_600_000)
            truth = server.state.trading.truth()
        return [(i.n, i.path, i.kind) for i in plan.injected], [(f["orderId"] % 1000, f["qty"], f["time"]) for f in truth["fills"]]

    first = run(11)
    assert first == run(11)
    assert first[0] != run(12)[0]
    kinds = {kind for _, _, kind in first[0]}
    assert {"server_error", "partial_fill", "user_cancel"} <= kinds


def test_user_stream_drops_and_delays_events_out_of_order():
    plan = FaultPlan(paths=TRADING_PATHS, ws_delay_s=2.0).script("ws", "ws_delay")

    async def run(server):
        client = make_exchange("binanceusdm", url=server.url, credentials=KEYS, pro=True)
        try:
            await client.load_markets()
            key = (await client.fapiPrivatePostListenKey())["listenKey"]
            seen: list[tuple[str, str]] = []
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{server.url}/fstream/private/ws?listenKey={key}") as ws:
                    await user_streams_open(server.state)
                    for k in range(2):
                        await client.create_order(
                            SYMBOL, "limit", "buy", 0.01, below(server, 100 + k), {"postOnly": True, "clientOrderId": f"o{k}"}
                        )
                    while len(seen) < 2:
                        event = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
                        seen.append((event["o"]["c"], event["o"]["x"]))
                    plan.script("ws", "drop")
                    await client.create_order(SYMBOL, "limit", "buy", 0.01, below(server, 200), {"postOnly": True})
                    closed = await asyncio.wait_for(ws.receive(), 5)
            return seen, closed.type
        finally:
            await client.close()

    with trading_server(plan) as server:
        seen, closed = asyncio.run(run(server))
    assert seen == [("o1", "NEW"), ("o0", "NEW")]  # the first event was held back and overtaken
    assert closed in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE)
    assert plan.counts() == {"ws_delay": 1, "drop": 1}


def test_control_api_replaces_the_fault_plan_with_trading_faults():
    import urllib.request

    with trading_server(FaultPlan()) as server:
        body = json.dumps({"seed": 3, "paths": None, "script": [["order", "accepted_error"]]}).encode()
        urllib.request.urlopen(
            urllib.request.Request(server.url + "/_control/faults", data=body, headers={"Content-Type": "application/json"})
        )
        client = client_for(server)
        with pytest.raises(ccxt.RequestTimeout):
            client.create_order(SYMBOL, "market", "buy", 0.01)
        assert server.state.trading.truth()["positions"]["BTCUSDT"]["amt"] == pytest.approx(0.01)
        body = json.dumps({"script": [["openOrders", "server_error"]]}).encode()
        urllib.request.urlopen(
            urllib.request.Request(server.url + "/_control/inject", data=body, headers={"Content-Type": "application/json"})
        )
        with pytest.raises(ccxt.OperationFailed):
            client.fetch_open_orders(SYMBOL)
        assert server.state.faults.counts() == {"accepted_error": 1, "server_error": 1}


def test_paused_faults_inject_nothing_and_go_on_with_the_same_sequence():
    """``POST /_control/faults/paused`` holds every fault off, scripted ones included (they wait),
    and the seeded stream goes on drawing, so after the pause the faults are those the seed gives
    for those events, as if the paused events had drawn "no fault"."""
    import urllib.request

    def post(path: str, body: dict) -> dict:
        request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as answer:
            return json.load(answer)

    rates = {"server_error": 0.5}
    reference = FaultPlan(seed=5, rates=rates, paths=TRADING_PATHS)
    expected = [reference.decide("/fapi/v1/openOrders") for _ in range(30)][10:]
    assert any(expected)
    plan = FaultPlan(seed=5, rates=rates, paths=TRADING_PATHS).script("openOrders", "accepted_error")
    plan.decide("/fapi/v1/openOrders")  # the scripted fault is used up first, then the pause
    plan.script("openOrders", "timeout")
    with trading_server(plan) as server:
        assert post("/_control/faults/paused", {"paused": True}) == {"paused": True}
        client = client_for(server)
        for _ in range(9):  # through the exchange: nine requests in a row, not one faulted
            client.fetch_open_orders(SYMBOL)
        assert plan.counts() == {"accepted_error": 1}
        post("/_control/faults/paused", {"paused": False})
        assert plan.decide("/fapi/v1/openOrders") == "timeout"  # the script waited for the pause to end
        # events 11..30 of the seed's stream (the scripted one drew its number too)
        assert [plan.decide("/fapi/v1/openOrders") for _ in range(19)] == expected[1:]

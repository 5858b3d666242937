"""A seeded random bot hammers the local USD-M exchange through faults; the exchange's books must
stay consistent and every fill must reach the user-data stream exactly once."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import ccxt
import pytest
from test_exchange_trading import KEYS, START, SYMBOL, user_streams_open

from btc_quant.plugins.exchanges.ccxt_client import make_exchange
from btc_quant.testing.exchange import ExchangeServer, FaultPlan, binance_state
from btc_quant.testing.exchange.faults import TRADING_PATHS

#: Faults the soak must have injected before it stops (it runs longer on a slow machine).
MIN_FAULTS = 150

RATES = {
    "server_error": 0.04,
    "accepted_error": 0.03,
    "rate_limit": 0.02,
    "slow": 0.03,
    "accepted_timeout": 0.02,
    "ws_delay": 0.15,
    "partial_fill": 0.3,
    "user_cancel": 0.15,
}


async def random_bot(state, url: str, seconds: float, rng: random.Random) -> Counter:
    client = make_exchange("binanceusdm", url=url, credentials=KEYS, pro=True, timeout_ms=250)
    client.enableRateLimit = False
    seen: Counter = Counter()
    seen.errors = []  # type: ignore[attr-defined]
    try:
        await client.load_markets()

        async def watch():
            while True:
                try:
                    for trade in await client.watch_my_trades(SYMBOL):
                        seen[trade["id"]] += 1
                except ccxt.BaseError as exc:  # e.g. a 5xx on POST listenKey: subscribe again
                    seen.errors.append(repr(exc))
                    await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        await user_streams_open(state)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        # At least `seconds`, and on a busy machine (parallel test workers) until enough faults were
        # injected for the checks below to mean something, within a generous cap.
        cap = loop.time() + 10 * seconds
        while (loop.time() < end or sum(state.faults.counts().values()) < MIN_FAULTS) and loop.time() < cap:
            price = state.trading.price("BTCUSDT")
            amt = state.trading.accounts[KEYS["apiKey"]].position("BTCUSDT").amt
            action = rng.random()
            try:
                if action < 0.6:
                    side = rng.choice(["buy", "sell"])
                    offset = rng.choice([1, 2, 5, 10, 20]) * (-1 if side == "buy" else 1)
                    await client.create_order(
                        SYMBOL, "limit", side, rng.choice([0.003, 0.005, 0.01]), round(price + offset, 1), {"postOnly": True}
                    )
                elif action < 0.85:
                    book = state.trading.accounts[KEYS["apiKey"]].open_orders("BTCUSDT")
                    if book:
                        await client.cancel_order(str(rng.choice(book).order_id), SYMBOL)
                elif abs(amt) > 0.02:
                    await client.create_order(
                        SYMBOL, "market", "sell" if amt > 0 else "buy", round(abs(amt), 3), None, {"reduceOnly": True}
                    )
                else:
                    await client.create_order(SYMBOL, "market", rng.choice(["buy", "sell"]), 0.003)
            except ccxt.BaseError:
                await asyncio.sleep(0.06)  # what a bot must survive: the soak counts on it
        state.clock.set(state.clock.now_ms(), 0)  # stop the market, then let delayed events arrive
        await asyncio.sleep(1.0)
        watcher.cancel()
    finally:
        await client.close()
    return seen


def test_books_stay_consistent_and_every_fill_is_streamed_once_through_hundreds_of_faults():
    plan = FaultPlan(
        seed=21,
        paths=TRADING_PATHS,
        rates=RATES,
        retry_after_s=0.05,
        ban_after=3,
        ban_s=0.2,
        timeout_s=0.5,
        slow_s=0.05,
        ws_delay_s=0.3,
        user_cancel_after_ms=20_000,
    )
    state = binance_state(clock_start_ms=START, speed=300, faults=plan)
    with ExchangeServer(state) as server:
        seen = asyncio.run(random_bot(state, server.url, 12.0, random.Random(4)))
        state.faults = FaultPlan()  # read back without faults (the clock stopped with the bot)
        truth = state.trading.truth()
        account = state.trading.accounts[KEYS["apiKey"]]
        client = make_exchange("binanceusdm", url=server.url, credentials=KEYS)
        client.load_markets()
        positions = client.fetch_positions([SYMBOL])
        balance = client.fetch_balance()
    counts = plan.counts()
    print("faults injected:", dict(sorted(counts.items())), "total", sum(counts.values()), "fills", len(truth["fills"]))
    assert sum(counts.values()) >= MIN_FAULTS and {"partial_fill", "user_cancel", "accepted_error", "ws_delay"} <= set(counts)
    fills = truth["fills"]
    assert len(fills) >= 30
    # every fill reached the user-data stream exactly once
    ids = {str(f["id"]) for f in fills}
    assert [k for k, n in seen.items() if n != 1 or k not in ids] == []
    assert ids - set(seen) == set(), f"fills never streamed; watch errors: {seen.errors}"
    # the position is the sum of the fills; each order's executed quantity is the sum of its fills
    signed = sum(float(f["qty"]) * (1 if f["side"] == "BUY" else -1) for f in fills)
    amt = truth["positions"].get("BTCUSDT", {}).get("amt", 0.0)
    assert amt == pytest.approx(signed, abs=1e-9)
    per_order = Counter()
    for f in fills:
        per_order[f["orderId"]] += float(f["qty"])
    for order in account.orders.values():
        assert order.executed == pytest.approx(per_order.get(order.order_id, 0.0), abs=1e-9)
        assert order.executed <= order.qty + 1e-12
    # the wallet is the deposit plus realised PnL, minus fees, plus funding
    funding = sum(float(r["income"]) for r in account.income)
    wallet = 10_000 + sum(float(f["realizedPnl"]) - float(f["commission"]) for f in fills) + funding
    assert truth["wallet"] == pytest.approx(wallet, abs=1e-6)
    # what ccxt reads over REST is the exchange's truth
    assert balance["USDT"]["total"] == pytest.approx(truth["wallet"] + sum(p["unrealizedPnl"] for p in positions), abs=1e-6)
    assert sum(p["contracts"] * (1 if p["side"] == "long" else -1) for p in positions) == pytest.approx(amt)

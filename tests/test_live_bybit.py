"""broker=paper with exchange=bybit: the same strategies and config as on Binance, live bars from
the local Bybit dialect (REST polling: it serves no public websocket), Bybit's fees in the sim."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from btc_quant.core.config import load_run_config
from btc_quant.plugins.exchanges.driver import LiveRun
from btc_quant.testing.exchange import ExchangeServer
from btc_quant.testing.exchange.dialects.bybit import bybit_state

START_MS = 1641772800000  # 2022-01-10 00:00 UTC, inside the bundled real perp sample


@pytest.fixture
def fast_bybit():
    with ExchangeServer(bybit_state(clock_start_ms=START_MS, speed=600)) as server:  # a 1m bar every 0.1 s
        yield server


@pytest.mark.parametrize(
    "strategy", [["strategy=sma_cross", "strategy.fast=3", "strategy.slow=8"], ["strategy=maker_vol"]], ids=["sma_cross", "maker_vol"]
)
def test_paper_on_bybit_runs_the_same_strategies_with_bybits_rules(fast_bybit, plugins, strategy):
    cfg = load_run_config([*strategy, "broker=paper", "exchange=bybit", "symbol=BTC/USDT:USDT"], plugins.registry)
    run = LiveRun(cfg, plugins, url=fast_bybit.url, max_seconds=180, max_bars=60)
    out = run.run()
    inst = run.runtime.instrument
    assert (inst.exchange, inst.maker_fee, inst.taker_fee, inst.min_notional, inst.tick_size) == ("bybit", 0.0002, 0.00055, 5.0, 0.1)
    bars = run.broker.bar_arrays
    market = fast_bybit.state.market("bybit", "BTCUSDT")
    assert len(bars) == out["bars"] >= 15
    idx = np.searchsorted(market.bars.ts, bars.ts)
    assert np.array_equal(market.bars.ts[idx], bars.ts) and np.allclose(market.bars.close[idx], bars.close)
    for fill in run.engine.fills:
        rate = inst.maker_fee if fill.is_maker else inst.taker_fee
        assert fill.fee == pytest.approx(fill.quantity * fill.price * rate)
    if strategy[0] == "strategy=sma_cross":
        assert run.engine.fills, "sma_cross 3/8 trades within 15+ real 1m bars"


MAKER_VOL = [
    "strategy=maker_vol",
    "strategy.top_ratio=1.01",
    "strategy.bottom_ratio=0.9",
    "strategy.step_pct=0.0005",
    "strategy.tp_pct=0.0005",
    "strategy.max_live_orders=6",
    "strategy.recompute=30m",
]
SMA = ["strategy=sma_cross", "strategy.fast=3", "strategy.slow=8"]
LIVE = [
    "broker=live",
    "broker.api_key=local-test-key",
    "broker.secret=local-test-secret",
    "broker.leverage=10",
    "broker.margin_mode=isolated",
    "broker.reconcile_s=1",
    'broker.own_prefixes=["mv:"]',
]


def _freeze_then_stop(state, done: threading.Event) -> None:
    """Once the bot has traded for a while (two fills, and at least 6 s; at most 45 s), freeze the
    exchange (nothing closes or matches), let the bot's reconciliations (every second) settle,
    then stop it through the journal's command channel, as ``quant stop`` does."""
    from btc_quant.core.paths import data_dir
    from btc_quant.plugins.exchanges.journal import Journal, journal_path

    started = time.monotonic()
    while not done.wait(0.2):
        if (len(state.trading.account("local-test-key").trades) >= 2 and time.monotonic() - started > 6) or time.monotonic() - started > 45:
            break
    state.clock.set(state.clock.now_ms(), 0.0)
    frozen_ms = time.time() * 1000
    while not done.wait(0.3):
        path = journal_path(data_dir(), "bot")
        if not path.exists():
            continue
        journal = Journal(path)
        try:
            snapshot = journal.get("state") or {}
            if (snapshot.get("last_settled_reconcile") or 0) > frozen_ms and snapshot.get("requests_in_flight") == 0:
                journal.set("command", "stop")
                return
        finally:
            journal.close()


@pytest.mark.parametrize("strategy", [MAKER_VOL, SMA], ids=["maker_vol", "sma_cross"])
def test_live_on_bybit_with_only_the_exchange_changed(plugins, strategy):
    """The soak's maker_vol settings (and sma_cross) live on the local Bybit: ``exchange=bybit``
    and its keys are the only change from a Binance run. Every fill the exchange made reached
    the strategy once, the position and wallet are the exchange's, no client id was used twice,
    and the bot's mirror shows exactly the exchange's open orders."""
    with ExchangeServer(bybit_state(clock_start_ms=START_MS, speed=240)) as server:  # a 1m bar every 0.25 s
        cfg = load_run_config([*strategy, *LIVE, "exchange=bybit", "symbol=BTC/USDT:USDT"], plugins.registry)
        run = LiveRun(cfg, plugins, url=server.url, testnet=True, max_seconds=90, warmup=50)
        done = threading.Event()
        watcher = threading.Thread(target=_freeze_then_stop, args=(server.state, done), daemon=True)
        watcher.start()
        try:
            out = run.run()
        finally:
            done.set()
            watcher.join(10)
        truth = server.state.trading.truth()
        requests = {p for _, p, _, _ in server.state.requests}
    assert "/stream-testnet/v5/private" in requests and "/v5/order/create" in requests  # Bybit's API, not Binance's
    assert truth["leverage"] == {"BTCUSDT": 10} or strategy is MAKER_VOL  # maker_vol sets its own leverage
    assert truth["margin_type"] == {"BTCUSDT": "ISOLATED"}
    fills = run.engine.fills
    assert fills, "the strategy traded"
    by_order: dict[str, float] = {}
    for fill in fills:
        by_order[fill.client_id] = by_order.get(fill.client_id, 0.0) + fill.quantity
    exchange_fills: dict[str, float] = {}
    orders = {o.order_id: o for o in server.state.trading.account("local-test-key").orders.values()}
    for row in truth["fills"]:
        cid = orders[row["orderId"]].client_id
        exchange_fills[cid] = exchange_fills.get(cid, 0.0) + float(row["qty"])
    assert by_order.keys() == exchange_fills.keys()
    assert all(by_order[c] == pytest.approx(exchange_fills[c]) for c in by_order)
    assert len({t.trade_id for t in fills}) == len(fills)
    position = truth["positions"].get("BTCUSDT", {"amt": 0.0})["amt"]
    assert out["position"]["quantity"] == pytest.approx(position, abs=1e-9)
    assert out["wallet_balance"] == pytest.approx(truth["wallet"], abs=1e-6)
    client_ids = [o.client_id for o in orders.values()]
    assert len(client_ids) == len(set(client_ids))
    # no orphans: the bot's mirror shows exactly the exchange's open orders
    assert {o["clientOrderId"] for o in truth["open_orders"]} == {o["client_id"] for o in out["open_orders_live"]}


def test_a_partly_filled_order_canceled_on_bybit_ends_canceled_and_the_bot_settles(plugins, tmp_path):
    """A partly filled linear order that is canceled: Bybit reports it ``Cancelled`` with its
    ``cumExecQty`` (v5 "Enums": in derivatives a Cancelled order may have an executed qty). The
    local exchange used to call it ``PartiallyFilledCanceled`` (Bybit's status for spot only),
    which ccxt reads as ``closed``: the broker took that for a "filled" push ahead of its last fill
    and kept the order open in its mirror for good, every reconciliation sent its cancel again and
    none was ever settled (the soak's "did not settle within 60 s of the freeze" on Bybit). Now the
    order ends canceled with its fill, and the next pass sends nothing and is settled. Spot's
    ``PartiallyFilledCanceled``, as ccxt parses it, is a cancel for the broker too."""
    import asyncio

    from btc_quant.core.run import build_runtime
    from btc_quant.plugins.exchanges.ccxt_client import make_exchange
    from btc_quant.plugins.exchanges.journal import Journal
    from btc_quant.plugins.exchanges.live import LiveBroker, install_gate, retrying
    from btc_quant.sdk import Order, OrderStatus, Side
    from btc_quant.testing.exchange.dialects import bybit_trading

    key = "local-test-key"
    with ExchangeServer(bybit_state(clock_start_ms=START_MS, speed=0)) as server:
        cfg = load_run_config(
            ["broker=live", "broker.bot=t", "exchange=bybit", "symbol=BTC/USDT:USDT", "broker.timeout_ms=3000"], plugins.registry, env={}
        )
        broker = LiveBroker(cfg.broker.config, build_runtime(cfg, plugins, mode="live"))
        trading = server.state.trading
        account = trading.account(key)

        async def settled() -> None:
            t0 = time.monotonic()
            while broker._tasks:
                assert time.monotonic() - t0 < 20, [t.get_name() for t in broker._tasks]
                await asyncio.sleep(0.02)

        def ended(events, cid: str) -> list:
            return [(e.order.status, e.order.filled_qty) for e in events if not hasattr(e, "fill") and e.order.client_id == cid]

        async def partly_filled(cid: str, price: float):
            broker.submit(Order.create(broker.instrument, cid, Side.BUY, 0.003, price, post_only=True, ts_ms=START_MS))
            await settled()
            (resting,) = [o for o in account.open_orders() if o.client_id == cid]
            trading.partial_fill(key, resting.order_id, 0.001)
            await broker.reconcile()
            await settled()
            assert [o.filled_qty for o in broker.open_orders() if o.client_id == cid] == [pytest.approx(0.001)]
            return resting

        async def main() -> None:
            client = make_exchange(
                "bybit", pro=True, url=server.url, timeout_ms=3000, credentials={"apiKey": key, "secret": "local-test-secret"}
            )
            install_gate(client)
            journal = Journal(tmp_path / "t.db")
            try:
                await retrying(client.load_markets, attempts=5)
                await broker.connect(client, journal)
                price = trading.price("BTCUSDT")
                broker.set_market(price, START_MS)
                below = broker.instrument.round_price(price * 0.99)
                # linear: canceled by the bot after a partial fill
                resting = await partly_filled("t-1-1", below)
                broker.events()
                broker.cancel("t-1-1")
                await settled()
                row = bybit_trading.order_json(trading, account, resting)
                assert (row["orderStatus"], row["cumExecQty"]) == ("Cancelled", "0.001")
                await broker.reconcile()
                sent = broker._requests_sent
                await broker.reconcile()
                await settled()
                events = broker.events()
                assert not account.open_orders() and not broker.open_orders()
                assert ended(events, "t-1-1") == [(OrderStatus.CANCELED, pytest.approx(0.001))]
                assert broker.journal.order("t-1-1").status is OrderStatus.CANCELED
                # nothing was sent again: the last pass found everything final and counts as settled
                assert broker._requests_sent == sent and broker.last_settled_reconcile_ms == broker.last_reconcile_ms
                # spot's status for the same thing, through ccxt's own parser: "closed" to ccxt, a cancel to the broker
                resting = await partly_filled("t-1-2", below)
                broker.events()
                trading.cancel(key, {"symbol": "BTCUSDT", "orderId": resting.order_id})
                spot = client.parse_order({**bybit_trading.order_json(trading, account, resting), "orderStatus": "PartiallyFilledCanceled"})
                assert spot["status"] == "closed" and spot["filled"] == pytest.approx(0.001)
                broker.on_exchange_order(spot)
                assert not broker.open_orders() and ended(broker.events(), "t-1-2") == [(OrderStatus.CANCELED, pytest.approx(0.001))]
                assert broker.position().quantity == pytest.approx(0.002)
            finally:
                await broker.close()
                await client.close()
                journal.close()

        asyncio.run(main())

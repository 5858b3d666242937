"""Issue 16: no racing bot, reused client id, late execution or untracked order can double an order.

Each scenario of the issue is one test here, against the in-process local exchange through the
real ccxt client (the config-layer scenario is in ``tests/test_config.py``).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from btc_quant.core.config import load_run_config
from btc_quant.core.errors import ConfigError
from btc_quant.core.run import build_runtime
from btc_quant.plugins.exchanges.ccxt_client import make_exchange
from btc_quant.plugins.exchanges.driver import LiveRun
from btc_quant.plugins.exchanges.journal import Journal, journal_path
from btc_quant.plugins.exchanges.live import LiveBroker, install_gate, retrying
from btc_quant.sdk import Order, OrderStatus, Side
from btc_quant.testing.exchange import ExchangeServer, FaultPlan, binance_state
from btc_quant.testing.exchange.faults import TRADING_PATHS

START_MS = 1641794400000  # 2022-01-10 06:00 UTC, inside the bundled real perp sample
KEY, SECRET = "local-test-key", "local-test-secret"
ORDER = "/fapi/v1/order"


@pytest.fixture
def server():
    with ExchangeServer(binance_state(clock_start_ms=START_MS, speed=0)) as srv:
        yield srv


def live_run(plugins, url: str, *settings: str) -> LiveRun:
    cfg = load_run_config(
        ["broker=live", f"broker.api_key={KEY}", f"broker.secret={SECRET}", f"exchange.url={url}", *settings], plugins.registry, env={}
    )
    return LiveRun(cfg, plugins, testnet=True)


def requests_seen(server) -> int:
    return sum(server.state.calls.values())


# --- scenario 3: two bots with one name -------------------------------------------------------


def test_a_second_bot_with_the_same_name_is_refused_at_once_before_any_request(server, plugins):
    first = live_run(plugins, server.url, "broker.bot=twin", "strategy=sma_cross")
    try:
        before = requests_seen(server)
        with pytest.raises(ConfigError) as err:
            live_run(plugins, server.url, "broker.bot=twin", "strategy=sma_cross")
        assert str(err.value).startswith("bot 'twin' is already running")
        assert "\n" not in str(err.value)
        assert requests_seen(server) == before == 0
    finally:
        first.close()
    live_run(plugins, server.url, "broker.bot=twin", "strategy=sma_cross").close()  # free again once the first ended


def test_two_maker_vol_bots_on_one_account_trade_under_distinct_prefixes(server, plugins):
    a = live_run(plugins, server.url, "broker.bot=alpha", "strategy=maker_vol")
    b = live_run(plugins, server.url, "broker.bot=beta", "strategy=maker_vol")
    try:
        assert (a.engine.strategy.sync.prefix, b.engine.strategy.sync.prefix) == ("alpha:", "beta:")
        assert not any(p.startswith(q) or q.startswith(p) for p in a.broker.prefixes for q in b.broker.prefixes)
        assert "alpha:" in a.broker.prefixes and "beta:" in b.broker.prefixes
    finally:
        a.close()
        b.close()


def test_a_prefix_claimed_twice_on_one_account_is_refused(server, plugins):
    a = live_run(plugins, server.url, "broker.bot=alpha", "strategy=maker_vol", "strategy.strategy_id=mv")
    try:
        with pytest.raises(ConfigError, match="client-id prefix 'mv:' is leased by another running bot on this account"):
            live_run(plugins, server.url, "broker.bot=beta", "strategy=maker_vol", "strategy.strategy_id=mv")
        # another account may use the same prefix
        other = live_run(
            plugins, server.url, "broker.bot=gamma", "strategy=maker_vol", "strategy.strategy_id=mv", "broker.api_key=another-key"
        )
        other.close()
    finally:
        a.close()


def test_client_ids_are_not_reused_when_the_journal_is_lost(server, plugins, isolated_env):
    first = live_run(plugins, server.url, "broker.bot=amnesia", "strategy=sma_cross")
    first_ids = {first.engine.next_client_id() for _ in range(3)}
    first.close()
    journal_path(isolated_env, "amnesia").unlink()
    second = live_run(plugins, server.url, "broker.bot=amnesia", "strategy=sma_cross")
    try:
        second_ids = {second.engine.next_client_id() for _ in range(3)}
    finally:
        second.close()
    assert not first_ids & second_ids, (first_ids, second_ids)


def test_a_journal_serves_one_account(server, plugins):
    live_run(plugins, server.url, "broker.bot=acct", "strategy=sma_cross").close()
    with pytest.raises(ConfigError, match="the journal of bot 'acct' belongs to another account"):
        live_run(plugins, server.url, "broker.bot=acct", "strategy=sma_cross", "broker.api_key=another-key")


# --- scenarios 1 and 2: late execution, untracked resting order --------------------------------


@pytest.fixture
def faulty():
    """The local exchange with its clock frozen and faults allowed on the trading endpoints."""
    plan = FaultPlan(seed=1, paths=FaultPlan.paths + TRADING_PATHS, timeout_s=3.0)
    with ExchangeServer(binance_state(clock_start_ms=START_MS, speed=0, faults=plan)) as srv:
        yield srv


def life(server, tmp_path, plugins, body, **settings):
    """One life of a live broker on the journal in ``tmp_path``: connect, ``await body(broker)``, close."""
    options = {"timeout_ms": 800, "backoff_s": 0.05, "max_attempts": 3, "reconcile_timeout_s": 30, "recv_window_ms": 3000, **settings}
    cfg = load_run_config(["broker=live", "broker.bot=t", *(f"broker.{k}={v}" for k, v in options.items())], plugins.registry, env={})
    broker = LiveBroker(cfg.broker.config, build_runtime(cfg, plugins, mode="live"))

    async def main():
        client = make_exchange(
            "binanceusdm",
            pro=True,
            url=server.url,
            timeout_ms=options["timeout_ms"],
            credentials={"apiKey": KEY, "secret": SECRET},
            options={"warnOnFetchOpenOrdersWithoutSymbol": False},
        )
        install_gate(client)
        journal = Journal(tmp_path / "t.db")
        try:
            await retrying(client.load_markets, attempts=20)
            await broker.connect(client, journal)
            broker.set_market(server.state.trading.price("BTCUSDT"), START_MS)
            return await body(broker)
        finally:
            await broker.close()
            await client.close()
            journal.close()

    return asyncio.run(main())


async def settled(broker: LiveBroker, timeout_s: float = 30.0) -> None:
    t0 = time.monotonic()
    while broker._tasks:
        assert time.monotonic() - t0 < timeout_s, [t.get_name() for t in broker._tasks]
        await asyncio.sleep(0.02)


async def until(condition, timeout_s: float = 10.0) -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout_s
        await asyncio.sleep(0.01)


def on_exchange(server, cid: str) -> list:
    return [o for o in server.state.trading.account(KEY).orders.values() if o.client_id == cid]


def fills_of(events, cid: str) -> list[float]:
    return [e.fill.quantity for e in events if hasattr(e, "fill") and e.fill.client_id == cid]


def market(broker: LiveBroker, cid: str, side: Side, qty: float = 0.003) -> Order:
    order = Order.create(broker.instrument, cid, side, qty, ts_ms=START_MS)
    broker.submit(order)
    return order


def test_a_close_executed_after_its_lookup_said_not_found_is_not_sent_again(faulty, tmp_path, plugins):
    """Scenario 1: a market close (not reduce-only, as maker_vol's with side=both) reaches the
    exchange 1.2 s late, after the client gave up and its look-up answered "no such order". The
    broker must not send it again before the request's recvWindow has passed: one close, flat."""
    plan = faulty.state.faults
    plan.late_s = 1.2

    async def body(broker):
        market(broker, "t-1-1", Side.BUY)
        await settled(broker)
        plan.script("order", "late_execution")
        market(broker, "t-1-2", Side.SELL)
        await settled(broker)
        events = broker.events()
        assert len(on_exchange(faulty, "t-1-2")) == 1, "the close was sent twice"
        assert faulty.state.trading.account(KEY).position("BTCUSDT").amt == 0.0
        assert broker.position().quantity == pytest.approx(0.0, abs=1e-12)
        assert fills_of(events, "t-1-2") == [pytest.approx(0.003)]
        assert plan.counts().get("late_executed") == 1 and broker.stats["unknown_waits"] >= 1

    life(faulty, tmp_path, plugins, body)


def test_a_late_fill_reaches_the_next_life_once(faulty, tmp_path, plugins):
    """Scenario 1 across a restart: the bot gives up on a close and dies; the next life's first
    reconciliation does not find it (it lands 2.5 s late), keeps it unknown instead of ending it,
    and once the recvWindow has passed finds it filled and hands the fill over once."""
    plan = faulty.state.faults
    plan.late_s = 2.5

    async def first(broker):
        market(broker, "t-1-1", Side.BUY)
        await settled(broker)
        broker.events()
        plan.script("order", "late_execution")
        market(broker, "t-1-2", Side.SELL)
        await settled(broker)  # one try, no answer: given up, left to reconciliation

    async def second(broker):
        # connect reconciled already: not found, still inside the window: not ended
        assert [o.client_id for o in broker.open_orders()] == ["t-1-2"]
        assert all(e.order.status is not OrderStatus.REJECTED for e in broker.events() if not hasattr(e, "fill"))
        await broker._wait_out("t-1-2")
        await broker.reconcile()
        await settled(broker)
        events = broker.events()
        assert fills_of(events, "t-1-2") == [pytest.approx(0.003)]
        assert not broker.open_orders()
        assert broker.position().quantity == pytest.approx(faulty.state.trading.account(KEY).position("BTCUSDT").amt, abs=1e-12)
        await broker.reconcile()
        assert fills_of(broker.events(), "t-1-2") == []  # found again: not delivered twice

    life(faulty, tmp_path, plugins, first, max_attempts=1, recv_window_ms=4000)
    life(faulty, tmp_path, plugins, second, max_attempts=1, recv_window_ms=4000)
    assert plan.counts().get("late_executed") == 1 and len(on_exchange(faulty, "t-1-2")) == 1


def test_a_resting_order_that_lands_after_a_refused_resend_is_tracked(faulty, tmp_path, plugins):
    """Scenario 2: the first try of a resting buy lands 2 s late; meanwhile the margin is used
    elsewhere, so a re-send would be refused (-2019) and the order taken as rejected while the
    late one rests on the exchange untracked. The broker sends nothing again until the first try's
    window has passed, then finds it and tracks it."""
    plan = faulty.state.faults
    plan.late_s = 2.0
    account = faulty.state.trading.account(KEY)

    async def body(broker):
        plan.script("order", "late_execution")
        order = Order.create(broker.instrument, "t-1-1", Side.BUY, 0.003, broker.last_price * 0.9, post_only=True, ts_ms=START_MS)
        broker.submit(order)
        await until(lambda: faulty.state.calls[("GET", ORDER)] >= 1)  # the look-up: no such order
        wallet, account.wallet = account.wallet, 1.0  # the margin is taken elsewhere for a moment
        await asyncio.sleep(0.6)
        account.wallet = wallet
        await settled(broker)
        await broker.reconcile()
        exchange_open = {o.client_id for o in account.open_orders()}
        assert exchange_open == {"t-1-1"}
        assert [o.client_id for o in broker.open_orders()] == ["t-1-1"]

    life(faulty, tmp_path, plugins, body)


def test_an_order_taken_as_ended_that_the_exchange_shows_is_adopted_in_the_next_life(faulty, tmp_path, plugins):
    """Scenario 2, the general rule: an order the bot sent and took as ended without the
    exchange's word is adopted back when the exchange shows it (also after a restart), and its
    fills reach the strategy once."""

    async def first(broker):
        order = Order.create(broker.instrument, "t-1-1", Side.BUY, 0.003, broker.last_price * 0.9, post_only=True, ts_ms=START_MS)
        broker.submit(order)
        await settled(broker)
        broker._final("t-1-1", OrderStatus.CANCELED, "gone from the exchange", inferred=True)  # as a look-up that missed it would

    async def second(broker):
        assert [o.client_id for o in broker.open_orders()] == ["t-1-1"] and broker.stats["adopted"] == 1
        exchange_id = on_exchange(faulty, "t-1-1")[0].order_id
        faulty.state.trading.partial_fill(KEY, exchange_id, 0.001)
        await broker.reconcile()
        await settled(broker)
        assert fills_of(broker.events(), "t-1-1") == [pytest.approx(0.001)]
        assert broker.position().quantity == pytest.approx(0.001)

    life(faulty, tmp_path, plugins, first)
    life(faulty, tmp_path, plugins, second)


def test_not_found_read_late_on_a_stalled_machine_does_not_end_an_order_that_executes_late(faulty, tmp_path, plugins):
    """The sweep's seed 612 under load: a placement reaches the book late (within its recvWindow);
    the next life's look-up is answered "no such order" before that, but the machine stalls and the
    answer is read only after the placement's last moment. The look-up was asked while the order
    could still execute, so it proves nothing: the order stays unknown, a later pass finds it
    filled, and the fill reaches the strategy."""
    plan = faulty.state.faults
    plan.late_s = 2.0  # executed 2 s after it arrived: within the 3 s recvWindow

    async def first(broker):
        plan.script("order", "late_execution")
        market(broker, "t-1-1", Side.BUY)
        await asyncio.sleep(0.3)  # the request is at the exchange, held; this life ends (killed)

    async def second(broker):
        assert fills_of(broker.events(), "t-1-1") == []  # not executed yet when this life started
        original = broker.exchange.fetch_order
        stalled = []

        async def stalling_lookup(*args, **kwargs):
            answer = asyncio.ensure_future(original(*args, **kwargs))
            if not stalled:  # once: the answer is in, the machine stalls past the order's last moment
                stalled.append(True)
                await asyncio.sleep(0.3)
                time.sleep(max(0.0, broker._unknown_until["t-1-1"] / 1000 - time.time()) + 0.3)
            return await answer

        broker.exchange.fetch_order = stalling_lookup
        try:
            await broker.reconcile()
        finally:
            broker.exchange.fetch_order = original
        assert stalled and plan.counts().get("late_executed") == 1
        await broker.reconcile()
        await settled(broker)
        assert len(on_exchange(faulty, "t-1-1")) == 1
        assert fills_of(broker.events(), "t-1-1") == [pytest.approx(0.003)]
        assert broker.position().quantity == pytest.approx(0.003)

    life(faulty, tmp_path, plugins, first)
    life(faulty, tmp_path, plugins, second)


# --- the local exchange's new fault classes ---------------------------------------------------


def test_a_late_request_is_executed_only_within_its_recv_window(faulty):
    """``late_execution``: the order reaches the book ``late_s`` after it arrived, after the client
    gave up; Binance's rule decides then: executed within timestamp + recvWindow, refused after."""
    import ccxt

    plan = faulty.state.faults
    client = make_exchange(
        "binanceusdm",
        url=faulty.url,
        timeout_ms=300,
        credentials={"apiKey": KEY, "secret": SECRET},
        options={"warnOnFetchOpenOrdersWithoutSymbol": False},
    )
    client.load_markets()
    for cid, late_s, window_ms, outcome in (("late-1", 1.0, 3000, "late_executed"), ("late-2", 1.2, 500, "late_refused")):
        plan.late_s = late_s
        plan.script("order", "late_execution")
        with pytest.raises(ccxt.RequestTimeout):
            client.create_order("BTC/USDT:USDT", "market", "buy", 0.003, None, {"clientOrderId": cid, "recvWindow": window_ms})
        assert not on_exchange(faulty, cid)  # not yet: a look-up now would say "no such order"
        t0 = time.monotonic()
        while plan.counts().get(outcome, 0) < 1 and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        assert plan.counts().get(outcome) == 1
        assert len(on_exchange(faulty, cid)) == (1 if outcome == "late_executed" else 0)


def test_clock_skew_moves_the_date_header_and_the_recv_window_check(faulty):
    import ccxt

    plan = faulty.state.faults
    client = make_exchange(
        "binanceusdm", url=faulty.url, timeout_ms=2000, credentials={"apiKey": KEY, "secret": SECRET}, options={"recvWindow": 1000}
    )
    plan.skew_ms = 4000
    with pytest.raises(ccxt.InvalidNonce):
        client.fetch_balance()
    from email.utils import parsedate_to_datetime

    offset_ms = parsedate_to_datetime(client.last_response_headers["Date"]).timestamp() * 1000 - time.time() * 1000
    assert 2500 < offset_ms < 5000
    client.options["timeDifference"] = -int(offset_ms + 500)
    assert client.fetch_balance()["USDT"]["total"] > 0


def test_an_exchange_clock_set_back_moves_the_moment_not_found_becomes_final(faulty, tmp_path, plugins):
    """Requests already sent may execute later (in our clock) by as much as the exchange clock fell
    behind ours: the journalled moments move with it; noise within the measurement does not."""

    async def body(broker):
        now = int(time.time() * 1000)
        broker._set_unknown_until("t-9-1", now + 5000)
        broker._window_ms()  # the clock as measured now
        broker.exchange._quant_clock_offset_ms -= 400  # within the Date header's noise
        assert broker._still_unknown("t-9-1", time.time() * 1000) and broker._unknown_until["t-9-1"] == now + 5000
        broker.exchange._quant_clock_offset_ms -= 3000  # set back 3 s
        assert broker._still_unknown("t-9-1", time.time() * 1000)
        assert broker._unknown_until["t-9-1"] == now + 5000 + 3400
        assert broker.journal.unknown_until()["t-9-1"] == now + 8400

    life(faulty, tmp_path, plugins, body)

"""OrderSync against the real simulated broker: diff, nearest-N, ids, budget, re-arm, adoption."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from btc_quant.core.config import merge_layers, parse_assignments, resolve
from btc_quant.core.run import build_runtime
from btc_quant.plugins.brokers.sim import SimBroker
from btc_quant.sdk import FillEvent, Order, OrderError, Side
from btc_quant.sdk.ordersync import BrokerVenue, OrderSync, VirtualOrder
from btc_quant.sdk.testing import bars_from


def make_broker(plugins, rows, *extra):
    config = resolve(
        merge_layers(parse_assignments(["strategy=sma_cross", "exchange=binanceusdm", "symbol=BTC/USDT:USDT", *extra])), plugins.registry
    )
    runtime = build_runtime(config, plugins)
    broker = SimBroker(config.broker.config, runtime)
    broker.load(bars_from(rows))
    broker.start()
    return broker


def drain(broker, sync, submitted):
    """Forward the broker's events to the sync, as a strategy does; record every id sent."""
    for event in broker.events():
        if isinstance(event, FillEvent):
            sync.on_fill(event.fill, event.order)
        else:
            sync.on_order(event.order)


class RecordingVenue(BrokerVenue):
    """The sim broker as a venue, remembering every id submitted (to check ids are never reused)."""

    def __init__(self, broker) -> None:
        super().__init__(broker)
        self.sent: list[Order] = []

    def submit(self, order: Order) -> None:
        self.sent.append(order)
        super().submit(order)


def own_open(broker, sync):
    return {sync.key_of(o.client_id): o for o in broker.open_orders() if sync.owns(o.client_id)}


def expected_targets(sync, price, instrument):
    targets, _ = sync.targets(price, instrument)
    return {k: (o.side, o.price, o.quantity) for k, o in targets.items()}


def ladder(levels, qty=0.01, mid=40_000.0, step=10.0):
    """Buys below ``mid`` and sells above it, one per level number (negative = buy side)."""
    out = []
    for lv in levels:
        if lv < 0:
            out.append(VirtualOrder(f"b{-lv}", Side.BUY, mid + lv * step, qty))
        else:
            out.append(VirtualOrder(f"s{lv}", Side.SELL, mid + (lv + 1) * step, qty, reduce_only=False))
    return out


# Real BTC prices (Jan 2022 range) moved by a few ticks per bar.
ROWS = [(40_000 + d, 40_000 + d + 35, 40_000 + d - 35, 40_000 + d + 5) for d in (0, 20, -40, 60, -80, 10, 30, -20, 0, 50, -60, 0)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(st.sets(st.integers(-12, 12), max_size=14), st.integers(1, 6), st.sampled_from([0.01, 0.02])),
        min_size=1,
        max_size=len(ROWS) - 1,
    ),
)
def test_one_sync_makes_live_set_equal_desired_nearest_n(plugins, steps):
    broker = make_broker(plugins, ROWS)
    sync = OrderSync("t1", max_live_orders=4)
    venue = RecordingVenue(broker)
    for levels, bars_to_run, qty in steps:
        sync.set_desired(ladder(sorted(levels), qty))
        sync.sync(venue)
        drain(broker, sync, venue.sent)
        # after exactly one sync the live set is the desired nearest-N (per side, non-crossing)
        want = expected_targets(sync, broker.last_price, broker.instrument)
        have = {k: (o.side, o.price, o.quantity) for k, o in own_open(broker, sync).items()}
        assert have == want
        live_keys = [sync.key_of(o.client_id) for o in broker.open_orders()]
        assert len(live_keys) == len(set(live_keys)), "two live orders for one key"
        for side in Side:
            assert sum(1 for o in broker.open_orders() if o.side is side) <= sync.max_live_orders
        for _ in range(bars_to_run):  # fills happen here, by the sim's fill model
            step = broker.advance(None)
            drain(broker, sync, venue.sent)
            if step.index >= len(ROWS):
                return
    ids = [o.client_id for o in venue.sent]
    assert len(ids) == len(set(ids)), "a client id was reused"
    assert all(sync.owns(i) and len(i) <= 36 for i in ids)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(levels=st.sets(st.integers(-15, 15), min_size=1, max_size=25), budget=st.integers(1, 5))
def test_request_budget_defers_and_converges(plugins, levels, budget):
    broker = make_broker(plugins, ROWS)
    sync = OrderSync("t2", max_live_orders=6, max_requests=budget, interval_ms=60_000)
    venue = BrokerVenue(broker)
    sync.set_desired(ladder(sorted(levels)))
    want = expected_targets(sync, broker.last_price, broker.instrument)
    rounds = 0
    while True:
        report = sync.sync(venue)
        drain(broker, sync, [])
        assert report.submitted + report.canceled <= budget
        if report.deferred == 0:
            break
        rounds += 1
        assert rounds < 50
        assert sync.sync(venue).submitted == 0  # the budget of this minute is spent
        broker._now += 60_000  # next budget interval (the sim's clock moves with bars)
    have = {k: (o.side, o.price, o.quantity) for k, o in own_open(broker, sync).items()}
    assert have == want


def test_keeps_matching_orders_and_replaces_changed_ones(plugins):
    broker = make_broker(plugins, ROWS)
    sync = OrderSync("mv", max_live_orders=3)
    venue = BrokerVenue(broker)
    sync.set_desired(ladder([-1, -2, -3, -4, 1]))
    first = sync.sync(venue)
    assert (first.submitted, first.canceled) == (4, 0)  # nearest 3 buys + 1 sell
    ids = {o.client_id for o in broker.open_orders()}
    again = sync.sync(venue)
    assert (again.submitted, again.canceled, again.kept) == (0, 0, 4)
    sync.want(VirtualOrder("b1", Side.BUY, 39_985.0, 0.01))  # b1 moves
    changed = sync.sync(venue)
    drain(broker, sync, [])
    assert (changed.submitted, changed.canceled) == (1, 1)
    new_b1 = own_open(broker, sync)["b1"]
    assert new_b1.price == 39_985.0 and new_b1.client_id not in ids
    assert new_b1.client_id.startswith("mv:b1.")


def test_restarted_sync_adopts_its_orders_and_leaves_others_alone(plugins):
    broker = make_broker(plugins, ROWS)
    venue = BrokerVenue(broker)
    foreign = Order.create(broker.instrument, "manual-1", Side.BUY, 0.01, 39_000.0, post_only=True)
    other_bot = Order.create(broker.instrument, "mv2:b1.abc", Side.BUY, 0.01, 39_990.0, post_only=True)
    broker.submit(foreign)
    broker.submit(other_bot)
    old = OrderSync("mv", max_live_orders=5)
    old.set_desired(ladder([-1, -2, -3]))
    old.sync(venue)
    old_ids = {o.client_id for o in broker.open_orders() if old.owns(o.client_id)}
    broker.events()
    # restart: a new object with the same strategy id and a smaller desired set
    new = OrderSync("mv", max_live_orders=5)
    new.set_desired(ladder([-1, -2]))
    report = new.sync(venue)
    assert (report.submitted, report.canceled, report.kept) == (0, 1, 2)
    assert new.stats.adopted == 3
    remaining = {o.client_id for o in broker.open_orders()}
    assert {"manual-1", "mv2:b1.abc"} <= remaining  # never touched
    assert {c for c in remaining if new.owns(c)} <= old_ids
    # a new order after the restart gets an id the old process never used
    new.want(VirtualOrder("b3", Side.BUY, 39_970.0, 0.01))
    new.sync(venue)
    b3 = own_open(broker, new)["b3"]
    assert b3.client_id not in old_ids and new.parse(b3.client_id)[1] > max(new.parse(c)[1] for c in old_ids)


def test_post_only_rejection_is_rearmed_with_a_new_id(plugins):
    broker = make_broker(plugins, ROWS)
    sync = OrderSync("mv", max_live_orders=5)

    class Crossing(BrokerVenue):
        """Reports a price above the real one, so sync sends a buy the sim then expires."""

        @property
        def price(self):
            return broker.last_price + 100

    sync.set_desired([VirtualOrder("b1", Side.BUY, 40_050.0, 0.01)])
    sync.sync(Crossing(broker))
    events = broker.events()
    assert events[0].order.status.value == "expired"
    first_id = events[0].order.client_id
    for e in events:
        sync.on_order(e.order)
    assert sync.stats.rearmed == 1 and sync.live_count == 0
    # the price falls below the level: the next sync sends it again, under a new id
    broker._price = 40_100.0
    sync.sync(BrokerVenue(broker))
    (live,) = broker.open_orders()
    assert live.client_id != first_id and sync.key_of(live.client_id) == "b1"


def test_crossing_post_only_orders_are_held_not_sent(plugins):
    broker = make_broker(plugins, ROWS)
    sync = OrderSync("mv", max_live_orders=5)
    sync.set_desired([VirtualOrder("b1", Side.BUY, 40_010.0, 0.01), VirtualOrder("b2", Side.BUY, 39_990.0, 0.01)])
    report = sync.sync(BrokerVenue(broker))
    assert (report.submitted, report.held) == (1, 1)


def test_in_flight_order_is_not_sent_twice():
    """A live broker acknowledges later: until then the order counts as live for its key."""

    class SlowVenue:
        from btc_quant.core.instruments import instrument_for

        instrument = instrument_for("binanceusdm", "BTC/USDT:USDT")
        now_ms = 1_700_000_000_000
        price = 40_000.0
        open_orders: list = []

        def __init__(self):
            self.sent, self.canceled = [], []

        def submit(self, order):
            self.sent.append(order)

        def cancel(self, client_id):
            self.canceled.append(client_id)

    venue = SlowVenue()
    sync = OrderSync("mv")
    sync.set_desired(ladder([-1]))
    sync.sync(venue)
    sync.sync(venue)
    assert len(venue.sent) == 1
    sync.drop("b1")
    sync.sync(venue)
    sync.sync(venue)
    assert venue.canceled == [venue.sent[0].client_id]


@pytest.mark.parametrize("bad", ["", "has:colon", "x" * 13, "sp ace"])
def test_strategy_id_must_fit_the_prefix_rules(bad):
    with pytest.raises(OrderError):
        OrderSync(bad)


def test_key_must_not_contain_the_generation_separator():
    with pytest.raises(OrderError):
        VirtualOrder("b1.2", Side.BUY, 1.0, 1.0)


def test_parse_ignores_foreign_ids():
    sync = OrderSync("mv")
    assert sync.parse("mvx:b1.1") is None
    assert sync.parse("mv:b1.z") == ("b1", 35)
    assert sync.parse("mv-3f-1") is None

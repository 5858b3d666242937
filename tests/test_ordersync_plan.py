"""OrderSync's diff is one compiled function, ``sync_plan``: its rules on hand-built arrays, and the
same decision reached by OrderSync (the event path) and by maker_vol's compiled backtest (``_sync``)."""

from __future__ import annotations

import numpy as np
from test_ordersync import ROWS, make_broker

from btc_quant.plugins.brokers.sim import venue as vc
from btc_quant.plugins.strategies import maker_vol_kernel as mk
from btc_quant.plugins.strategies.maker_vol_grid import CLOSE_GONE, CLOSE_SEND, CLOSE_WAIT, lot_close
from btc_quant.sdk import Order, Side
from btc_quant.sdk.ordersync import NOP, NTG, BrokerVenue, OrderSync, VirtualOrder, sync_plan

PRICE = 40_000.0


def open_row(target, side, price, qty=0.01, rem=None, age=0, po=1, ro=0, pside=0):
    return (target, side, price, qty, qty if rem is None else rem, po, ro, pside, age)


def target_row(side, price, qty=0.01, tie=0, po=1, ro=0, pside=0):
    return (side, price, qty, po, ro, pside, tie)


def plan(open_rows, target_rows, price=PRICE):
    OPEN = np.array(open_rows, dtype=np.float64).reshape(-1, NOP)
    TARGETS = np.array(target_rows, dtype=np.float64).reshape(-1, NTG)
    n, m = len(open_rows), len(target_rows)
    KEEPER, PLACE, CANCEL = np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64), np.empty(n, dtype=np.int64)
    nkeep, ncancel, nplace = sync_plan(price, OPEN, n, TARGETS, m, KEEPER, CANCEL, np.empty(n), np.empty(n), PLACE)
    return KEEPER.tolist(), CANCEL[:ncancel].tolist(), PLACE[:nplace].tolist(), nkeep


def test_of_two_orders_matching_one_target_the_older_stays_whatever_their_order():
    target = [target_row(1, 39_990.0)]
    for rows in (
        [open_row(0, 1, 39_990.0, age=5), open_row(0, 1, 39_990.0, age=2)],
        [open_row(0, 1, 39_990.0, age=2), open_row(0, 1, 39_990.0, age=5)],
    ):
        keeper, cancel, place, nkeep = plan(rows, target)
        older = 0 if rows[0][-1] == 2 else 1
        assert keeper == [older] and cancel == [1 - older] and place == [] and nkeep == 1


def test_cancels_go_nearest_first_and_the_older_first_on_a_tie():
    rows = [
        open_row(-1, 1, 39_970.0, age=1),  # 30 away
        open_row(-1, -1, 40_010.0, age=7),  # 10 away, newer
        open_row(-1, 1, 39_990.0, age=3),  # 10 away, older
        open_row(-1, 1, 0.0, age=9),  # a market order: distance 0
    ]
    _, cancel, _, _ = plan(rows, [])
    assert cancel == [3, 2, 1, 0]


def test_placements_go_nearest_first_then_by_tie_rank_then_in_order():
    targets = [
        target_row(-1, 40_020.0, tie=3),  # 20 away, ranked last
        target_row(1, 39_980.0, tie=1),  # 20 away
        target_row(1, 39_990.0, tie=9),  # 10 away
        target_row(-1, 40_020.0, tie=1),  # 20 away, same rank as target 1: after it
    ]
    keeper, cancel, place, _ = plan([], targets)
    assert place == [2, 1, 3, 0] and keeper == [-1] * 4 and cancel == []


def test_an_order_differing_in_any_field_is_replaced_and_a_partly_filled_one_kept():
    base = dict(side=1, price=39_990.0)
    same = target_row(**base)
    cases = {
        "side": (open_row(0, -1, 39_990.0), False),
        "price": (open_row(0, 1, 39_989.9), False),
        "quantity": (open_row(0, 1, 39_990.0, qty=0.02), False),
        "post_only": (open_row(0, 1, 39_990.0, po=0), False),
        "reduce_only": (open_row(0, 1, 39_990.0, ro=1), False),
        "position side": (open_row(0, 1, 39_990.0, pside=1), False),
        "no target": (open_row(-1, 1, 39_990.0), False),
        "partly filled, the rest is the target": (open_row(0, 1, 39_990.0, qty=0.03, rem=0.01), True),
        "same": (open_row(0, 1, 39_990.0), True),
    }
    for name, (row, kept) in cases.items():
        keeper, cancel, place, _ = plan([row], [same])
        assert (keeper == [0]) is kept, name
        assert (cancel, place) == (([], []) if kept else ([0], [0])), name


class RecordingVenue(BrokerVenue):
    def __init__(self, broker) -> None:
        super().__init__(broker)
        self.canceled: list[str] = []
        self.sent: list[str] = []

    def cancel(self, client_id: str) -> None:
        self.canceled.append(client_id)
        super().cancel(client_id)

    def submit(self, order: Order) -> None:
        self.sent.append(order.tag)
        super().submit(order)


def test_ordersync_and_the_compiled_backtest_make_the_same_diff(plugins):
    """One situation, both paths: open orders t3 (oldest), b5 and two identical b6 (older first);
    wanted: b6 unchanged, b5 moved, t3 gone, t4 new. Both keep the older b6 and cancel t3 before b5
    (a tie at 10 from the price: the older first), then the newer b6; both place b5 before t4 (a tie
    at 20: key order)."""
    broker = make_broker(plugins, ROWS)
    price = broker.last_price
    # (key, kernel kind, level or lot, side, price) of the orders open before the sync, oldest first
    before = [("t3", mk.K_TP, 3, Side.SELL, price + 10), ("b5", mk.K_ENTRY, 5, Side.BUY, price - 10)]
    before += [("b6", mk.K_ENTRY, 6, Side.BUY, price - 30)] * 2
    wanted = [
        ("b6", mk.K_ENTRY, 6, Side.BUY, price - 30),
        ("b5", mk.K_ENTRY, 5, Side.BUY, price - 20),
        ("t4", mk.K_TP, 4, Side.SELL, price + 20),
    ]

    # the event path: a restarted OrderSync adopts the open orders, then syncs
    for age, (key, _, _, side, p) in enumerate(before):
        broker.submit(Order.create(broker.instrument, f"mv:{key}.{age + 1}", side, 0.01, p, post_only=True))
    broker.events()
    sync = OrderSync("mv", max_live_orders=5)
    sync.set_desired([VirtualOrder(key, side, p, 0.01) for key, _, _, side, p in wanted])
    venue = RecordingVenue(broker)
    report = sync.sync(venue)
    event_cancels = [int(cid.rpartition(".")[2]) - 1 for cid in venue.canceled]  # as ages
    assert report.kept == 1 and venue.sent == ["b5", "t4"]

    # the compiled backtest: the same orders in a fresh sim's venue core, then the kernel's _sync
    v = make_broker(plugins, ROWS).venue
    first = int(v.S[vc.NORD])
    for _, kind, ref, side, p in before:
        oi = vc.new_order(v, 1.0 if side is Side.BUY else -1.0, p, 0.01, 1.0, 0.0, vc.PS_BOTH)
        v.O[oi, vc.O_TAG0], v.O[oi, vc.O_TAG1] = mk._tag(kind, 0), ref
        vc.submit(v, oi, False)
    ev0, nord = int(v.S[vc.NEV]), int(v.S[vc.NORD])
    MG = np.zeros(mk.NMG)
    MG[mk.G_D], MG[mk.G_ALONE] = 1.0, 1.0  # a long grid, one-way, its take-profits not reduce-only (as above)
    # the kernel's own work arrays, as run_kernel makes them (one grid, 2 live orders a side)
    W = mk.work_arrays(1, 2, v.BOOK.shape[0], 16, 16, 16)
    TK, TG, TR, TGT, _, _, OPEN, OIS, KEEPER, CANCEL, CDIST, CAGE, PLACE, _, T_BY_LEVEL, T_BY_LOT, _ = W
    TG[:] = 0
    for t, (_, kind, ref, side, p) in enumerate(wanted):
        TK[t], TR[t] = kind, ref
        mk._target(TGT, t, kind, 1.0 if side is Side.BUY else -1.0, p, 0.01, MG)
    M = np.zeros(mk.NSTATE)
    GENS = np.zeros(v.O.shape[0])
    live = mk._sync(v, M, len(wanted), TK, TG, TR, TGT, OPEN, OIS, KEEPER, CANCEL, CDIST, CAGE, PLACE, T_BY_LEVEL, T_BY_LOT, GENS, price)
    kernel_cancels = [
        int(v.EV[e, 1]) - first
        for e in range(ev0, int(v.S[vc.NEV]))
        if v.EV[e, 0] == vc.EV_STATUS and v.O[int(v.EV[e, 1]), vc.O_STATUS] == vc.ST_CANCELED
    ]
    tp_keys = {mk.K_ENTRY: "b", mk.K_TP: "t"}
    kernel_sent = [f"{tp_keys[int(v.O[oi, vc.O_TAG0]) % mk.NKIND]}{int(v.O[oi, vc.O_TAG1])}" for oi in range(nord, int(v.S[vc.NORD]))]

    assert event_cancels == kernel_cancels == [0, 1, 3]
    assert venue.sent == kernel_sent == ["b5", "t4"]
    assert live == 3 and M[mk.CANCELED] == 3 and M[mk.SUBMITTED] == 2


def test_a_lots_close_one_way_hedge_and_both_grids_on_one_position():
    lot, min_notional, price = 0.001, 100.0, 40_000.0
    # one grid, one-way: reduce-only, against the grid; the take-profit goes the first time only
    assert lot_close(1, 0.01, 0.0, False, False, True, price, lot, min_notional) == (CLOSE_SEND, -1.0, True, vc.PS_BOTH, True)
    assert lot_close(-1, 0.01, 0.01, True, False, True, price, lot, min_notional) == (CLOSE_SEND, 1.0, True, vc.PS_BOTH, False)
    # a retry when the position holds none of it (less than half a lot): the lot is gone
    assert lot_close(1, 0.01, 0.0004, True, False, True, price, lot, min_notional)[0] == CLOSE_GONE
    # hedge mode: SELL LONG / BUY SHORT, never reduce-only
    assert lot_close(1, 0.01, 0.01, False, True, False, price, lot, min_notional) == (CLOSE_SEND, -1.0, False, vc.PS_LONG, True)
    assert lot_close(-1, 0.01, 0.01, False, True, False, price, lot, min_notional) == (CLOSE_SEND, 1.0, False, vc.PS_SHORT, True)
    assert lot_close(-1, 0.01, 0.0, True, True, False, price, lot, min_notional)[0] == CLOSE_GONE
    # both grids on one net position: reduce-only while the position holds the lot; else it opens
    # the other way, and under the minimum notional it waits
    assert lot_close(1, 0.01, 0.01, False, False, False, price, lot, min_notional) == (CLOSE_SEND, -1.0, True, vc.PS_BOTH, True)
    assert lot_close(1, 0.01, 0.0, False, False, False, price, lot, min_notional) == (CLOSE_SEND, -1.0, False, vc.PS_BOTH, True)
    assert lot_close(1, 0.002, 0.0, False, False, False, price, lot, min_notional)[0] == CLOSE_WAIT

"""Virtual orders and :class:`OrderSync`: the strategy says which orders it wants, sync makes them real.

A strategy that keeps many resting orders (a grid) does not place and cancel orders itself. It
keeps a *desired set* of :class:`VirtualOrder` objects, each under a stable ``key`` (``"b123"``:
the buy at grid level 123), and calls :meth:`OrderSync.sync` when the set or the price changed.
Sync compares the desired set with the orders that are really open and sends the difference:

* per side, only the ``max_live_orders`` desired orders nearest the reference price are live
  (a post-only order that would cross the price is held back until the price moves away);
* an open order of ours whose key is no longer wanted, or whose price, quantity or flags differ
  from the desired order under its key, is canceled (of two that match one key, the newer); a
  wanted key without a matching open order gets a new order;
* cancels go first (they free margin and the exchange's open-order slots), then new orders,
  nearest the price first (cancels: the older first on a tie; new orders: by key); at most ``max_requests`` submits + cancels are sent per
  ``interval_ms`` of the venue's clock, and what does not fit waits for the next sync
  (``SyncReport.deferred``);
* a post-only order the venue expires or rejects because it would have crossed is simply not
  open any more, so the next sync sends it again under a new id (counted as ``rearmed``).

The decision of the two middle points (keep, cancel and in what order, place and in what order) is
one compiled function, :func:`sync_plan`, over plain arrays: :meth:`OrderSync.sync` builds them
from its dicts, and maker_vol's compiled backtest calls the same function on its own arrays.

Client order ids
    ``f"{strategy_id}:{key}.{generation}"``, e.g. ``mv:b123.lk2f9x3a``. ``strategy_id`` (1-12 of
    ``[A-Za-z0-9_-]``) names the bot; the ``:`` after it is the *prefix* by which a bot finds its
    own orders: sync only ever looks at, adopts or cancels open orders whose id starts with
    ``f"{strategy_id}:"``, so orders placed by hand or by another bot are never touched. The
    generation is a base-36 counter shared by all keys, seeded with the venue's clock in
    milliseconds when the sync is created and raised above every generation seen on adopted
    orders, so an id is never used twice for two different orders - not within a run and not
    across a restart (the counter starts above the old one as long as the bot sent fewer orders
    than milliseconds passed, which any exchange's rate limit guarantees). In a backtest the
    clock is the bar time, so ids are deterministic. The characters used are all allowed in
    Binance's ``newClientOrderId`` (``^[.A-Z:/a-z0-9_-]{1,36}$``); an id is at most 36 long.

Restart
    On its first sync a new :class:`OrderSync` *adopts* the open orders that carry its prefix: an
    order that matches the desired order of its key is kept as the live order of that key (no
    cancel, no new order); any other order of ours is canceled.

What it needs from the venue (the broker contract, so the same code drives the simulated broker
now and the live broker later). Any object with these members works; the strategy's
:class:`~btc_quant.core.engine.Context` has them all, and :class:`BrokerVenue` adapts a bare
:class:`~btc_quant.core.broker.Broker`:

* ``open_orders``: the orders the broker believes are open, each with its ``client_id``
  (a list, or a method returning one);
* ``submit(order)``: send a PENDING :class:`~btc_quant.core.model.Order`, without blocking;
* ``cancel(client_id)``: ask to cancel, without blocking;
* ``now_ms``, ``price`` (last price, the reference for "nearest") and ``instrument``.

Outcomes arrive later as events. The strategy forwards them with :meth:`OrderSync.on_order`
and :meth:`OrderSync.on_fill`, so that sync knows which of its requests are still in flight:
an order sent but not yet seen open counts as live for its key (no duplicate is sent while the
acknowledgement is on its way), and an order being canceled is not canceled twice. So a broker
must eventually report every order it was given (acknowledged, rejected, filled or canceled);
an order it lost without a word would block its key until the broker's reconciliation reports
it. Once an order has been seen open, its disappearing from ``open_orders`` is enough.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple, Protocol, cast

import numpy as np

from ..core.compiled import njit
from ..core.errors import OrderError
from ..core.model import Fill, Instrument, Order, OrderStatus, PositionSide, Side

_STRATEGY_ID = re.compile(r"^[A-Za-z0-9_-]{1,12}$")
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,14}$")
_MAX_ID = 36
_SIGN = {Side.BUY: 1.0, Side.SELL: -1.0}
_PSIDE = {PositionSide.BOTH: 0.0, PositionSide.LONG: 1.0, PositionSide.SHORT: 2.0}  # the venue core's PS_*


def base36(n: int) -> str:
    """``n`` (>= 0) in base 36 with lower-case digits: short, client-id-safe generation numbers."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass(frozen=True, slots=True)
class VirtualOrder:
    """An order the strategy wants resting: a limit order under a stable ``key``.

    ``key`` names the slot (for a grid: role + level, e.g. ``"b123"`` for the buy at level 123,
    ``"t130"`` for a take-profit at level 130); at most one live order exists per key. ``price``
    and ``quantity`` are rounded to the instrument (buys down, sells up) when the order is made.
    """

    key: str
    side: Side
    price: float
    quantity: float
    post_only: bool = True
    reduce_only: bool = False
    position_side: PositionSide = PositionSide.BOTH  # hedge mode: LONG / SHORT

    def __post_init__(self) -> None:
        if not _KEY.match(self.key):
            raise OrderError(f"virtual order key {self.key!r} must be 1-14 of [A-Za-z0-9_-]")
        if not (math.isfinite(self.price) and self.price > 0 and math.isfinite(self.quantity) and self.quantity > 0):
            raise OrderError(f"virtual order {self.key}: price and quantity must be positive, got {self.price!r}, {self.quantity!r}")


class Target(NamedTuple):
    """A desired order as it will be sent (rounded), before it has a client id."""

    side: Side
    price: float
    quantity: float
    post_only: bool
    reduce_only: bool
    position_side: PositionSide = PositionSide.BOTH


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one :meth:`OrderSync.sync` did."""

    submitted: int = 0
    canceled: int = 0
    kept: int = 0
    deferred: int = 0  # requests left for a later sync by the request budget
    held: int = 0  # desired post-only orders not sent because they would cross the price
    live: int = 0  # orders of ours open or in flight after this sync
    virtual: int = 0  # size of the desired set


@dataclass
class SyncStats:
    """Totals over the life of an :class:`OrderSync` (for diagnostics)."""

    syncs: int = 0
    submitted: int = 0
    canceled: int = 0
    deferred: int = 0
    rearmed: int = 0  # post-only orders expired/rejected for crossing, sent again later
    rejected: int = 0  # orders refused for another reason (margin, risk check)
    adopted: int = 0
    fills: int = 0


class Venue(Protocol):  # pragma: no cover - a typing aid
    instrument: Instrument
    now_ms: int
    price: float

    def submit(self, order: Order) -> Any: ...

    def cancel(self, client_id: str) -> None: ...


class BrokerVenue:
    """Adapts a :class:`~btc_quant.core.broker.Broker` to what :class:`OrderSync` needs."""

    def __init__(self, broker) -> None:
        self.broker = broker
        self.instrument = broker.instrument

    @property
    def open_orders(self) -> list[Order]:
        return self.broker.open_orders()

    @property
    def now_ms(self) -> int:
        return self.broker.now_ms

    @property
    def price(self) -> float:
        return self.broker.last_price

    def submit(self, order: Order) -> None:
        self.broker.submit(order)

    def cancel(self, client_id: str) -> None:
        self.broker.cancel(client_id)


def _open_orders(venue) -> list[Order]:
    orders = venue.open_orders
    return orders() if callable(orders) else orders


# --- the diff, compiled: OrderSync.sync and maker_vol's compiled backtest both call sync_plan -----------
# An open order is a row of OPEN: the target its key names (-1: none), side (+1 buy, -1 sell), price
# (0: a market order), quantity, the quantity still open, post-only, reduce-only (1/0), position
# side (0 BOTH, 1 LONG, 2 SHORT) and its age (smaller = older: the order the venue got first). A
# target (an order that should be live) is a row of TARGETS: side, price, quantity, post-only,
# reduce-only, position side, and its rank among targets at the same distance from the price
# (OrderSync: its key's place in sorted order).
OP_TARGET, OP_SIDE, OP_PRICE, OP_QTY, OP_REM, OP_PO, OP_RO, OP_PSIDE, OP_AGE = range(9)
NOP = 9
TG_SIDE, TG_PRICE, TG_QTY, TG_PO, TG_RO, TG_PSIDE, TG_TIE = range(7)
NTG = 7


# inline="always": compiled into the kernel's wake-up rather than called (measured: 3-5 % of the
# both-sided backtest's CPU otherwise, bench/RESULTS.md); called from Python it compiles as usual
@njit(cache=True, nogil=True, inline="always")
def sync_plan(price, OPEN, n_open, TARGETS, n_target, KEEPER, CANCEL, CDIST, CAGE, PLACE):  # pragma: no cover - compiled
    """OrderSync's diff: which open orders stay, which are canceled and which targets are placed.

    An open order stays when it matches the target its key names: same side, price, post-only,
    reduce-only and position side, and the same quantity (or its open rest equals the target's, so
    a partly filled order is not replaced); of two that match one target the older stays. Every other open order is canceled,
    nearest ``price`` first, the older first on a tie. Targets no order stays for are placed,
    nearest ``price`` first, then by their tie rank, then in their order.

    Writes KEEPER[t] (the row of OPEN kept for target t, -1: none), CANCEL[:ncancel] (rows of OPEN)
    and PLACE[:nplace] (targets); CDIST and CAGE are scratch (``n_open`` long). Returns
    ``(nkeep, ncancel, nplace)``."""
    for t in range(n_target):
        KEEPER[t] = -1
    nkeep = 0
    ncancel = 0
    for i in range(n_open):
        o = i
        age = OPEN[i, OP_AGE]
        t = int(OPEN[i, OP_TARGET])
        if t >= 0:
            want_qty = TARGETS[t, TG_QTY]
            if (
                OPEN[i, OP_SIDE] == TARGETS[t, TG_SIDE]
                and OPEN[i, OP_PRICE] == TARGETS[t, TG_PRICE]
                and OPEN[i, OP_PO] == TARGETS[t, TG_PO]
                and OPEN[i, OP_RO] == TARGETS[t, TG_RO]
                and OPEN[i, OP_PSIDE] == TARGETS[t, TG_PSIDE]
                and (OPEN[i, OP_QTY] == want_qty or abs(OPEN[i, OP_REM] - want_qty) < 1e-12)
            ):
                kept = KEEPER[t]
                if kept < 0:
                    KEEPER[t] = i
                    nkeep += 1
                    continue
                if OPEN[kept, OP_AGE] > age:  # two orders match the target: the older one stays
                    KEEPER[t] = i
                    o = kept
                    age = OPEN[kept, OP_AGE]
        p = OPEN[o, OP_PRICE]
        dist = abs(p - price) if p > 0 else 0.0
        x = ncancel  # insert: nearest the price first, the older first on a tie
        while x > 0 and (CDIST[x - 1] > dist or (CDIST[x - 1] == dist and CAGE[x - 1] > age)):
            CDIST[x] = CDIST[x - 1]
            CAGE[x] = CAGE[x - 1]
            CANCEL[x] = CANCEL[x - 1]
            x -= 1
        CDIST[x] = dist
        CAGE[x] = age
        CANCEL[x] = o
        ncancel += 1
    nplace = 0
    for t in range(n_target):
        if KEEPER[t] >= 0:
            continue
        dist = abs(TARGETS[t, TG_PRICE] - price)
        tie = TARGETS[t, TG_TIE]
        x = nplace  # insert after the equal ones: nearest first, then the tie rank, then the order
        while x > 0:
            w = PLACE[x - 1]
            dw = abs(TARGETS[w, TG_PRICE] - price)
            if dw > dist or (dw == dist and TARGETS[w, TG_TIE] > tie):
                PLACE[x] = w
                x -= 1
            else:
                break
        PLACE[x] = t
        nplace += 1
    return nkeep, ncancel, nplace


@dataclass
class _Live:
    """One order of ours that is open or in flight; ``age`` orders them by when we learnt of them."""

    order: Order
    key: str
    age: float
    canceling: bool = False
    row_of: Order | None = None  # the order ``row`` was made from
    row: tuple = ()  # its row of sync_plan's OPEN (the target column is filled in per sync)


class OrderSync:
    """Keeps the broker's open orders equal to the nearest part of a desired set (see module doc)."""

    def __init__(
        self,
        strategy_id: str,
        *,
        max_live_orders: int = 20,
        max_requests: int | None = None,
        interval_ms: int = 1_000,
    ) -> None:
        if not _STRATEGY_ID.match(strategy_id):
            raise OrderError(f"strategy id {strategy_id!r} must be 1-12 of [A-Za-z0-9_-] (it prefixes client order ids)")
        if max_live_orders < 1:
            raise OrderError(f"max_live_orders must be >= 1, got {max_live_orders}")
        if max_requests is not None and max_requests < 1:
            raise OrderError(f"max_requests must be >= 1 or None, got {max_requests}")
        self.strategy_id = strategy_id
        self.prefix = strategy_id + ":"
        self.max_live_orders = max_live_orders
        self.max_requests = max_requests
        self.interval_ms = interval_ms
        self.desired: dict[str, VirtualOrder] = {}
        self.stats = SyncStats()
        self._live: dict[str, _Live] = {}  # client id -> our open or in-flight order
        self._generation: int | None = None
        self._requests: deque[int] = deque()  # send times within the current budget window
        self._adopted = False
        self._parsed: dict[str, tuple[str, int] | None] = {}
        self._rounded: dict[int, tuple[VirtualOrder, Target, tuple]] = {}  # desired orders come back each sync: round once
        self._ages = 0  # _Live.age of the last one made

    # --- the desired set ---------------------------------------------------------------------
    def set_desired(self, orders: Iterable[VirtualOrder]) -> None:
        """Replace the desired set."""
        desired: dict[str, VirtualOrder] = {}
        for vo in orders:
            if vo.key in desired:
                raise OrderError(f"virtual order key {vo.key!r} appears twice in the desired set")
            desired[vo.key] = vo
        self.desired = desired

    def want(self, order: VirtualOrder) -> None:
        """Add or replace the desired order under ``order.key``."""
        self.desired[order.key] = order

    def drop(self, key: str) -> None:
        """Remove the desired order under ``key`` (its live order is canceled at the next sync)."""
        self.desired.pop(key, None)

    def cancel_now(self, venue, key: str) -> int:
        """Cancel the live order under ``key`` at once instead of at the next sync: an order whose
        reason to exist just ended (the take-profit of a lot that is being closed at market, which
        would otherwise close it a second time if the price reached it before the next sync).
        Counted as a sync's cancel (``stats.canceled``, the request budget). Returns how many were sent."""
        sent = 0
        for cid, live in list(self._live.items()):
            if live.key == key and not live.canceling:
                live.canceling = True
                venue.cancel(cid)
                self._spend(int(venue.now_ms))
                self.stats.canceled += 1
                sent += 1
        return sent

    # --- ids -----------------------------------------------------------------------------------
    def owns(self, client_id: str) -> bool:
        """True when ``client_id`` carries this strategy's prefix."""
        return client_id.startswith(self.prefix)

    def parse(self, client_id: str) -> tuple[str, int] | None:
        """``(key, generation)`` of one of our client ids, None for anyone else's."""
        cached = self._parsed.get(client_id, False)
        if cached is not False:
            return cast("tuple[str, int] | None", cached)
        if len(self._parsed) > 100_000:
            self._parsed.clear()
        self._parsed[client_id] = parsed = self._parse(client_id)
        return parsed

    def _parse(self, client_id: str) -> tuple[str, int] | None:
        if not self.owns(client_id):
            return None
        key, dot, gen = client_id[len(self.prefix) :].rpartition(".")
        if not dot or not _KEY.match(key):
            return None
        try:
            return key, int(gen, 36)
        except ValueError:
            return None

    def _next_id(self, key: str) -> str:
        assert self._generation is not None
        self._generation += 1
        client_id = f"{self.prefix}{key}.{base36(self._generation)}"
        if len(client_id) > _MAX_ID:
            raise OrderError(f"client id {client_id!r} is longer than {_MAX_ID}: shorten the strategy id or the key")
        return client_id

    # --- events --------------------------------------------------------------------------------
    def on_order(self, order: Order) -> None:
        """Forward every order event of the strategy here."""
        if not self.owns(order.client_id):
            return
        if order.is_open:
            live = self._live.get(order.client_id)
            if live is not None:
                live.order = order
            return
        gone = self._live.pop(order.client_id, None)
        if gone is None:
            return
        if order.status is OrderStatus.EXPIRED and order.post_only:
            self.stats.rearmed += 1  # still desired: the next sync sends it again under a new id
        elif order.status in (OrderStatus.EXPIRED, OrderStatus.REJECTED):
            self.stats.rejected += 1

    def on_fill(self, fill: Fill, order: Order | None = None) -> None:
        """Forward every fill of the strategy here (with the order's state after it, when known)."""
        if not self.owns(fill.client_id):
            return
        self.stats.fills += 1
        if order is not None and order.is_open:
            live = self._live.get(fill.client_id)
            if live is not None:
                live.order = order
            return
        if order is None or not order.is_open:
            self._live.pop(fill.client_id, None)

    # --- sync ----------------------------------------------------------------------------------
    def _budget_left(self, now_ms: int) -> int:
        if self.max_requests is None:
            return 1 << 30
        while self._requests and self._requests[0] <= now_ms - self.interval_ms:
            self._requests.popleft()
        return self.max_requests - len(self._requests)

    def _spend(self, now_ms: int) -> None:
        if self.max_requests is not None:
            self._requests.append(now_ms)

    def targets(self, price: float, instrument: Instrument) -> tuple[dict[str, Target], int]:
        """The orders that should be live now, by key: per side the ``max_live_orders`` desired
        orders nearest ``price``, leaving out post-only ones that would cross it (their number is
        the second value). Prices and quantities are rounded as the order will be."""
        chosen, _, held = self._choose(price, instrument)
        return chosen, held

    def _choose(self, price: float, instrument: Instrument) -> tuple[dict[str, Target], dict[str, tuple], int]:
        """:meth:`targets`, with each target's row of ``sync_plan``'s TARGETS."""
        per_side: dict[Side, list[tuple[float, str, tuple]]] = {Side.BUY: [], Side.SELL: []}
        held = 0
        rounded = self._rounded
        if len(rounded) > 100_000:
            rounded.clear()
        for vo in self.desired.values():
            hit = rounded.get(id(vo))  # by identity: hashing a dataclass each sync costs more than rounding
            if hit is None or hit[0] is not vo:
                # on the instrument: buys down, sells up (once per virtual order: the cache above)
                p = instrument.round_price(vo.price, "down" if vo.side is Side.BUY else "up")
                qty = instrument.round_qty(vo.quantity)
                if qty <= 0:
                    raise OrderError(f"virtual order {vo.key}: quantity {vo.quantity!r} rounds to 0 at lot size {instrument.lot_size}")
                target = Target(vo.side, p, qty, vo.post_only, vo.reduce_only, vo.position_side)
                # tie rank 0: sync hands the targets over in key order
                row = (_SIGN[vo.side], p, qty, float(vo.post_only), float(vo.reduce_only), _PSIDE[vo.position_side], 0.0)
                hit = rounded[id(vo)] = (vo, target, row)
            p = hit[1].price
            if vo.post_only and (p >= price if vo.side is Side.BUY else p <= price):
                held += 1
                continue
            per_side[vo.side].append((abs(p - price), vo.key, hit))
        chosen: dict[str, Target] = {}
        rows: dict[str, tuple] = {}
        for side_rows in per_side.values():
            if len(side_rows) > self.max_live_orders:
                side_rows = heapq.nsmallest(self.max_live_orders, side_rows, key=lambda r: (r[0], r[1]))
            for _, key, (_, target, row) in side_rows:
                chosen[key] = target
                rows[key] = row
        return chosen, rows, held

    def _new_age(self) -> float:
        self._ages += 1
        return float(self._ages)

    @staticmethod
    def _open_row(live: _Live) -> tuple:
        """``live``'s row of ``sync_plan``'s OPEN, target -1 (orders are immutable: made once per
        order object)."""
        order = live.order
        if live.row_of is not order:
            live.row_of = order
            live.row = (
                -1.0,
                _SIGN[order.side],
                order.price or 0.0,
                order.quantity,
                order.remaining_qty,
                float(order.post_only),
                float(order.reduce_only),
                _PSIDE[order.position_side],
                live.age,
            )
        return live.row

    def _refresh(self, venue) -> None:
        """Merge the venue's open orders of ours into the in-flight book (adopting on first sync)."""
        open_now = {o.client_id: o for o in _open_orders(venue) if self.owns(o.client_id)}
        if self._generation is None:
            self._generation = int(venue.now_ms)
        for cid, order in open_now.items():
            parsed = self.parse(cid)
            if parsed is None:
                continue
            key, gen = parsed
            self._generation = max(self._generation, gen)
            live = self._live.get(cid)
            if live is None:
                self._live[cid] = _Live(order, key, self._new_age())
                if not self._adopted:
                    self.stats.adopted += 1
            elif not live.canceling:
                live.order = order
        # An order we know as open (not PENDING) that the venue no longer lists is gone.
        for cid in [c for c, live in self._live.items() if c not in open_now and live.order.status is not OrderStatus.PENDING]:
            del self._live[cid]
        self._adopted = True

    def sync(self, venue) -> SyncReport:
        """Send the cancels and new orders that make the live set match the targets."""
        self.stats.syncs += 1
        instrument, now_ms = venue.instrument, int(venue.now_ms)
        self._refresh(venue)
        price = float(venue.price)
        targets, target_rows, held = self._choose(price, instrument)

        # the diff itself is sync_plan's (compiled, shared with maker_vol's compiled backtest); here
        # only its input as arrays (the live orders aged by when we learnt of them; the targets in
        # key order, so that on equal distance they go by key) and its output back to client ids
        # and keys
        keys = sorted(targets)
        index = {key: float(t) for t, key in enumerate(keys)}  # floats: fromiter takes them fastest
        n_target = len(keys)
        TARGETS = np.fromiter(chain.from_iterable(map(target_rows.__getitem__, keys)), np.float64, n_target * NTG)
        lives = [(cid, live) for cid, live in self._live.items() if not live.canceling]
        n_open = len(lives)
        open_row = self._open_row
        OPEN = np.fromiter(chain.from_iterable(open_row(live) for _, live in lives), np.float64, n_open * NOP).reshape(n_open, NOP)
        OPEN[:, OP_TARGET] = [index.get(live.key, -1.0) for _, live in lives]
        KEEPER, PLACE = np.empty(n_target, dtype=np.int64), np.empty(n_target, dtype=np.int64)
        CANCEL = np.empty(n_open, dtype=np.int64)
        nkeep, ncancel, nplace = sync_plan(
            price,
            OPEN,
            n_open,
            TARGETS.reshape(n_target, NTG),
            n_target,
            KEEPER,
            CANCEL,
            np.empty(n_open),
            np.empty(n_open),
            PLACE,
        )
        cancels = [lives[i][0] for i in CANCEL[:ncancel].tolist()]
        submits = [keys[t] for t in PLACE[:nplace].tolist()]

        budget = self._budget_left(now_ms)
        sent_cancels = sent_submits = 0
        for cid in cancels:
            if budget <= 0:
                break
            self._live[cid].canceling = True
            venue.cancel(cid)
            self._spend(now_ms)
            budget -= 1
            sent_cancels += 1
        # A key whose old order could not be canceled yet gets no new order: never two per key.
        blocked = {live.key for live in self._live.values() if not live.canceling}
        for key in submits:
            if budget <= 0 or key in blocked:
                continue
            template = targets[key]
            order = Order.create(
                instrument,
                self._next_id(key),
                template.side,
                template.quantity,
                template.price,
                post_only=template.post_only,
                reduce_only=template.reduce_only,
                ts_ms=now_ms,
                tag=key,
                check_notional=False,
                position_side=template.position_side,
            )
            self._live[order.client_id] = _Live(order, key, self._new_age())
            self._spend(now_ms)
            budget -= 1
            sent_submits += 1
            result = venue.submit(order)
            if isinstance(result, Order) and not result.is_open:  # refused at once (risk check)
                self.on_order(result)
        deferred = len(cancels) - sent_cancels + len(submits) - sent_submits
        self.stats.submitted += sent_submits
        self.stats.canceled += sent_cancels
        self.stats.deferred += deferred
        return SyncReport(
            submitted=sent_submits,
            canceled=sent_cancels,
            kept=nkeep,
            deferred=deferred,
            held=held,
            live=self.live_count,
            virtual=len(self.desired),
        )

    # --- views ---------------------------------------------------------------------------------
    @property
    def live_count(self) -> int:
        """Orders of ours open or in flight (not being canceled)."""
        return sum(1 for live in self._live.values() if not live.canceling)

    def live_orders(self) -> dict[str, Order]:
        """key -> our live order (open or in flight, not being canceled)."""
        return {live.key: live.order for live in self._live.values() if not live.canceling}

    def key_of(self, client_id: str) -> str | None:
        parsed = self.parse(client_id)
        return None if parsed is None else parsed[0]


__all__ = ["BrokerVenue", "OrderSync", "SyncReport", "SyncStats", "VirtualOrder"]

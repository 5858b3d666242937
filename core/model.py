"""Domain model: bars, instruments, orders, fills, positions and the account.

Times are milliseconds since the epoch, UTC (``ts_ms``). Prices and quantities are float64; they
are rounded to the instrument's tick and lot when an order is made (:meth:`Instrument.round_price`,
:meth:`Instrument.round_qty`), and an :class:`Order` refuses values that are non-positive, not
finite or off the tick/lot grid.

``Bar``, ``Order`` and ``Fill`` are immutable. An order's status changes only through
:meth:`Order.transition`, which follows :data:`ORDER_TRANSITIONS`. A :class:`Position` changes only
through :meth:`Position.apply`, which refuses the same trade id twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import lru_cache

from .errors import OrderError

# A value is "on the grid" when value/step is an integer up to float64 rounding error.
_GRID_TOLERANCE = 1e-9


def _on_grid(value: float, step: float) -> bool:
    k = value / step
    return abs(k - round(k)) <= _GRID_TOLERANCE * max(1.0, abs(k))


@lru_cache(maxsize=64)
def _decimals(step: float) -> int:
    """Digits after the point needed to print ``step`` exactly (0.1 -> 1, 0.001 -> 3, 5 -> 0)."""
    text = f"{step:.12f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def _check_number(what: str, value: float, *, positive: bool = True) -> None:
    kind = type(value)
    if (kind is float or kind is int) and -math.inf < value < math.inf and (value > 0 or not positive):
        return  # the common case, checked cheaply: the hot path of a backtest makes many numbers
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise OrderError(f"{what} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise OrderError(f"{what} must be positive, got {value!r}")


@dataclass(frozen=True, slots=True)
class Bar:
    """One OHLCV candle; ``ts_ms`` is its open time."""

    ts_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0


class MarketKind(str, Enum):
    SPOT = "spot"
    PERPETUAL = "perpetual"


@dataclass(frozen=True, slots=True)
class MarginBracket:
    """One maintenance-margin tier of a futures symbol.

    Applies to positions with ``notional_floor <= notional < notional_cap``. ``maintenance_amount``
    is Binance's ``cum``: the amount that makes the maintenance margin continuous across tiers,
    ``maintenance margin = notional * maintenance_rate - maintenance_amount``.
    """

    notional_floor: float
    notional_cap: float
    max_leverage: float
    maintenance_rate: float
    maintenance_amount: float


@dataclass(frozen=True, slots=True)
class Instrument:
    """A tradable market and its exchange filters and fees."""

    exchange: str
    symbol: str
    kind: MarketKind = MarketKind.SPOT
    tick_size: float = 0.01
    lot_size: float = 0.00001
    min_notional: float = 0.0
    maker_fee: float = 0.0
    taker_fee: float = 0.0
    margin_brackets: tuple[MarginBracket, ...] = ()

    def __post_init__(self) -> None:
        for name in ("tick_size", "lot_size"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise OrderError(f"instrument {self.symbol}: {name} must be positive, got {value!r}")
        for name in ("min_notional", "maker_fee", "taker_fee"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise OrderError(f"instrument {self.symbol}: {name} must be finite, got {value!r}")
        if self.min_notional < 0:
            raise OrderError(f"instrument {self.symbol}: min_notional must be >= 0")
        floors = [b.notional_floor for b in self.margin_brackets]
        if floors != sorted(floors):
            raise OrderError(f"instrument {self.symbol}: margin brackets must be sorted by notional_floor")

    @property
    def is_perpetual(self) -> bool:
        return self.kind is MarketKind.PERPETUAL

    @property
    def price_decimals(self) -> int:
        return _decimals(self.tick_size)

    @property
    def qty_decimals(self) -> int:
        return _decimals(self.lot_size)

    def round_price(self, price: float, direction: str = "nearest") -> float:
        """Round to the tick: ``nearest``, ``down`` (for buys that must not cross) or ``up``."""
        _check_number("price", price)
        k = price / self.tick_size
        if direction == "down":
            steps = math.floor(k + 1e-9)
        elif direction == "up":
            steps = math.ceil(k - 1e-9)
        elif direction == "nearest":
            steps = round(k)
        else:
            raise KeyError(direction)
        return round(steps * self.tick_size, self.price_decimals)

    def round_qty(self, qty: float) -> float:
        """Round a quantity down to the lot size (never buy more than asked)."""
        _check_number("quantity", qty, positive=False)
        steps = math.floor(qty / self.lot_size + 1e-9)
        return round(steps * self.lot_size, self.qty_decimals)

    def bracket_for(self, notional: float) -> MarginBracket:
        """The maintenance-margin bracket of a position of this absolute notional."""
        if not self.margin_brackets:
            raise OrderError(f"instrument {self.symbol} has no margin brackets (spot markets have none)")
        notional = abs(notional)
        for bracket in self.margin_brackets:
            if notional < bracket.notional_cap:
                return bracket
        return self.margin_brackets[-1]


class Side(str, Enum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class PositionSide(str, Enum):
    """Which position an order trades (Binance ``positionSide``). ``BOTH`` in one-way mode (the
    default: one net position per symbol); ``LONG`` / ``SHORT`` in hedge mode (Binance
    ``dualSidePosition=true``), where a BUY LONG opens and a SELL LONG closes the long position,
    a SELL SHORT opens and a BUY SHORT closes the short one."""

    BOTH = "BOTH"
    LONG = "LONG"
    SHORT = "SHORT"

    def closes(self, side: Side) -> bool:
        """Does an order of ``side`` on this position side only close (SELL LONG, BUY SHORT)?"""
        return (self is PositionSide.LONG and side is Side.SELL) or (self is PositionSide.SHORT and side is Side.BUY)


class OrderType(str, Enum):
    LIMIT = "limit"
    MARKET = "market"


class OrderStatus(str, Enum):
    PENDING = "pending"  # created, not yet acknowledged by the broker
    NEW = "new"  # resting on the book
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"  # refused by a risk check, the broker or the exchange
    EXPIRED = "expired"  # e.g. a post-only order that would have crossed (Binance GTX)

    @property
    def is_open(self) -> bool:
        return self in (OrderStatus.PENDING, OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED)


_S = OrderStatus
#: Which status may follow which. Terminal statuses have no successors.
ORDER_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    _S.PENDING: frozenset({_S.NEW, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELED, _S.REJECTED, _S.EXPIRED}),
    _S.NEW: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELED, _S.EXPIRED}),
    _S.PARTIALLY_FILLED: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELED, _S.EXPIRED}),
    _S.FILLED: frozenset(),
    _S.CANCELED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.EXPIRED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Order:
    """An order as the strategy, the risk checks and the broker see it.

    ``client_id`` is chosen by btc-quant (deterministic, so a restarted bot recognises its own
    orders); ``exchange_id`` is the broker's. ``price`` is None for market orders.
    """

    client_id: str
    symbol: str
    side: Side
    type: OrderType
    quantity: float
    price: float | None = None
    post_only: bool = False
    reduce_only: bool = False
    status: OrderStatus = OrderStatus.PENDING
    filled_qty: float = 0.0
    avg_fill_price: float = 0.0
    created_ms: int = 0
    updated_ms: int = 0
    exchange_id: str | None = None
    reason: str | None = None  # why it was rejected, expired or canceled
    tag: str | None = None  # free text for the strategy (e.g. "tp" or a grid level)
    position_side: PositionSide = PositionSide.BOTH  # LONG/SHORT only when the account is in hedge mode

    def __post_init__(self) -> None:
        if not self.client_id or len(self.client_id) > 36:
            raise OrderError(f"order client_id must be 1-36 characters, got {self.client_id!r}")
        _check_number(f"order {self.client_id}: quantity", self.quantity)
        if self.type is OrderType.LIMIT:
            if self.price is None:
                raise OrderError(f"order {self.client_id}: a limit order needs a price")
            _check_number(f"order {self.client_id}: price", self.price)
        elif self.price is not None:
            raise OrderError(f"order {self.client_id}: a market order takes no price")
        if self.post_only and self.type is not OrderType.LIMIT:
            raise OrderError(f"order {self.client_id}: post_only applies to limit orders only")

    @classmethod
    def create(
        cls,
        instrument: Instrument,
        client_id: str,
        side: Side | str,
        quantity: float,
        price: float | None = None,
        *,
        post_only: bool = False,
        reduce_only: bool = False,
        ts_ms: int = 0,
        tag: str | None = None,
        check_notional: bool = True,
        position_side: PositionSide | str = PositionSide.BOTH,
    ) -> Order:
        """Make an order that satisfies the instrument's filters, or raise :class:`OrderError`.

        Values must already be on the tick and lot grid (use ``instrument.round_price`` /
        ``round_qty``); an off-grid value is an error rather than a silent change.
        """
        side = Side(side)
        position_side = PositionSide(position_side)
        if not client_id or len(client_id) > 36:
            raise OrderError(f"order client_id must be 1-36 characters, got {client_id!r}")
        if post_only and price is None:
            raise OrderError(f"order {client_id}: post_only applies to limit orders only")
        _check_number(f"order {client_id}: quantity", quantity)
        if not _on_grid(quantity, instrument.lot_size):
            raise OrderError(f"order {client_id}: quantity {quantity!r} is not a multiple of the lot size {instrument.lot_size}")
        if price is not None:
            _check_number(f"order {client_id}: price", price)
            if not _on_grid(price, instrument.tick_size):
                raise OrderError(f"order {client_id}: price {price!r} is not a multiple of the tick size {instrument.tick_size}")
            if check_notional and not reduce_only and not position_side.closes(side) and price * quantity < instrument.min_notional:
                raise OrderError(
                    f"order {client_id}: notional {price * quantity:.2f} is below the minimum "
                    f"{instrument.min_notional:g} of {instrument.symbol}"
                )
        if cls is not Order:
            return cls(
                client_id=client_id,
                symbol=instrument.symbol,
                side=side,
                type=OrderType.MARKET if price is None else OrderType.LIMIT,
                quantity=quantity,
                price=price,
                post_only=post_only,
                reduce_only=reduce_only,
                created_ms=ts_ms,
                updated_ms=ts_ms,
                tag=tag,
                position_side=position_side,
            )
        # Everything __post_init__ checks was checked above: build it without checking twice.
        return _order(
            client_id,
            instrument.symbol,
            side,
            OrderType.MARKET if price is None else OrderType.LIMIT,
            quantity,
            price,
            post_only,
            reduce_only,
            OrderStatus.PENDING,
            0.0,
            0.0,
            ts_ms,
            ts_ms,
            None,
            None,
            tag,
            position_side,
        )

    @property
    def closes_only(self) -> bool:
        """Can this order only reduce a position: reduce-only, or in hedge mode a SELL LONG / BUY SHORT?"""
        return self.reduce_only or self.position_side.closes(self.side)

    @property
    def remaining_qty(self) -> float:
        return max(self.quantity - self.filled_qty, 0.0)

    @property
    def is_open(self) -> bool:
        return self.status.is_open

    def transition(self, status: OrderStatus, **changes) -> Order:
        """A copy in ``status``; raises :class:`OrderError` if the table does not allow it.

        Changing only the fields a status change carries (:data:`_STATE_FIELDS`) copies the order
        without validating it again: what was validated when it was made has not changed. Any
        other change goes through ``dataclasses.replace`` and is validated."""
        if status not in ORDER_TRANSITIONS[self.status]:
            raise OrderError(f"order {self.client_id}: cannot go from {self.status.value} to {status.value}")
        if type(self) is not Order or not _STATE_FIELDS.issuperset(changes):
            return replace(self, status=status, **changes)
        get = changes.get
        return _order(
            self.client_id,
            self.symbol,
            self.side,
            self.type,
            self.quantity,
            self.price,
            self.post_only,
            self.reduce_only,
            status,
            get("filled_qty", self.filled_qty),
            get("avg_fill_price", self.avg_fill_price),
            self.created_ms,
            get("updated_ms", self.updated_ms),
            get("exchange_id", self.exchange_id),
            get("reason", self.reason),
            self.tag,
            self.position_side,
        )


#: What a status change may carry besides the status; none of them is validated by ``Order``.
_STATE_FIELDS = frozenset({"filled_qty", "avg_fill_price", "updated_ms", "exchange_id", "reason"})
_set = object.__setattr__  # Order is frozen: it is filled in as the dataclass's own __init__ does


def _order(
    client_id,
    symbol,
    side,
    type,
    quantity,
    price,
    post_only,
    reduce_only,
    status,
    filled_qty,
    avg_fill_price,
    created_ms,
    updated_ms,
    exchange_id,
    reason,
    tag,
    position_side=PositionSide.BOTH,
) -> Order:
    """An :class:`Order` from values already validated (by ``Order.create`` or the order it copies)."""
    order = object.__new__(Order)
    _set(order, "client_id", client_id)
    _set(order, "symbol", symbol)
    _set(order, "side", side)
    _set(order, "type", type)
    _set(order, "quantity", quantity)
    _set(order, "price", price)
    _set(order, "post_only", post_only)
    _set(order, "reduce_only", reduce_only)
    _set(order, "status", status)
    _set(order, "filled_qty", filled_qty)
    _set(order, "avg_fill_price", avg_fill_price)
    _set(order, "created_ms", created_ms)
    _set(order, "updated_ms", updated_ms)
    _set(order, "exchange_id", exchange_id)
    _set(order, "reason", reason)
    _set(order, "tag", tag)
    _set(order, "position_side", position_side)
    return order


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution of (part of) an order. ``fee`` is in the quote currency, positive = paid."""

    trade_id: str
    client_id: str
    symbol: str
    side: Side
    price: float
    quantity: float
    fee: float
    ts_ms: int
    is_maker: bool = False
    is_liquidation: bool = False
    tag: str | None = None
    position_side: PositionSide = PositionSide.BOTH  # the position it traded (hedge mode: LONG/SHORT)

    def __post_init__(self) -> None:
        _check_number(f"fill {self.trade_id}: price", self.price)
        _check_number(f"fill {self.trade_id}: quantity", self.quantity)
        _check_number(f"fill {self.trade_id}: fee", self.fee, positive=False)

    @property
    def signed_qty(self) -> float:
        return self.side.sign * self.quantity

    @property
    def notional(self) -> float:
        return self.price * self.quantity


@dataclass(slots=True)
class Position:
    """Net position in one symbol (one-way mode): signed ``quantity``, average ``entry_price``.
    In hedge mode an account holds two per symbol, ``position_side`` LONG (quantity >= 0) and
    SHORT (quantity <= 0), each with its own entry (see :meth:`Account.position`).

    Realised PnL follows the linear-contract rule used by Binance USD-M and by spot accounting:
    closing ``q`` at ``p`` from entry ``e`` realises ``q * (p - e)`` for a long and ``q * (e - p)``
    for a short; fees and funding are kept apart.
    """

    symbol: str
    quantity: float = 0.0
    entry_price: float = 0.0
    realized_pnl: float = 0.0
    fees: float = 0.0
    funding: float = 0.0
    _trade_ids: set[str] = field(default_factory=set, repr=False)
    position_side: PositionSide = PositionSide.BOTH

    @property
    def is_flat(self) -> bool:
        return abs(self.quantity) < 1e-12

    @property
    def side(self) -> Side | None:
        if self.is_flat:
            return None
        return Side.BUY if self.quantity > 0 else Side.SELL

    def unrealized_pnl(self, mark_price: float) -> float:
        return self.quantity * (mark_price - self.entry_price)

    def notional(self, mark_price: float) -> float:
        return abs(self.quantity) * mark_price

    def apply(self, fill: Fill) -> float:
        """Apply a fill; returns the PnL it realised (before fees). Refuses a repeated trade id."""
        if fill.symbol != self.symbol:
            raise OrderError(f"fill {fill.trade_id} is for {fill.symbol}, position is {self.symbol}")
        if fill.trade_id in self._trade_ids:
            raise OrderError(f"fill {fill.trade_id} was already applied to the {self.symbol} position")
        self._trade_ids.add(fill.trade_id)
        qty = fill.signed_qty
        realized = 0.0
        if self.is_flat or (self.quantity > 0) == (qty > 0):
            new_qty = self.quantity + qty
            self.entry_price = (self.entry_price * abs(self.quantity) + fill.price * abs(qty)) / abs(new_qty)
            self.quantity = new_qty
        else:
            closing = min(abs(qty), abs(self.quantity))
            direction = 1.0 if self.quantity > 0 else -1.0
            realized = closing * (fill.price - self.entry_price) * direction
            remainder = abs(qty) - closing
            self.quantity += qty
            if abs(self.quantity) < 1e-12:
                self.quantity = 0.0
                self.entry_price = 0.0
            elif remainder > 0:  # flipped through zero: the rest opens at the fill price
                self.entry_price = fill.price
        self.realized_pnl += realized
        self.fees += fill.fee
        return realized


@dataclass(slots=True)
class Account:
    """Wallet balance and positions, in the quote currency (USDT).

    ``wallet_balance`` moves with realised PnL, fees and funding, as on Binance USD-M; equity is
    wallet balance plus unrealised PnL. For spot the same identity holds with the asset valued at
    the mark price.
    """

    wallet_balance: float
    #: by :func:`position_key`: the symbol for one-way positions, ``"SYMBOL|LONG"`` / ``"SYMBOL|SHORT"`` in hedge mode
    positions: dict[str, Position] = field(default_factory=dict)

    def position(self, symbol: str, position_side: PositionSide | str = PositionSide.BOTH) -> Position:
        """The one-way position of ``symbol`` (``BOTH``), or in hedge mode its LONG or SHORT one."""
        key = position_key(symbol, position_side)
        if key not in self.positions:
            self.positions[key] = Position(symbol, position_side=PositionSide(position_side))
        return self.positions[key]

    def apply(self, fill: Fill) -> float:
        realized = self.position(fill.symbol, fill.position_side).apply(fill)
        self.wallet_balance += realized - fill.fee
        return realized

    def apply_funding(self, symbol: str, amount: float) -> None:
        """Book a funding payment: positive ``amount`` is paid by the account."""
        self.position(symbol).funding += amount
        self.wallet_balance -= amount

    def equity(self, marks: dict[str, float]) -> float:
        return self.wallet_balance + sum(p.unrealized_pnl(marks[p.symbol]) for p in self.positions.values() if not p.is_flat)

    def open_positions(self) -> Iterable[Position]:
        return (p for p in self.positions.values() if not p.is_flat)


def position_key(symbol: str, position_side: PositionSide | str = PositionSide.BOTH) -> str:
    """Key of a position in :attr:`Account.positions`: the symbol (one-way), else ``SYMBOL|SIDE``."""
    side = PositionSide(position_side)
    return symbol if side is PositionSide.BOTH else f"{symbol}|{side.value}"

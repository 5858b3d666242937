"""The local exchange's USD-M trading book: accounts, orders, matching, positions, margin.

No web code here (the routes are in :mod:`.usdm_trading`); a test may call these methods directly
or read the exchange's truth through :meth:`Trading.truth`.

What it models, Binance USD-M style, for the perpetual markets of the :class:`~.market.ExchangeState`:

* **Accounts** keyed by API key (each with its HMAC secret) holding a USDT wallet, per-symbol
  leverage (default 20) and margin type (``CROSSED`` default, or ``ISOLATED``), orders and trades;
  one-way positions (``positionSide`` ``BOTH``, the default) or, after ``POST
  /fapi/v1/positionSide/dual`` ``dualSidePosition=true``, hedge mode: a LONG and a SHORT position
  per symbol, orders naming ``positionSide`` LONG/SHORT (else -4061), BUY LONG / SELL SHORT open,
  SELL LONG / BUY SHORT close (never more than the side holds: -2022), ``reduceOnly`` refused
  (-1106); the mode changes only without open orders (-4067) or positions (-4068), and asking for
  the mode already set is -4059. In hedge mode cross margin, one liquidation price for both legs
  (Binance's hedge-mode formula, :func:`btc_quant.plugins.brokers.sim.venue.hedged_liquidation_price`),
  and a liquidation closes both.
* **Orders**: ``LIMIT`` with ``timeInForce`` ``GTC``, ``GTX`` (post-only) or ``IOC``, and ``MARKET``;
  ``reduceOnly``; ``newClientOrderId`` unique among the account's open orders (else -4116). Filters:
  tick size (-4014), step size (-1111), minimum notional (-4164, not for reduce-only), margin
  (-2019). A post-only order that would take is rejected with -5022 and not recorded, as Binance
  does since 2023. A reduce-only order that would not reduce is rejected with -2022.
* **Matching** against the replayed real price path of :class:`~.market.Market` (open -> nearer
  extreme -> other extreme -> close inside each recorded minute, jumps between bars, no trading in
  minutes without a recorded bar). There is no order book: the last price of the path stands for
  both sides. A resting limit order fills *only when the price trades through it* (a buy when the
  path goes strictly below its price), at its own price, as maker; an order that crosses the last
  price when it arrives (GTC/IOC limit, market) fills at once at the last price, as taker. Fill
  times are the exact moments the path crosses. Partial fills happen only when injected
  (:meth:`Trading.partial_fill` / the fault plan).
* **Money** (formulas from Binance's USD-M documentation, cited where used): fees on each trade's
  notional (maker 0.02%, taker 0.05%: binance.com/en/fee/futureFee), realised PnL on the reduced
  quantity, average entry price, initial margin ``notional / leverage``, maintenance margin from
  the BTCUSDT notional brackets, funding at each recorded funding time
  (``position notional x rate``, paid by longs when the rate is positive), and a liquidation check
  on the path against the liquidation price. The mark price is the last price of the replayed
  path (the recorded data has no separate mark/index price).

Everything the exchange sends its users (order and account updates) is appended to
``Account.events`` in order; the user-data websocket (:mod:`.userdata`) delivers them.

Not modelled (answered with Binance's error where a client could ask for it): STOP/TAKE_PROFIT/TRAILING orders, FOK/GTD,
``priceMatch``, ``closePosition`` and ``batchOrders`` (no route), an order book (depth, queue
position, slippage beyond the last price, self-trade prevention), separate mark/index prices,
request-weight accounting (429/418 come only from the fault plan), multi-assets margin, ADL and
partial liquidation of large positions (a liquidation closes the whole position), spot trading.
Orders can be amended (``PUT /fapi/v1/order``, :meth:`Trading.modify`).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .market import MINUTE_MS, BinanceError, ExchangeState, Market

#: Binance USD-M VIP 0 fees (binance.com/en/fee/futureFee).
MAKER_FEE = 0.0002
TAKER_FEE = 0.0005
#: Default test credentials (never real ones).
TEST_API_KEY = "local-test-key"
TEST_SECRET = "local-test-secret"
DEFAULT_LEVERAGE = 20
CLIENT_ID_RE = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")

#: BTCUSDT notional brackets: (floor, cap, max leverage, maintenance margin rate). The first two
#: tiers are Binance's answer to ``GET /fapi/v1/leverageBracket`` as recorded in public client
#: code; the higher tiers follow Binance's published 2023 table. ``cum`` (maintenance amount) is
#: derived the way Binance defines it, continuity of ``notional * rate - cum`` at each floor.
BTCUSDT_BRACKETS = (
    (0.0, 50_000.0, 125, 0.004),
    (50_000.0, 250_000.0, 100, 0.005),
    (250_000.0, 3_000_000.0, 50, 0.01),
    (3_000_000.0, 15_000_000.0, 20, 0.025),
    (15_000_000.0, 30_000_000.0, 10, 0.05),
    (30_000_000.0, 80_000_000.0, 5, 0.10),
)


def _with_cum(rows) -> list[tuple[float, float, int, float, float]]:
    out, cum, prev_rate = [], 0.0, None
    for floor, cap, lev, rate in rows:
        if prev_rate is not None:
            cum += floor * (rate - prev_rate)
        out.append((floor, cap, lev, rate, cum))
        prev_rate = rate
    return out


BRACKETS = _with_cum(BTCUSDT_BRACKETS)


def bracket_for(notional: float) -> tuple[float, float, int, float, float]:
    for row in BRACKETS:
        if notional < row[1]:
            return row
    return BRACKETS[-1]


def max_notional(leverage: int) -> float:
    """The largest position notional a leverage allows (the cap of the last bracket that permits it)."""
    allowed = [row for row in BRACKETS if row[2] >= leverage]
    return allowed[-1][1] if allowed else 0.0


def fmt(value: float, decimals: int = 8) -> str:
    """Binance-style decimal string: fixed decimals, trailing zeros cut (``"0.001"``, ``"42000.1"``)."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass
class Order:
    order_id: int
    client_id: str
    symbol: str
    side: str  # BUY / SELL
    type: str  # LIMIT / MARKET
    time_in_force: str  # GTC / GTX / IOC
    qty: float
    price: float  # 0 for MARKET
    reduce_only: bool
    time: int
    status: str = "NEW"
    executed: float = 0.0
    cum_quote: float = 0.0
    update_time: int = 0
    orig_type: str = ""
    position_side: str = "BOTH"  # LONG / SHORT in hedge mode

    @property
    def sign(self) -> int:
        return 1 if self.side == "BUY" else -1

    @property
    def remaining(self) -> float:
        return max(self.qty - self.executed, 0.0)

    @property
    def open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")

    @property
    def avg_price(self) -> float:
        return self.cum_quote / self.executed if self.executed > 0 else 0.0


@dataclass
class Trade:
    trade_id: int
    order_id: int
    symbol: str
    side: str
    price: float
    qty: float
    commission: float
    realized_pnl: float
    maker: bool
    time: int
    position_side: str = "BOTH"

    @property
    def quote_qty(self) -> float:
        return self.price * self.qty


@dataclass
class Position:
    amt: float = 0.0  # signed, in BTC
    entry: float = 0.0
    isolated_wallet: float = 0.0
    update_time: int = 0


@dataclass
class Account:
    api_key: str
    secret: str = field(repr=False)  # never in reprs or logs
    wallet: float = 0.0  # total USDT wallet balance, isolated margins included
    leverage: dict[str, int] = field(default_factory=dict)
    margin_type: dict[str, str] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    trades: list[Trade] = field(default_factory=list)
    #: (sequence number, event) of every user-data event, in order
    events: list[tuple[int, dict]] = field(default_factory=list)
    #: funding and other income rows (GET /fapi/v1/income)
    income: list[dict] = field(default_factory=list)
    #: the exchange clock when GET /fapi/v1/income last answered (rows booked later were not in it)
    income_read_ms: int | None = None
    update_time: int = 0
    #: hedge mode (Binance ``dualSidePosition``), for every symbol of the account
    dual_side: bool = False

    def position(self, symbol: str, position_side: str = "BOTH") -> Position:
        """The symbol's one-way position (``BOTH``), or in hedge mode its LONG or SHORT one
        (kept under ``SYMBOL|LONG`` / ``SYMBOL|SHORT`` in :attr:`positions`)."""
        return self.positions.setdefault(symbol if position_side == "BOTH" else f"{symbol}|{position_side}", Position())

    def legs(self, symbol: str) -> list[tuple[str, Position]]:
        """(positionSide, position) of the symbol in the account's mode: BOTH, or LONG and SHORT."""
        if self.dual_side:
            return [("LONG", self.position(symbol, "LONG")), ("SHORT", self.position(symbol, "SHORT"))]
        return [("BOTH", self.position(symbol))]

    def holds(self, symbol: str) -> bool:
        """Any position in ``symbol`` (either mode)?"""
        return any(p.amt for key, p in self.positions.items() if symbol_of(key) == symbol)

    def lev(self, symbol: str) -> int:
        return self.leverage.get(symbol, DEFAULT_LEVERAGE)

    def isolated(self, symbol: str) -> bool:
        return self.margin_type.get(symbol, "CROSSED") == "ISOLATED"

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        return [o for o in self.orders.values() if o.open and (symbol is None or o.symbol == symbol)]

    def sign(self, payload: str) -> str:
        return hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


class Trading:
    """The trading side of one :class:`ExchangeState` (``state.trading``); thread-safe."""

    def __init__(self, state: ExchangeState, start_ms: int | None = None):
        self.state = state
        self.lock = threading.RLock()
        self.accounts: dict[str, Account] = {}
        self._order_ids = itertools.count(8_000_000_001)
        self._trade_ids = itertools.count(500_000_001)
        self._seq = itertools.count(1)
        #: exchange time up to which the price path has been matched (None: not started)
        self.last_ms: int | None = start_ms
        #: listen key -> api key
        self.listen_keys: dict[str, str] = {}
        #: listen key -> real (monotonic) time it expires unless kept alive (Binance: 60 minutes)
        self.listen_key_deadlines: dict[str, float] = {}
        self.listen_key_ttl_s = 3600.0
        #: orders the fault plan will cancel "by the user": (due exchange ms, api key, order id)
        self.user_cancels: list[tuple[int, str, int]] = []
        #: added to the wall clock the recvWindow check compares ``timestamp`` with (-1021 faults)
        self.clock_skew_ms = 0
        #: api key -> that account's own fault plan (see :mod:`.faults`); others use ``state.faults``
        self.plans: dict = {}
        self._listen_serial = itertools.count(1)
        #: the market family this book trades, and the venue's rules where a dialect's exchange
        #: differs from Binance USD-M (set by e.g. :func:`.dialects.bybit.bybit_state`)
        self.family = "usdm"
        self.maker_fee, self.taker_fee = MAKER_FEE, TAKER_FEE
        self.liquidation_rule = None  # (trading, account, symbol) -> price; None: Binance's below
        #: what a dialect keeps beside the book, by dialect name (e.g. Bybit's cancelled PostOnly orders)
        self.dialect_books: dict[str, object] = {}

    # -- accounts -------------------------------------------------------------------------------

    def add_account(self, api_key: str = TEST_API_KEY, secret: str = TEST_SECRET, usdt: float = 10_000.0) -> Account:
        with self.lock:
            account = Account(api_key, secret, float(usdt), update_time=self.state.clock.now_ms())
            self.accounts[api_key] = account
            return account

    def plan_for(self, api_key: str | None):
        """The fault plan of the account with ``api_key`` (its own, else the exchange's)."""
        return self.plans.get(api_key) or self.state.faults

    def skew_ms(self, api_key: str | None) -> int:
        """Offset of the clock the recvWindow check and ``Date`` use for this account's requests."""
        return self.clock_skew_ms + self.plan_for(api_key).skew_ms

    def account(self, api_key: str | None) -> Account:
        account = self.accounts.get(api_key or "")
        if account is None:
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        return account

    def listen_key_for(self, account: Account) -> str:
        """``POST /fapi/v1/listenKey``: the account's live listen key (kept alive), or a new one."""
        with self.lock:
            key = self.listen_key_of(account)
            if key is None:
                key = hashlib.sha256(f"{account.api_key}:{next(self._listen_serial)}".encode()).hexdigest()
                self.listen_keys[key] = account.api_key
            self.listen_key_deadlines[key] = time.monotonic() + self.listen_key_ttl_s
            return key

    def listen_key_of(self, account: Account) -> str | None:
        """The account's listen key, if one is alive (an expired one is forgotten here)."""
        with self.lock:
            now = time.monotonic()
            for key in [k for k, due in self.listen_key_deadlines.items() if due <= now]:
                self.listen_keys.pop(key, None)
                del self.listen_key_deadlines[key]
            return next((k for k, owner in self.listen_keys.items() if owner == account.api_key), None)

    def keep_alive(self, account: Account) -> bool:
        """``PUT /fapi/v1/listenKey``: extend the live key by the TTL; False when there is none."""
        with self.lock:
            key = self.listen_key_of(account)
            if key is not None:
                self.listen_key_deadlines[key] = time.monotonic() + self.listen_key_ttl_s
            return key is not None

    def listen_key_alive(self, key: str) -> bool:
        with self.lock:
            owner = self.listen_keys.get(key)
            return owner is not None and self.listen_key_of(self.accounts[owner]) == key

    def close_listen_keys(self, account: Account) -> None:
        with self.lock:
            for key in [k for k, owner in self.listen_keys.items() if owner == account.api_key]:
                del self.listen_keys[key]
                self.listen_key_deadlines.pop(key, None)

    def market(self, symbol: str | None) -> Market:
        return self.state.market(self.family, symbol)

    def price(self, symbol: str, now: int | None = None) -> float:
        market = self.market(symbol)
        price = market.price_at(self.state.clock.now_ms() if now is None else now)
        if price is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return price

    # -- events ---------------------------------------------------------------------------------

    def _emit(self, account: Account, event: dict) -> None:
        account.events.append((next(self._seq), event))

    def _order_event(self, account: Account, order: Order, execution: str, now: int, trade: Trade | None = None) -> None:
        """``ORDER_TRADE_UPDATE`` as Binance sends it on the user-data stream."""
        o = {
            "s": order.symbol,
            "c": order.client_id,
            "S": order.side,
            "o": order.type,
            "f": order.time_in_force,
            "q": fmt(order.qty),
            "p": fmt(order.price),
            "ap": fmt(order.avg_price),
            "sp": "0",
            "x": execution,
            "X": order.status,
            "i": order.order_id,
            "l": fmt(trade.qty if trade else 0.0),
            "z": fmt(order.executed),
            "L": fmt(trade.price if trade else 0.0),
            "n": fmt(trade.commission if trade else 0.0),
            "N": "USDT",
            "T": now,
            "t": trade.trade_id if trade else 0,
            "b": "0",
            "a": "0",
            "m": bool(trade and trade.maker),
            "R": order.reduce_only,
            "wt": "CONTRACT_PRICE",
            "ot": order.orig_type or order.type,
            "ps": order.position_side,
            "cp": False,
            "rp": fmt(trade.realized_pnl if trade else 0.0),
            "pP": False,
            "si": 0,
            "ss": 0,
            "V": "NONE",
            "pm": "NONE",
            "gtd": 0,
        }
        self._emit(account, {"e": "ORDER_TRADE_UPDATE", "E": now, "T": now, "o": o})

    def _account_event(self, account: Account, symbol: str, reason: str, now: int) -> None:
        """``ACCOUNT_UPDATE``: the USDT balance and the symbol's position after a change."""
        mark = self.price(symbol, now)
        cross_wallet = self.cross_wallet(account)
        self._emit(
            account,
            {
                "e": "ACCOUNT_UPDATE",
                "E": now,
                "T": now,
                "a": {
                    "m": reason,
                    "B": [{"a": "USDT", "wb": fmt(account.wallet), "cw": fmt(cross_wallet), "bc": "0"}],
                    "P": [
                        {
                            "s": symbol,
                            "pa": fmt(pos.amt),
                            "ep": fmt(pos.entry),
                            "bep": fmt(pos.entry),
                            "cr": "0",
                            "up": fmt(pos.amt * (mark - pos.entry) if pos.amt else 0.0),
                            "mt": "isolated" if account.isolated(symbol) else "cross",
                            "iw": fmt(pos.isolated_wallet),
                            "ps": ps,
                        }
                        for ps, pos in account.legs(symbol)  # hedge mode: both sides, as Binance sends them
                    ],
                },
            },
        )

    # -- margin ---------------------------------------------------------------------------------

    def cross_wallet(self, account: Account) -> float:
        return account.wallet - sum(p.isolated_wallet for p in account.positions.values())

    def _opening_qty(self, account: Account, order: Order) -> float:
        """The part of ``order`` (remaining) that would open or add to a position."""
        if order.position_side != "BOTH":  # hedge mode: BUY LONG / SELL SHORT open, the others close
            return order.remaining if (order.position_side == "LONG") == (order.sign > 0) else 0.0
        amt = account.position(order.symbol).amt
        closable = abs(amt) if amt * order.sign < 0 else 0.0
        return 0.0 if order.reduce_only else max(order.remaining - closable, 0.0)

    def _order_margin(self, account: Account, order: Order, now: int) -> float:
        price = order.price if order.type == "LIMIT" else self.price(order.symbol, now)
        return self._opening_qty(account, order) * price / account.lev(order.symbol)

    def available(self, account: Account, now: int | None = None) -> float:
        """``availableBalance``: cross wallet + cross unrealised PnL - cross position margin - order margin."""
        now = self.state.clock.now_ms() if now is None else now
        value = self.cross_wallet(account)
        for key, pos in account.positions.items():
            symbol = symbol_of(key)
            if not pos.amt or account.isolated(symbol):
                continue
            mark = self.price(symbol, now)
            value += pos.amt * (mark - pos.entry) - abs(pos.amt) * mark / account.lev(symbol)
        value -= sum(self._order_margin(account, o, now) for o in account.open_orders())
        return value

    def liquidation_price(self, account: Account, symbol: str, position_side: str = "BOTH") -> float:
        """Binance's one-way liquidation price for a single position (USD-M FAQ "How to Calculate
        Liquidation Price of USDⓈ-M Futures Contracts"):
        ``LP = (WB + cum - side*|pos|*EP) / (|pos|*MMR - side*|pos|)`` with ``WB`` the isolated
        wallet (isolated) or the cross wallet balance (cross, one position), ``MMR``/``cum`` of
        the position's notional bracket. 0 when flat. Hedge mode (``position_side`` LONG/SHORT):
        the same FAQ's hedge-mode formula, through the venue core's one implementation
        (:func:`~btc_quant.plugins.brokers.sim.venue.hedged_liquidation_price`): cross margin puts
        both legs in it and gives one price; isolated margin one leg with its isolated wallet."""
        pos = account.position(symbol, position_side)
        if not pos.amt:
            return 0.0
        if position_side != "BOTH":
            return self._hedged_liquidation(account, symbol, position_side)[0]
        if self.liquidation_rule is not None:
            return self.liquidation_rule(self, account, symbol)
        size, side = abs(pos.amt), (1 if pos.amt > 0 else -1)
        _, _, _, mmr, cum = bracket_for(size * pos.entry)
        wb = pos.isolated_wallet if account.isolated(symbol) else self.cross_wallet(account)
        lp = (wb + cum - side * size * pos.entry) / (size * mmr - side * size)
        return max(lp, 0.0)

    def _hedged_liquidation(self, account: Account, symbol: str, position_side: str) -> tuple[float, float]:
        """(price, direction: +1 reached falling, -1 rising) of a hedge-mode leg; (0, 0) when none."""
        from btc_quant.plugins.brokers.sim.venue import hedged_liquidation_price

        long, short = account.position(symbol, "LONG"), account.position(symbol, "SHORT")
        if account.isolated(symbol):
            pos = long if position_side == "LONG" else short
            legs = (pos.amt, pos.entry, 0.0, 0.0) if position_side == "LONG" else (0.0, 0.0, -pos.amt, pos.entry)
            lp, direction = hedged_liquidation_price(pos.isolated_wallet, *legs, _BB)
        else:
            lp, direction = hedged_liquidation_price(self.cross_wallet(account), long.amt, long.entry, -short.amt, short.entry, _BB)
        return (0.0, 0.0) if math.isnan(lp) else (float(lp), float(direction))

    # -- placing and cancelling -----------------------------------------------------------------

    def place(self, api_key: str, params: dict) -> Order:
        """``POST /fapi/v1/order``; raises :class:`BinanceError` the way Binance answers."""
        with self.lock:
            account = self.account(api_key)
            now = self.state.clock.now_ms()
            self.sync(now)
            market = self.market(_required(params, "symbol"))
            side = _required(params, "side").upper()
            if side not in ("BUY", "SELL"):
                raise BinanceError(-1117, "Invalid side.")
            order_type = _required(params, "type").upper()
            if order_type not in ("LIMIT", "MARKET"):
                raise BinanceError(-1116, "Invalid orderType.")
            position_side = str(params.get("positionSide", "BOTH")).upper()
            if position_side not in ("BOTH", "LONG", "SHORT"):
                raise BinanceError(-1130, "Invalid data sent for a parameter: positionSide.")
            if (position_side != "BOTH") != account.dual_side:
                raise BinanceError(-4061, "Order's position side does not match user's setting.")
            if account.dual_side and "reduceOnly" in params:
                raise BinanceError(-1106, "Parameter 'reduceonly' sent when not required.")
            qty = _decimal(params, "quantity", required=True)
            if qty <= 0:
                raise BinanceError(-4003, "Quantity less than or equal to zero.")
            if not _on_step(qty, market.lot_size):
                raise BinanceError(-1111, "Precision is over the maximum defined for this asset.")
            tif = params.get("timeInForce", "GTC").upper()
            price = 0.0
            if order_type == "LIMIT":
                if "timeInForce" not in params:
                    raise BinanceError(-1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.")
                if tif not in ("GTC", "GTX", "IOC"):
                    raise BinanceError(-1115, "Invalid timeInForce.")
                price = _decimal(params, "price", required=True)
                if price <= 0:
                    raise BinanceError(-4001, "Price less than 0.")
                if not _on_step(price, market.tick_size):
                    raise BinanceError(-4014, "Price not increased by tick size.")
            reduce_only = str(params.get("reduceOnly", "false")).lower() == "true"
            client_id = params.get("newClientOrderId") or f"local-{next(self._order_ids)}"
            if not CLIENT_ID_RE.match(client_id):
                raise BinanceError(-4015, "Client order id is not valid.")
            if any(o.client_id == client_id for o in account.open_orders()):
                raise BinanceError(-4116, "ClientOrderId is duplicated.")
            reused = params.get("newClientOrderId") and any(o.client_id == client_id for o in account.orders.values())
            last = self.price(market.symbol_id, now)
            ref_price = price if order_type == "LIMIT" else last
            closes = str(params.get("positionSide", "BOTH")).upper() == ("LONG" if side == "SELL" else "SHORT")
            if not reduce_only and not closes and qty * ref_price < market.min_notional:
                raise BinanceError(
                    -4164, f"Order's notional must be no smaller than {fmt(market.min_notional)} (unless you choose reduce only)."
                )
            pos = account.position(market.symbol_id, position_side)
            sign = 1 if side == "BUY" else -1
            closing = position_side != "BOTH" and (position_side == "LONG") != (sign > 0)  # SELL LONG, BUY SHORT
            if reduce_only and (pos.amt == 0 or pos.amt * sign > 0):
                raise BinanceError(-2022, "ReduceOnly Order is rejected.")
            if closing:  # a close may not exceed what the side holds less the closes already open
                pending = sum(
                    o.remaining for o in account.open_orders(market.symbol_id) if o.position_side == position_side and o.side == side
                )
                if qty + pending > abs(pos.amt) + 1e-12:
                    raise BinanceError(-2022, "ReduceOnly Order is rejected.")
            crosses = order_type == "MARKET" or (price >= last if sign > 0 else price <= last)
            if order_type == "LIMIT" and tif == "GTX" and crosses:
                raise BinanceError(
                    -5022,
                    "Due to the order could not be executed as maker, the Post Only order will be rejected. "
                    "The order will not be recorded in the order history",
                )
            order = Order(
                next(self._order_ids),
                client_id,
                market.symbol_id,
                side,
                order_type,
                tif,
                qty,
                price,
                reduce_only,
                now,
                update_time=now,
                orig_type=order_type,
                position_side=position_side,
            )
            if self._order_margin(account, order, now) > self.available(account, now) + 1e-9:
                raise BinanceError(-2019, "Margin is insufficient.")
            account.orders[order.order_id] = order
            if reused:  # accepted, as Binance does once the first order is no longer open
                self.plan_for(api_key).record("order", "duplicate_client_id")
            self._order_event(account, order, "NEW", now)
            if crosses:
                self._fill(account, order, last, now, maker=False)
                if order.open:  # a partial fill of a taker order: GTC keeps resting, IOC/market expire
                    if order.type == "MARKET" or tif == "IOC":
                        self._close(account, order, "EXPIRED", now)
            elif tif == "IOC":
                self._close(account, order, "EXPIRED", now)
            plan = self.plan_for(api_key)
            if order.open and plan.decide("match", ("user_cancel",)):
                due = now + plan.user_cancel_after_ms
                self.user_cancels.append((due, account.api_key, order.order_id))
                self.user_cancels.sort()
            return order

    def modify(self, api_key: str, params: dict) -> Order:
        """``PUT /fapi/v1/order``: new price and quantity for an open LIMIT order (Binance USD-M
        "Modify Order"): a filter failure rejects the change and keeps the order; the order is
        cancelled instead when the new quantity is not above what has been executed, or when a GTX
        order's new price would execute at once; otherwise it is amended (``x`` = ``AMENDMENT``)."""
        with self.lock:
            account = self.account(api_key)
            now = self.state.clock.now_ms()
            self.sync(now)
            market = self.market(_required(params, "symbol"))
            order = self.find(account, params.get("orderId"), params.get("origClientOrderId"))
            if order is None or not order.open:
                raise BinanceError(-2013, "Order does not exist.")
            if order.type != "LIMIT":
                raise BinanceError(-1116, "Invalid orderType.")
            if _required(params, "side").upper() != order.side:
                raise BinanceError(-1117, "Invalid side.")
            qty, price = _decimal(params, "quantity", required=True), _decimal(params, "price", required=True)
            if qty <= 0 or not _on_step(qty, market.lot_size):
                raise BinanceError(-1111, "Precision is over the maximum defined for this asset.")
            if price <= 0 or not _on_step(price, market.tick_size):
                raise BinanceError(-4014, "Price not increased by tick size.")
            last = self.price(market.symbol_id, now)
            crosses = price >= last if order.sign > 0 else price <= last
            if qty <= order.executed + 1e-12 or (order.time_in_force == "GTX" and crosses):
                self._close(account, order, "CANCELED", now)
                return order
            free, held = self.available(account, now), self._order_margin(account, order, now)
            old = (order.qty, order.price)
            order.qty, order.price = qty, price
            if self._order_margin(account, order, now) - held > free + 1e-9:
                order.qty, order.price = old
                raise BinanceError(-2019, "Margin is insufficient.")
            order.update_time = now
            self._order_event(account, order, "AMENDMENT", now)
            if crosses:
                self._fill(account, order, last, now, maker=False)
            return order

    def _close(self, account: Account, order: Order, status: str, now: int) -> None:
        order.status = status
        order.update_time = now
        self._order_event(account, order, "CANCELED" if status == "CANCELED" else status, now)

    def find(self, account: Account, order_id=None, client_id=None) -> Order | None:
        if order_id not in (None, ""):
            try:
                return account.orders.get(int(order_id))
            except ValueError:
                raise BinanceError(-1100, "Illegal characters found in parameter 'orderId'; legal range is '^[0-9]{1,20}$'.") from None
        if client_id:
            matches = [o for o in account.orders.values() if o.client_id == client_id]
            open_ = [o for o in matches if o.open]
            return (open_ or matches or [None])[-1]
        raise BinanceError(-1102, "Either orderId or origClientOrderId must be sent.")

    def cancel(self, api_key: str, params: dict, *, by: str = "user") -> Order:
        """``DELETE /fapi/v1/order`` (also used by the control API to cancel "by the user")."""
        with self.lock:
            account = self.account(api_key)
            now = self.state.clock.now_ms()
            self.sync(now)
            self.market(_required(params, "symbol"))
            order = self.find(account, params.get("orderId"), params.get("origClientOrderId"))
            if order is None or not order.open:
                raise BinanceError(-2011, "Unknown order sent.")
            self._close(account, order, "CANCELED", now)
            return order

    def cancel_all(self, api_key: str, symbol: str) -> list[Order]:
        with self.lock:
            account = self.account(api_key)
            now = self.state.clock.now_ms()
            self.sync(now)
            self.market(symbol)
            orders = account.open_orders(symbol)
            for order in orders:
                self._close(account, order, "CANCELED", now)
            return orders

    def query(self, api_key: str, params: dict) -> Order:
        with self.lock:
            account = self.account(api_key)
            self.sync(self.state.clock.now_ms())
            self.market(_required(params, "symbol"))
            order = self.find(account, params.get("orderId"), params.get("origClientOrderId"))
            if order is None:
                raise BinanceError(-2013, "Order does not exist.")
            return order

    # -- settings -------------------------------------------------------------------------------

    def set_leverage(self, api_key: str, symbol: str, leverage: int) -> dict:
        with self.lock:
            account = self.account(api_key)
            self.sync(self.state.clock.now_ms())
            self.market(symbol)
            if not 1 <= leverage <= BRACKETS[0][2]:
                raise BinanceError(-4028, f"Leverage {leverage} is not valid")
            size = sum(abs(p.amt) for _, p in account.legs(symbol))
            notional = size * self.price(symbol) if size else 0.0
            if notional > max_notional(leverage):
                raise BinanceError(-2027, "Exceeded the maximum allowable position at current leverage.")
            account.leverage[symbol] = leverage
            return {"leverage": leverage, "maxNotionalValue": fmt(max_notional(leverage)), "symbol": symbol}

    def set_margin_type(self, api_key: str, symbol: str, margin_type: str) -> dict:
        with self.lock:
            account = self.account(api_key)
            self.sync(self.state.clock.now_ms())
            self.market(symbol)
            margin_type = margin_type.upper()
            if margin_type not in ("ISOLATED", "CROSSED"):
                raise BinanceError(-1130, "Invalid data sent for a parameter: marginType.")
            if account.margin_type.get(symbol, "CROSSED") == margin_type:
                raise BinanceError(-4046, "No need to change margin type.")
            if account.open_orders(symbol):
                raise BinanceError(-4047, "Margin type cannot be changed if there exists open orders.")
            if account.holds(symbol):
                raise BinanceError(-4048, "Margin type cannot be changed if there exists position.")
            account.margin_type[symbol] = margin_type
            return {"code": 200, "msg": "success"}

    def set_position_mode(self, api_key: str, dual_side: bool) -> dict:
        """``POST /fapi/v1/positionSide/dual`` (Binance USD-M "Change Position Mode"): for every
        symbol of the account; -4059 when it is already so, -4067 with open orders, -4068 with a
        position."""
        with self.lock:
            account = self.account(api_key)
            self.sync(self.state.clock.now_ms())
            if account.dual_side == dual_side:
                raise BinanceError(-4059, "No need to change position side.")
            if account.open_orders():
                raise BinanceError(-4067, "Position side cannot be changed if there exists open orders.")
            if any(p.amt for p in account.positions.values()):
                raise BinanceError(-4068, "Position side cannot be changed if there exists position.")
            account.dual_side = dual_side
            return {"code": 200, "msg": "success"}

    def position_margin(self, api_key: str, symbol: str, amount: float, kind: int, position_side: str = "BOTH") -> dict:
        """``POST /fapi/v1/positionMargin``: type 1 adds, 2 reduces isolated margin (hedge mode: of
        the ``positionSide`` LONG or SHORT position)."""
        with self.lock:
            account = self.account(api_key)
            now = self.state.clock.now_ms()
            self.sync(now)
            self.market(symbol)
            if (position_side != "BOTH") != account.dual_side:
                raise BinanceError(-4061, "Order's position side does not match user's setting.")
            pos = account.position(symbol, position_side)
            if not account.isolated(symbol) or not pos.amt:
                raise BinanceError(-4051, "Isolated balance insufficient.")
            if amount <= 0:
                raise BinanceError(-1130, "Invalid data sent for a parameter: amount.")
            if kind == 1:
                if amount > self.available(account, now):
                    raise BinanceError(-2019, "Margin is insufficient.")
                pos.isolated_wallet += amount
            elif kind == 2:
                mark = self.price(symbol, now)
                keep = abs(pos.amt) * mark / account.lev(symbol) - min(pos.amt * (mark - pos.entry), 0.0)
                if pos.isolated_wallet - amount < keep:
                    raise BinanceError(-4050, "Cross balance insufficient.")
                pos.isolated_wallet -= amount
            else:
                raise BinanceError(-1130, "Invalid data sent for a parameter: type.")
            self._account_event(account, symbol, "MARGIN_TRANSFER", now)
            return {"amount": amount, "code": 200, "msg": "Successfully modify position margin.", "type": kind}

    # -- matching -------------------------------------------------------------------------------

    def _fill(self, account: Account, order: Order, price: float, now: int, *, maker: bool, qty: float | None = None) -> None:
        market = self.market(order.symbol)
        pos = account.position(order.symbol, order.position_side)
        if qty is None:
            qty = order.remaining
            plan = self.plan_for(account.api_key)
            if maker and qty > market.lot_size * 1.5 and plan.decide("match", ("partial_fill",)):
                share = 0.2 + 0.6 * plan.draw("match")
                qty = max(math.floor(qty * share / market.lot_size + 1e-9), 1) * market.lot_size
        qty = min(qty, order.remaining)
        if order.reduce_only or _closes(order):
            closable = abs(pos.amt) if pos.amt * order.sign < 0 else 0.0
            if closable <= 0:
                self._close(account, order, "EXPIRED", now)
                return
            qty = min(qty, closable)
        qty = round(qty, 12)
        # realised PnL on the reduced part, average entry on the added part (Binance USD-M:
        # realised PnL = closed qty x (exit - entry) x direction; entry is the size-weighted average)
        signed = qty * order.sign
        realized = 0.0
        lev = account.lev(order.symbol)
        if pos.amt * signed < 0:
            closed = min(abs(pos.amt), qty)
            realized = closed * (price - pos.entry) * (1 if pos.amt > 0 else -1)
            if account.isolated(order.symbol) and pos.amt:
                pos.isolated_wallet -= pos.isolated_wallet * closed / abs(pos.amt)
            new_amt = round(pos.amt + signed, 12)
            if new_amt == 0:
                pos.entry = 0.0
            elif new_amt * pos.amt < 0:  # flipped: the rest opens at the fill price
                pos.entry = price
                if account.isolated(order.symbol):
                    pos.isolated_wallet += abs(new_amt) * price / lev
            pos.amt = new_amt
        else:
            new_amt = round(pos.amt + signed, 12)
            pos.entry = (abs(pos.amt) * pos.entry + qty * price) / abs(new_amt)
            pos.amt = new_amt
            if account.isolated(order.symbol):
                pos.isolated_wallet += qty * price / lev
        # commission on the trade's notional (binance.com/en/fee/futureFee)
        commission = qty * price * (self.maker_fee if maker else self.taker_fee)
        account.wallet += realized - commission
        if pos.amt == 0:
            pos.isolated_wallet = 0.0
        pos.update_time = now
        account.update_time = now
        trade = Trade(
            next(self._trade_ids),
            order.order_id,
            order.symbol,
            order.side,
            price,
            qty,
            commission,
            realized,
            maker,
            now,
            order.position_side,
        )
        account.trades.append(trade)
        order.executed = round(order.executed + qty, 12)
        order.cum_quote += qty * price
        order.update_time = now
        order.status = "FILLED" if order.remaining <= 1e-12 else "PARTIALLY_FILLED"
        self._account_event(account, order.symbol, "ORDER", now)
        self._order_event(account, order, "TRADE", now, trade)

    def sync(self, now: int | None = None) -> None:
        """Walk the price path from the last sync to ``now``: resting fills, funding, liquidations."""
        with self.lock:
            now = self.state.clock.now_ms() if now is None else now
            if self.last_ms is None or now < self.last_ms:  # first call, or the clock was set back
                self.last_ms = now
            if now <= self.last_ms:
                return
            start, self.last_ms = self.last_ms, now
            for (family, _symbol), market in self.state.markets.items():
                if family != self.family:
                    continue
                events = list(self._funding_times(market, start, now))
                resting = [
                    (account, order)
                    for account in self.accounts.values()
                    for order in account.open_orders(market.symbol_id)
                    if order.type == "LIMIT"
                ]  # no order can arrive during a sync (the lock is held), so this list only shrinks
                for t0, p0, t1, p1 in _segments(market, start, now):
                    while events and events[0][0] <= t0:
                        self._fund(market, *events.pop(0))
                    self._user_cancels_due(t0)
                    self._match_segment(market, resting, t0, p0, t1, p1)
                for item in events:
                    self._fund(market, *item)
            self._user_cancels_due(now)

    def _user_cancels_due(self, now: int) -> None:
        """Cancel, "by the user", the orders the fault plan picked whose time has come."""
        while self.user_cancels and self.user_cancels[0][0] <= now:
            due, api_key, order_id = self.user_cancels.pop(0)
            account = self.accounts.get(api_key)
            order = account.orders.get(order_id) if account else None
            if order is not None and order.open:
                self._close(account, order, "CANCELED", due)

    def _funding_times(self, market: Market, start: int, end: int):
        ts = market.funding_ts
        for i in range(len(ts)):
            if start < int(ts[i]) <= end:
                yield int(ts[i]), float(market.funding_rate[i])

    def _fund(self, market: Market, t: int, rate: float) -> None:
        """Funding: ``payment = position notional at mark x funding rate``; longs pay when the rate
        is positive (Binance USD-M "Introduction to Funding Rates")."""
        mark = market.price_at(t)
        if mark is None:
            return
        for account in self.accounts.values():
            for _, pos in account.legs(market.symbol_id):
                if pos.amt:
                    self._fund_position(account, market, pos, t, mark, rate)

    def _fund_position(self, account: Account, market: Market, pos: Position, t: int, mark: float, rate: float) -> None:
        """One leg's funding payment at ``t``: ``-amt x mark x rate`` (> 0 received)."""
        payment = -pos.amt * mark * rate
        account.wallet += payment
        account.update_time = max(account.update_time or 0, t)  # the balance's last change (REST updateTime)
        if account.isolated(market.symbol_id):
            pos.isolated_wallet += payment
        account.income.append(
            {
                "symbol": market.symbol_id,
                "incomeType": "FUNDING_FEE",
                "income": fmt(payment),
                "asset": "USDT",
                "info": "FUNDING_FEE",
                "time": t,
                "tranId": next(self._trade_ids),
                "tradeId": "",
            }
        )
        self._account_event(account, market.symbol_id, "FUNDING_FEE", t)

    def _match_segment(self, market: Market, resting: list, t0: int, p0: float, t1: int, p1: float) -> None:
        lo, hi = min(p0, p1), max(p0, p1)
        hits: list[tuple[int, int, Account, Order]] = []
        for account, order in resting:
            if order.open and (lo < order.price if order.sign > 0 else hi > order.price):
                hits.append((_cross_time(t0, p0, t1, p1, order.price), order.order_id, account, order))
        for t, _, account, order in sorted(hits, key=lambda h: (h[0], h[1])):
            if order.open:
                self._fill(account, order, order.price, t, maker=True)
        for account in self.accounts.values():
            if account.dual_side:
                for ps, pos in account.legs(market.symbol_id):
                    if not pos.amt:
                        continue
                    lp, direction = self._hedged_liquidation(account, market.symbol_id, ps)
                    if lp > 0 and ((direction > 0 and lo <= lp) or (direction < 0 and hi >= lp)):
                        self._liquidate(account, market, _cross_time(t0, p0, t1, p1, lp), lp, ps)
                continue
            pos = account.positions.get(market.symbol_id)
            if pos is None or not pos.amt:
                continue
            lp = self.liquidation_price(account, market.symbol_id)
            if lp > 0 and ((pos.amt > 0 and lo <= lp) or (pos.amt < 0 and hi >= lp)):
                self._liquidate(account, market, _cross_time(t0, p0, t1, p1, lp), lp)

    def _liquidate(self, account: Account, market: Market, now: int, lp: float, position_side: str = "BOTH") -> None:
        """Close the whole position at the liquidation price; the margin left at that price (the
        maintenance margin) goes to the insurance fund, as on Binance. Hedge mode, cross margin:
        both legs (one liquidation price for the account); isolated: the one leg."""
        symbol = market.symbol_id
        for order in account.open_orders(symbol):
            self._close(account, order, "CANCELED", now)
        if position_side != "BOTH" and not account.isolated(symbol):
            for ps, leg in account.legs(symbol):
                if leg.amt:
                    self._liquidate_leg(account, market, now, lp, ps)
            return
        self._liquidate_leg(account, market, now, lp, position_side)

    def _liquidate_leg(self, account: Account, market: Market, now: int, lp: float, position_side: str) -> None:
        symbol = market.symbol_id
        pos = account.position(symbol, position_side)
        price = round(round(lp / market.tick_size) * market.tick_size, 10)
        order = Order(
            next(self._order_ids),
            f"autoclose-{now}",
            symbol,
            "SELL" if pos.amt > 0 else "BUY",
            "MARKET",
            "IOC",
            abs(pos.amt),
            0.0,
            position_side == "BOTH",  # hedge mode knows no reduceOnly: SELL LONG / BUY SHORT close
            now,
            update_time=now,
            orig_type="LIQUIDATION",
            position_side=position_side,
        )
        account.orders[order.order_id] = order
        size, isolated_margin, wallet_before = abs(pos.amt), pos.isolated_wallet, account.wallet
        self._fill(account, order, price, now, maker=False)
        if account.isolated(symbol):
            lost = isolated_margin + account.wallet - wallet_before
        else:
            _, _, _, mmr, cum = bracket_for(size * price)
            lost = min(self.cross_wallet(account), size * price * mmr - cum)
        account.wallet -= max(lost, 0.0)
        account.update_time = max(account.update_time or 0, now)
        self._account_event(account, symbol, "ORDER", now)

    def partial_fill(self, api_key: str, order_id: int, qty: float) -> Order:
        """Control API: fill ``qty`` of a resting order now at its price, as maker (a partial fill)."""
        with self.lock:
            account = self.account(api_key)
            now = self.state.clock.now_ms()
            self.sync(now)
            order = account.orders.get(int(order_id))
            if order is None or not order.open:
                raise BinanceError(-2011, "Unknown order sent.")
            self._fill(account, order, order.price or self.price(order.symbol, now), now, maker=True, qty=qty)
            return order

    # -- the exchange's truth (control API) ----------------------------------------------------

    def truth(self, api_key: str = TEST_API_KEY) -> dict:
        """Open orders, positions, balances and fills as the exchange holds them."""
        with self.lock:
            now = self.state.clock.now_ms()
            self.sync(now)
            account = self.account(api_key)
            return {
                "now_ms": now,
                "wallet": account.wallet,
                "available": self.available(account, now),
                "open_orders": [order_json(o) for o in account.open_orders()],
                "orders": len(account.orders),
                "dual_side": account.dual_side,
                "positions": {
                    s: {
                        "amt": p.amt,
                        "entry": p.entry,
                        "isolated_wallet": p.isolated_wallet,
                        "liquidation_price": self.liquidation_price(account, *_key_parts(s)),
                    }
                    for s, p in account.positions.items()
                    if p.amt
                },
                "fills": [trade_json(t) for t in account.trades],
                "leverage": dict(account.leverage),
                "margin_type": dict(account.margin_type),
            }


# -- answers ----------------------------------------------------------------------------------


def order_json(order: Order) -> dict:
    """An order as ``GET /fapi/v1/order`` (and POST/DELETE) answer it."""
    return {
        "orderId": order.order_id,
        "symbol": order.symbol,
        "status": order.status,
        "clientOrderId": order.client_id,
        "price": fmt(order.price),
        "avgPrice": fmt(order.avg_price),
        "origQty": fmt(order.qty),
        "executedQty": fmt(order.executed),
        "cumQty": fmt(order.executed),
        "cumQuote": fmt(order.cum_quote),
        "timeInForce": order.time_in_force,
        "type": order.type,
        "reduceOnly": order.reduce_only,
        "closePosition": False,
        "side": order.side,
        "positionSide": order.position_side,
        "stopPrice": "0",
        "workingType": "CONTRACT_PRICE",
        "priceProtect": False,
        "origType": order.orig_type or order.type,
        "priceMatch": "NONE",
        "selfTradePreventionMode": "NONE",
        "goodTillDate": 0,
        "time": order.time,
        "updateTime": order.update_time,
    }


def trade_json(trade: Trade) -> dict:
    """A row of ``GET /fapi/v1/userTrades``."""
    return {
        "buyer": trade.side == "BUY",
        "commission": fmt(trade.commission),
        "commissionAsset": "USDT",
        "id": trade.trade_id,
        "maker": trade.maker,
        "orderId": trade.order_id,
        "price": fmt(trade.price),
        "qty": fmt(trade.qty),
        "quoteQty": fmt(trade.quote_qty),
        "realizedPnl": fmt(trade.realized_pnl),
        "side": trade.side,
        "positionSide": trade.position_side,
        "symbol": trade.symbol,
        "time": trade.time,
    }


# -- helpers ----------------------------------------------------------------------------------

#: the brackets as the venue core's rows (floor, cap, maintenance rate, cum, max leverage)
_BB = np.array([(floor, cap, rate, cum, lev) for floor, cap, lev, rate, cum in BRACKETS], dtype=np.float64)


def symbol_of(key: str) -> str:
    """The symbol of a key of ``Account.positions`` (``SYMBOL`` or ``SYMBOL|LONG``/``SYMBOL|SHORT``)."""
    return key.split("|", 1)[0]


def _key_parts(key: str) -> tuple[str, str]:
    symbol, _, side = key.partition("|")
    return symbol, side or "BOTH"


def _closes(order: Order) -> bool:
    """A hedge-mode SELL LONG / BUY SHORT: it can only close its side (cut to the position)."""
    return order.position_side != "BOTH" and (order.position_side == "LONG") != (order.sign > 0)


def _required(params: dict, name: str) -> str:
    value = params.get(name)
    if value in (None, ""):
        raise BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return str(value)


def _decimal(params: dict, name: str, required: bool = False) -> float:
    raw = _required(params, name) if required else params.get(name, "0")
    try:
        value = float(raw)
    except ValueError:
        raise BinanceError(
            -1100, f"Illegal characters found in parameter '{name}'; legal range is '^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'."
        ) from None
    if not math.isfinite(value):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'.")
    return value


def _on_step(value: float, step: float) -> bool:
    k = value / step
    return abs(k - round(k)) < 1e-6


def _cross_time(t0: int, p0: float, t1: int, p1: float, level: float) -> int:
    """When the straight path from (t0, p0) to (t1, p1) reaches ``level`` (t0 if it starts there)."""
    if p1 == p0 or t1 == t0:
        return t0
    w = min(max((level - p0) / (p1 - p0), 0.0), 1.0)
    return int(t0 + (t1 - t0) * w)


def _segments(market: Market, start: int, end: int):
    """Straight pieces ``(t0, p0, t1, p1)`` of the replayed price path between ``start`` and ``end``.

    Inside a recorded minute the path runs open -> nearer extreme -> other extreme -> close, each
    leg a third of the minute (see :mod:`.market`); from one bar's close to the next bar's open it
    jumps (a zero-length piece at the next bar's open time).
    """
    ts = market.bars.ts
    i = max(int(np.searchsorted(ts, start, "right")) - 1, 0)
    prev: tuple[int, float] | None = None
    first = market.price_at(start)
    if first is not None:
        prev = (start, first)
    while i < len(ts) and int(ts[i]) <= end:
        bar_t = int(ts[i])
        o, a, b, c = market._path(i)
        points = [(bar_t, o), (bar_t + MINUTE_MS // 3, a), (bar_t + 2 * MINUTE_MS // 3, b), (bar_t + MINUTE_MS, c)]
        for k in range(3):
            (ta, pa), (tb, pb) = points[k], points[k + 1]
            if tb <= start or ta >= end:
                continue
            if ta < start:
                pa, ta = pa + (pb - pa) * (start - ta) / (tb - ta), start
            if tb > end:
                pb, tb = pa + (pb - pa) * (end - ta) / (tb - ta), end
            if prev is not None and (prev[0] != ta or prev[1] != pa):
                yield prev[0], prev[1], ta, pa  # the jump from the previous close to this open
            yield ta, pa, tb, pb
            prev = (tb, pb)
        i += 1

"""``broker=live`` and ``broker=paper``: trading through ccxt's async and websocket (ccxt.pro) API.

Both run under the live driver (:mod:`.driver`), which feeds closed bars to the engine and pumps
broker events; the engine and the strategy stay synchronous and run on the driver's asyncio loop.

``paper`` (:class:`PaperBroker`) is the ``sim`` broker fed with live bars: the same fill model
(``through``/``touch``), fees, post-only rule and reports as a backtest, no API keys.

``live`` (:class:`LiveBroker`) mirrors the exchange:

* every order carries its ``client_id`` as ccxt ``clientOrderId`` (Binance ``newClientOrderId``,
  Bybit ``orderLinkId``; look-ups and cancels name it the venue's way, :data:`CLIENT_ID_PARAMS`);
  post-only limits are sent with ccxt ``postOnly`` (Binance ``timeInForce=GTX``), exits at
  market, prices and amounts rounded to the exchange's filters (tick, lot) and checked against
  its minimum notional before sending;
* a request that fails with a network error or timeout is *not* assumed failed: the order is
  looked up by client id (``fetch_order`` with ``clientOrderId``) before any retry. Every signed
  request carries ``recvWindow`` (``broker.recv_window_ms``), and the exchange may still execute a
  request until its ``timestamp + recvWindow``: so "no such order" proves nothing before that
  moment (plus the measured clock offset and its uncertainty, see :meth:`LiveBroker._window_ms`)
  has passed for every request sent for the order. Until then the order is *unknown*: it stays
  open in the mirror, no replacement is sent and reconciliation does not end it; only then is a
  look-up that finds nothing final, and a retry (same client id) safe. The moment is journalled
  before each request leaves, so a restarted bot waits it out too. A ``-1021`` (timestamp
  outside the recvWindow) re-measures the clock offset from the answers' ``Date`` header and
  sets ccxt's ``timeDifference``;
* every request is bounded (:meth:`LiveBroker._call`: ccxt's timeout covers the HTTP exchange, the
  bound also covers ccxt's throttle queue and the 429 back-off), and so is every retry loop
  (``max_attempts``): no task of the broker can hang, a request that keeps failing is left to
  the next reconciliation;
* at most one cancel request per order is under way: asking again while one runs does nothing,
  and a cancel asked while the order's placement is still under way waits for it. An order the
  strategy asked to cancel stays *wanted canceled* until the exchange says it is final, so a
  cancel that gave up is sent again by the next reconciliation (never forgotten, never doubled);
* order, balance and position updates come from ``watch_orders`` / ``watch_balance`` /
  ``watch_positions``; every ``reconcile_s`` seconds, and soon after a websocket error, a REST
  reconciliation (:meth:`LiveBroker.reconcile`) makes the mirror equal to the exchange. One
  reconciliation runs at a time, its order look-ups run side by side, and the driver abandons
  one that takes longer than ``reconcile_timeout_s``;
* fills are derived from each order's cumulative filled quantity (``trade_id`` =
  ``<client id>@<cumulative qty>``), recorded in the journal (so a fill seen again - a websocket
  replay, a REST poll, a restart - is recognised) and handed to the strategy in the same
  synchronous step (:attr:`LiveBroker.deliver`); the journal lists it as undelivered until the
  strategy and the observers have handled it, and a restart hands those over first: every fill
  reaches the strategy exactly once across kills (the position of a restarted bot starts from
  the journal's fills);
* ownership: orders whose client id starts with one of the bot's prefixes are the bot's. On
  reconciliation an own order the journal knows is adopted; an own order it does not know is an
  orphan and is canceled; every other order (a user's manual orders) is never touched. An order
  the bot sent and took as ended that the exchange shows again (open, or with more filled than
  the journal holds: it executed after all) is adopted back, in this life or a later one, and
  its fills are delivered once (the journal's trade ids).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import replace
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import ccxt
from pydantic import Field, SecretStr

from btc_quant.plugins.brokers.sim import SimBroker, SimConfig
from btc_quant.plugins.brokers.sim.broker import position_side_refusal
from btc_quant.sdk import (
    Account,
    Bar,
    BarArrays,
    Broker,
    BrokerConfig,
    ConfigError,
    ExchangeError,
    Fill,
    FillEvent,
    MarginState,
    Order,
    OrderEvent,
    OrderStatus,
    OrderType,
    PositionSide,
    Side,
    hookimpl,
)

from .journal import Journal

log = logging.getLogger(__name__)

#: ccxt order status -> ours (ccxt: open, closed, canceled, expired, rejected).
STATUS = {"closed": OrderStatus.FILLED, "canceled": OrderStatus.CANCELED, "expired": OrderStatus.EXPIRED, "rejected": OrderStatus.REJECTED}
#: Venue statuses that ccxt folds into one that means something else for the mirror: Bybit v5's
#: ``PartiallyFilledCanceled`` (spot: a partly filled order canceled; v5 "Enums" page, orderStatus)
#: comes out of ccxt as ``closed`` (ccxt issue 18685), which would read as "filled" with its last
#: fill still to come, so the order would stay open in the mirror for good. It is a cancel: final,
#: keeping what filled. (Linear contracts report such an order ``Cancelled``: ccxt's ``canceled``.)
VENUE_STATUS = {"PartiallyFilledCanceled": OrderStatus.CANCELED}
#: Failures after which a request may be retried (after a lookup, for orders): ccxt OperationFailed
#: covers RequestTimeout, DDoSProtection (429/418), ExchangeNotAvailable and Binance -1001 (5xx);
#: InvalidNonce is Binance -1021 (timestamp outside recvWindow).
RETRYABLE = (ccxt.OperationFailed, ccxt.InvalidNonce)
#: How far the clock offset measured from an answer's ``Date`` header (whole seconds, RFC 7231)
#: may be off: half a second of truncation either way plus the answer's time on the wire.
CLOCK_UNCERTAINTY_MS = 1250
#: How ccxt names an order by its client id on each exchange (default ``clientOrderId``):
#: (param for look-ups and cancels, extra look-up params). Bybit: ``orderLinkId``; ccxt's Bybit
#: ``fetch_order`` on a Unified Trading Account also wants ``acknowledged`` (it sees the
#: account's last 500 orders, the window the broker looks in).
CLIENT_ID_PARAMS = {"bybit": ("orderLinkId", {"acknowledged": True})}


def order_status(data: dict) -> OrderStatus | None:
    """Our final status of a ccxt order (None while it works): the venue's own word first
    (:data:`VENUE_STATUS`, Bybit's ``orderStatus`` in REST answers and pushes), else ccxt's."""
    info = data.get("info")
    raw = info.get("orderStatus") if isinstance(info, dict) else None
    return VENUE_STATUS.get(raw) or STATUS.get(data.get("status") or "")


def client_id_params(exchange_id: str, cid: str, lookup: bool = False) -> dict:
    """ccxt params naming order ``cid`` by client id on ``exchange_id`` (see :data:`CLIENT_ID_PARAMS`)."""
    name, extra = CLIENT_ID_PARAMS.get(exchange_id, ("clientOrderId", {}))
    return {name: cid, **(extra if lookup else {})}


async def retrying(fn, *args, attempts: int = 8, backoff_s: float = 0.5, on_retry=None, **kwargs):
    """Await ``fn(*args)``, retrying idempotent requests on :data:`RETRYABLE` failures with backoff."""
    delay = backoff_s
    for attempt in range(attempts):
        try:
            return await fn(*args, **kwargs)
        except RETRYABLE:
            if attempt == attempts - 1:
                raise
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def install_gate(exchange: Any) -> None:
    """Make every request of ``exchange`` wait out a 429/418 (Binance: "back off for Retry-After
    seconds"; requests made during it escalate to an IP ban), whichever task sent it."""
    if getattr(exchange, "_quant_cooldown", None) is not None:
        return
    exchange._quant_cooldown = [0.0]
    fetch = exchange.fetch

    async def gated_fetch(url, method="GET", headers=None, body=None):
        wait = exchange._quant_cooldown[0] - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            return await fetch(url, method, headers, body)
        except (ccxt.DDoSProtection, ccxt.RateLimitExceeded):  # ccxt 4.5: RateLimitExceeded is not a DDoSProtection (Bybit 10006, 403)
            headers_in = getattr(exchange, "last_response_headers", None) or {}
            try:
                pause = float(headers_in.get("Retry-After") or headers_in.get("retry-after") or 1.0)
            except (TypeError, ValueError):
                pause = 1.0
            exchange._quant_cooldown[0] = max(exchange._quant_cooldown[0], time.monotonic() + max(pause, 0.2))
            raise
        finally:
            _note_server_clock(exchange)  # answers and error answers alike

    exchange.fetch = gated_fetch


def _note_server_clock(exchange: Any) -> None:
    """The exchange clock's offset from ours (ms, server minus local), from the last answer's
    ``Date`` header (whole seconds: its middle is taken; see :data:`CLOCK_UNCERTAINTY_MS`)."""
    headers = getattr(exchange, "last_response_headers", None)
    if not headers or headers is getattr(exchange, "_quant_clock_headers", None):
        return  # no answer (a timeout, a dropped connection): the last one was measured already
    exchange._quant_clock_headers = headers
    stamp = headers.get("Date") or headers.get("date")
    if not stamp:
        return
    try:
        server_ms = parsedate_to_datetime(stamp).timestamp() * 1000 + 500
    except (TypeError, ValueError):
        return
    exchange._quant_clock_offset_ms = int(server_ms - time.time() * 1000)


class PaperConfig(SimConfig):
    """Paper trading: the sim broker's settings (initial cash, fill model) on live bars."""

    bot: str = Field("paper", pattern=r"^[A-Za-z0-9_]{1,12}$", description="bot name: journal file, quant status/compare BOT")


class PaperBroker(SimBroker):
    """The ``sim`` broker fed one live bar at a time (see module docstring)."""

    Config: ClassVar[type[PaperConfig]] = PaperConfig
    live = False

    def __init__(self, config: PaperConfig, runtime) -> None:
        super().__init__(config, runtime)
        if self.tape:
            raise ConfigError(
                f"broker.fill_model={config.fill_model} replays stored trades: a backtest's fill model, not paper trading's",
                hint="use broker=sim for it, or broker.fill_model=through/touch on paper",
            )
        self._rows: dict[str, list] = {c: [] for c in ("ts", "open", "high", "low", "close", "volume")}
        self._wake_index = None
        #: the bot's journal (set by the driver): every order update and fill is written there as
        #: the engine takes it, as the live broker does, so ``quant compare`` can replay the run
        self.journal: Journal | None = None

    def events(self) -> list:
        events = super().events()
        if self.journal is not None:
            for event in events:
                if isinstance(event, FillEvent):
                    # a paper fill is delivered in the same synchronous step: never left undelivered
                    self.journal.record_fill(event.fill, event.order)
                    self.journal.delivered(event.fill.trade_id)
                else:
                    self.journal.save_order(event.order)
        return events

    def seed_price(self, price: float, now_ms: int) -> None:
        """Last price before the first live bar (from the warm-up bars)."""
        self._price, self._now = float(price), int(now_ms)

    def add_bar(self, bar: Bar) -> None:
        """A live bar closed: orders resting since before it fill on it by the sim's rules as
        :meth:`step` walks it (the driver pumps the engine after each event, as a backtest does)."""
        import numpy as np

        for name, value in zip(self._rows, (bar.ts_ms, bar.open, bar.high, bar.low, bar.close, bar.volume)):
            self._rows[name].append(value)
        self.bars = BarArrays(
            np.asarray(self._rows["ts"], dtype=np.int64),
            *(np.asarray(self._rows[c], dtype=np.float64) for c in ("open", "high", "low", "close", "volume")),
        )
        if len(self.bars) == 1:
            # funding: not simulated on paper (the sim's schedule needs the run's bars up front)
            self._funding = self._funding_schedule(self.bars.between(0, 0))
            self._fund_ts = self._fund_bar = np.empty(0, np.int64)
            self._fund_rate = np.empty(0)
            self._fk = 0
        self._wake_index = None

    def step(self) -> bool:
        """Walk the newest bar until an event (False: pump the engine, then call again) or its close (True)."""
        step = self.advance(None)
        return step.closed and step.index >= len(self.bars) - 1

    @property
    def bar_arrays(self) -> BarArrays | None:
        return self.bars if self._rows["ts"] else None


class LiveConfig(BrokerConfig):
    bot: str = Field("bot", pattern=r"^[A-Za-z0-9_]{1,12}$", description="bot name: journal file, client id prefix, quant status --bot")
    api_key: SecretStr | None = Field(None, description="API key (or env QUANT_BROKER__API_KEY); masked everywhere")
    secret: SecretStr | None = Field(None, description="API secret (or env QUANT_BROKER__SECRET); masked everywhere")
    leverage: float | None = Field(None, gt=0, description="set this leverage on start (perpetuals)")
    margin_mode: str | None = Field(None, pattern="^(isolated|cross)$", description="set isolated or cross margin on start")
    position_mode: str | None = Field(
        None,
        pattern="^(one_way|hedge)$",
        description="set one_way or hedge (Binance dualSidePosition: a LONG and a SHORT position) on start; refused if the account holds orders or positions in the other mode; unset: the account's mode is left alone and the bot trades one-way",
    )
    timeout_ms: int = Field(10_000, gt=0, description="ccxt request timeout; a timed-out order is looked up by client id before any retry")
    rate_limit_ms: int | None = Field(
        None, gt=0, description="ccxt rateLimit (ms between requests); default: ccxt's value for the exchange"
    )
    reconcile_s: float = Field(10.0, gt=0, description="seconds between REST reconciliations")
    reconcile_timeout_s: float = Field(
        60.0, gt=0, description="a reconciliation still running after this is abandoned and the next one starts"
    )
    own_prefixes: list[str] = Field(
        default_factory=list, description="more client-id prefixes this bot owns (e.g. an OrderSync strategy id 'mv:')"
    )
    recv_window_ms: int = Field(
        5000,
        ge=100,
        le=60_000,
        description="recvWindow sent with every signed request (Binance: at most 60000); an order a look-up does not find stays unknown until this long after its last request",
    )
    max_attempts: int = Field(8, ge=1, description="tries of one request before leaving it to reconciliation")
    backoff_s: float = Field(0.5, ge=0, description="first wait before retrying a failed request (doubles)")


class LiveBroker(Broker):
    """A mirror of one exchange account and symbol (see module docstring)."""

    Config: ClassVar[type[LiveConfig]] = LiveConfig
    live = True

    def __init__(self, config: LiveConfig, runtime) -> None:
        super().__init__(config, runtime)
        self.exchange: Any = None
        self.journal: Journal | None = None
        self.symbol = self.instrument.symbol
        self.position_mode = config.position_mode or "one_way"
        #: the position sides the account holds: BOTH (one-way), or LONG and SHORT (hedge mode)
        self.sides = (PositionSide.LONG, PositionSide.SHORT) if self.position_mode == "hedge" else (PositionSide.BOTH,)
        self.prefixes: tuple[str, ...] = (f"{config.bot}-", *config.own_prefixes)
        self._orders: dict[str, Order] = {}  # every order of this bot not known to be final
        self._placing: dict[str, asyncio.Task] = {}  # client id -> its place request under way
        self._canceling: dict[str, asyncio.Task] = {}  # client id -> its one cancel request under way
        self._cancel_wanted: set[str] = set()  # asked to cancel, not yet final on the exchange
        self._known: set[str] = set()  # every client id the journal has (this run and earlier ones)
        self._events: list = []
        self._account = Account(0.0)
        self._price = float("nan")
        self._now = 0
        self._tasks: set[asyncio.Task] = set()
        self._margin: dict[str, Any] = {}
        self._margins: dict[PositionSide, dict[str, Any]] = {}  # hedge mode: each side's margin figures
        self._settings: dict[str, Any] = {}  # margin call kind -> latest wanted value, while its task runs
        self._margin_pending = 0.0  # isolated margin added/removed by requests under way
        self._side_pending: dict[PositionSide, float] = {}  # hedge mode: the same, per position side
        self._balance_ms = 0  # exchange time of the last balance change applied
        self._commission_lookups: dict[str, asyncio.Task] = {}  # client id -> reading its trades for a fill's fee
        self._held: dict[str, dict] = {}  # client id -> newest news of it, waiting for that fill
        self._inferred: dict[str, Order] = {}  # orders ended because a look-up did not find them
        #: client id -> wall-clock ms until which a request placing it may still execute (journalled)
        self._unknown_until: dict[str, int] = {}
        self._answered_until: dict[str, int] = {}  # the same, over the requests that have ended
        self._rechecks: set[str] = set()  # unknown orders with a reconciliation asked for once they are past
        self._clock_offset_ms: int | None = None  # exchange clock minus ours when the moments above were last moved
        self._reconcile_lock: asyncio.Lock | None = None
        self.reconcile_wanted: asyncio.Event | None = None  # set by a websocket error: reconcile soon
        #: called right after a fill is journalled (the driver sets the engine's pump): see on_exchange_order
        self.deliver = None
        self.stats = {
            "retries": 0,
            "lookups": 0,
            "orphans_canceled": 0,
            "ws_errors": 0,
            "reconciles": 0,
            "disagreements": 0,
            "reconcile_failures": 0,
            "cancels_coalesced": 0,
            "requests_timed_out": 0,
            "gave_up": 0,
            "stale_updates": 0,
            "fees_estimated": 0,
            "revived": 0,
            "unknown_waits": 0,
            "adopted": 0,
            "clock_syncs": 0,
        }
        self.last_reconcile_ms: int | None = None
        #: start of the last reconciliation with no place or cancel under way from its start to its
        #: end and no fill it found still waiting for its fee at its end: every order was read, none
        #: left unresolved, so the mirror was the exchange's
        self.last_settled_reconcile_ms: int | None = None
        self._requests_sent = 0  # place and cancel tasks started (to tell whether one ran during a pass)

    @property
    def request_bound_s(self) -> float:
        """Longest wait for one request: ccxt's timeout plus time in its throttle queue and the
        429 back-off (:func:`install_gate`)."""
        return 2 * self.config.timeout_ms / 1000 + 2.0

    # --- set-up ---------------------------------------------------------------------------
    async def connect(self, exchange: Any, journal: Journal) -> None:
        """Load journal state, set leverage and margin mode, and reconcile with the exchange."""
        self.exchange, self.journal = exchange, journal
        self._reconcile_lock = asyncio.Lock()
        self.reconcile_wanted = asyncio.Event()
        self.market = exchange.market(self.symbol)
        self._settle_id = self.market.get("settleId") or self.market.get("quoteId")
        exchange.options["recvWindow"] = self.config.recv_window_ms
        self._unknown_until = journal.unknown_until()
        self._answered_until = dict(self._unknown_until)
        for order in journal.orders():
            self._known.add(order.client_id)
            if order.is_open:
                self._orders[order.client_id] = order
        # The position the mirror starts from: what the bot's own fills built (each is journalled
        # exactly once) plus what a reconciliation last found beyond them (manual trades,
        # liquidations). Fills found on the exchange from now on move it; the entry price comes
        # with the first position read.
        for side in self.sides:
            self._account.position(self.symbol, side).quantity = self._journal_position(side)
        self._entry_known = False
        # fills recorded by an earlier life that died before its strategy handled them (the
        # position above already holds them): the strategy gets them first
        orders = {o.client_id: o for o in journal.orders()}
        for row in journal.undelivered():
            order = orders.get(row["client_id"])
            fill = Fill(
                trade_id=row["trade_id"],
                client_id=row["client_id"],
                symbol=self.symbol,
                side=Side(row["side"]),
                price=row["price"],
                quantity=row["quantity"],
                fee=row["fee"],
                ts_ms=row["ts_ms"],
                is_maker=bool(row["is_maker"]),
                tag=order.tag if order else None,
                position_side=order.position_side if order else PositionSide.BOTH,
            )
            if order is not None:
                self._events.append(FillEvent(fill, order))
        if self.config.position_mode:
            await self._set_position_mode(exchange)
        for what, fn, arg in (
            ("margin mode", exchange.set_margin_mode, self.config.margin_mode),
            ("leverage", exchange.set_leverage, self.config.leverage and _whole(self.config.leverage)),
        ):
            if not arg:
                continue
            try:
                await self._retry(fn, arg, self.symbol)
            except ccxt.ExchangeError as exc:  # e.g. Binance -4046 (already set) or -4047 (open orders)
                log.warning("could not set %s %s: %s; the exchange keeps its setting", what, arg, exc)
                self.journal.note("setup", f"could not set {what} {arg}: {exc}")
            except RETRYABLE as exc:  # no answer after every try: not refused, so try again in the background
                log.warning("could not set %s %s on start (%s); trying again in the background", what, arg, type(exc).__name__)
                self.journal.note("setup", f"could not set {what} {arg} on start ({type(exc).__name__}); trying again")
                self._setting(what, arg, fn)
        # the first reconciliation must succeed before the strategy starts; each try is bounded
        for attempt in range(self.config.max_attempts):
            try:
                await asyncio.wait_for(self.reconcile(), self.config.reconcile_timeout_s)
                return
            except (TimeoutError, *RETRYABLE) as exc:
                self.stats["reconcile_failures"] += 1
                if attempt == self.config.max_attempts - 1:
                    raise ExchangeError(f"could not reconcile with {exchange.id} on start: {type(exc).__name__} {exc}") from exc
                log.warning("first reconcile failed (%s); trying again", type(exc).__name__)

    async def _set_position_mode(self, exchange: Any) -> None:
        """``broker.position_mode`` on start (ccxt ``set_position_mode``; Binance POST
        /fapi/v1/positionSide/dual). Binance -4059 "No need to change position side" means it is
        set already; -4067/-4068 (open orders, a position) mean the account cannot switch: the
        run stops with one line saying so, as trading in the wrong mode would be refused order by
        order (-4061)."""
        mode = self.config.position_mode
        if exchange.id != "binanceusdm":
            raise ExchangeError(
                f"broker.position_mode={mode}: switching the position mode is supported on binanceusdm only, not {exchange.id}"
            )
        try:
            await self._retry(exchange.set_position_mode, mode == "hedge")
        except ccxt.ExchangeError as exc:
            text = str(exc)
            if "-4059" in text:  # already in that mode
                return
            if "-4067" in text or "-4068" in text:
                held = "open orders" if "-4067" in text else "a position"
                raise ExchangeError(
                    f"broker.position_mode={mode}: the {exchange.id} account holds {held} in the other position mode and cannot switch "
                    "(Binance -4067/-4068); close them, or run with the account's mode"
                ) from None
            raise ExchangeError(f"broker.position_mode={mode}: {exchange.id} refused to switch: {text}") from None
        self.journal.note("setup", f"position mode set to {mode}")

    def owns(self, client_id: str | None) -> bool:
        return bool(client_id) and client_id.startswith(self.prefixes)

    def _spawn(self, coro, name: str | None = None) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name or coro.__qualname__)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("live broker task %s failed: %s: %s", task.get_name(), type(task.exception()).__name__, task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _call(self, fn, *args, **kwargs):
        """One request, bounded by :attr:`request_bound_s`; running over it is a ccxt
        ``RequestTimeout`` (retryable: the caller looks an order up before sending it again)."""
        try:
            return await asyncio.wait_for(fn(*args, **kwargs), self.request_bound_s)
        except TimeoutError:
            self.stats["requests_timed_out"] += 1
            raise ccxt.RequestTimeout(f"{getattr(fn, '__name__', fn)}: no answer within {self.request_bound_s:g} s") from None
        except ccxt.InvalidNonce:  # Binance -1021: our timestamp is outside the window: re-measure the clock
            self._sync_clock()
            raise

    def _sync_clock(self) -> None:
        """Set ccxt's ``timeDifference`` (local minus exchange, what its nonce subtracts) from the
        offset measured on the answers."""
        offset = getattr(self.exchange, "_quant_clock_offset_ms", None)
        if offset is not None:
            self.exchange.options["timeDifference"] = -offset
            self.stats["clock_syncs"] += 1
            log.warning("timestamp outside the recvWindow: exchange clock is %+d ms from ours; adjusting", offset)

    # --- unknown orders: recvWindow ---------------------------------------------------------
    def _window_ms(self) -> int:
        """How long after a request ended (wall clock, ours) the exchange may still execute it.

        It takes the request while its clock is at most ``timestamp + recvWindow``; ccxt's
        timestamp is our clock minus ``timeDifference``, the exchange's clock ours plus the
        measured offset, so in our clock that is ``recvWindow - timeDifference - offset``, plus
        what the offset's measurement may be off (:data:`CLOCK_UNCERTAINTY_MS`)."""
        ex = self.exchange
        difference = int((ex.options or {}).get("timeDifference") or 0)
        offset = int(getattr(ex, "_quant_clock_offset_ms", 0) or 0)
        self._clock_moved(offset)
        return max(0, self.config.recv_window_ms - difference - offset) + CLOCK_UNCERTAINTY_MS

    def _clock_moved(self, offset: int) -> None:
        """The exchange clock fell behind ours by more than the measurement's noise (its clock was
        set back, or ours stepped forward): a request sent before may execute that much later in
        our clock, so every pending moment moves by as much (journalled)."""
        last = self._clock_offset_ms
        if last is not None and last - offset > CLOCK_UNCERTAINTY_MS:
            for cid, until in list(self._unknown_until.items()):
                if until > time.time() * 1000:
                    self._answered_until[cid] = max(self._answered_until.get(cid, 0), until) + (last - offset)
                    self._set_unknown_until(cid, until + (last - offset))
        if last is None or abs(last - offset) > CLOCK_UNCERTAINTY_MS:
            self._clock_offset_ms = offset

    def _sending(self, cid: str) -> None:
        """Before a request that may place ``cid`` leaves: journal the latest moment it could
        execute (it may wait in ccxt's throttle up to the request bound before it is signed)."""
        until = int(time.time() * 1000 + self.request_bound_s * 1000) + self._window_ms()
        self._set_unknown_until(cid, max(self._answered_until.get(cid, 0), until))

    def _sent(self, cid: str) -> None:
        """That request ended (answered, failed or abandoned): its timestamp is in the past."""
        until = max(self._answered_until.get(cid, 0), int(time.time() * 1000) + self._window_ms())
        self._answered_until[cid] = until
        self._set_unknown_until(cid, until)

    def _set_unknown_until(self, cid: str, until: int) -> None:
        self._unknown_until[cid] = until
        self.journal.set_unknown_until(cid, until)

    def _still_unknown(self, cid: str, asked_ms: float) -> bool:
        """A look-up asked at ``asked_ms`` (our clock) that did not find ``cid`` proves nothing
        while a request placing it could still execute after that moment. The moment the look-up
        was *sent* is what counts, not when its answer is read: on a stalled machine "no such
        order" can be read after the placement's last moment although the exchange answered before
        a late execution of it (the sweep's seed 612 under load lost a fill that way)."""
        self._window_ms()  # a clock that moved since moves the moment first
        return asked_ms < self._unknown_until.get(cid, 0)

    async def _wait_out(self, cid: str) -> None:
        self._window_ms()  # a clock that moved since moves the moment first
        counted = False
        while (wait_s := (self._unknown_until.get(cid, 0) - time.time() * 1000) / 1000) > 0:
            if not counted:
                self.stats["unknown_waits"] += 1
                counted = True
            await asyncio.sleep(wait_s)
            self._window_ms()

    async def _retry(self, fn, *args, **kwargs):
        """Call an idempotent request (reads, leverage) with backoff on network errors."""
        delay = self.config.backoff_s
        for attempt in range(self.config.max_attempts):
            try:
                return await self._call(fn, *args, **kwargs)
            except RETRYABLE as exc:
                if attempt == self.config.max_attempts - 1:
                    raise
                delay = await self._backoff(exc, delay)

    async def _backoff(self, exc: BaseException, delay: float) -> float:
        """Wait before a retry (a 429/418 also holds back every request: :func:`install_gate`)."""
        self.stats["retries"] += 1
        await asyncio.sleep(delay)
        return min(delay * 2, 1.0)

    # --- Broker API -----------------------------------------------------------------------
    def submit(self, order: Order) -> None:
        reason = position_side_refusal(self.position_mode, order)  # the exchange's rule, refused before sending
        if reason is not None:
            self._events.append(OrderEvent(order.transition(OrderStatus.REJECTED, reason=reason, updated_ms=self._now)))
            return
        order = self._apply_filters(order)
        if order.status is not OrderStatus.PENDING:
            self._events.append(OrderEvent(order))
            return
        order = replace(order, created_ms=order.created_ms or self._now)
        self._orders[order.client_id] = order
        self.journal.save_order(order)  # before sending: a crash after this can always find it
        self._sending(order.client_id)
        self._known.add(order.client_id)
        self._placing[order.client_id] = self._spawn(self._place(order), f"place {order.client_id}")
        self._requests_sent += 1

    def _apply_filters(self, order: Order) -> Order:
        """Round to the exchange's tick and lot and check its minimum notional (Binance filters)."""
        ex, sym = self.exchange, self.symbol
        qty = float(ex.amount_to_precision(sym, order.quantity))
        price = None if order.price is None else float(ex.price_to_precision(sym, order.price))
        min_cost = ((self.market.get("limits") or {}).get("cost") or {}).get("min") or 0.0
        ref = price if price is not None else self._price
        if qty <= 0:
            return order.transition(OrderStatus.REJECTED, reason=f"quantity {order.quantity} rounds to 0 at the exchange's lot size")
        if not order.reduce_only and not order.position_side.closes(order.side) and ref and qty * ref < min_cost:
            return order.transition(OrderStatus.REJECTED, reason=f"notional {qty * ref:.2f} below the exchange minimum {min_cost}")
        return replace(order, quantity=qty, price=price)

    async def _place(self, order: Order) -> None:
        ex, cid = self.exchange, order.client_id
        params: dict[str, Any] = {"clientOrderId": cid}
        if order.post_only:
            params["postOnly"] = True
        if order.reduce_only:
            params["reduceOnly"] = True
        if order.position_side is not PositionSide.BOTH:  # hedge mode: which position it trades
            params["positionSide"] = order.position_side.value
        kind = "limit" if order.type is OrderType.LIMIT else "market"
        delay = self.config.backoff_s
        try:
            for attempt in range(self.config.max_attempts):
                if attempt:
                    # the last request may have reached the exchange: never send again before
                    # looking, and "not found" counts only once no request sent can still execute
                    asked = time.time() * 1000
                    found = await self._lookup(cid)
                    if found is None and self._still_unknown(cid, asked):
                        await self._wait_out(cid)
                        found = await self._lookup(cid)
                    if found is not None:
                        self.on_exchange_order(found)
                        return
                    if cid in self._cancel_wanted:
                        # no try of it can execute any more, and the strategy has asked to cancel
                        # it meanwhile: it is not sent again just to be canceled (should it show
                        # up after all, it is adopted back: inferred)
                        self._final(cid, OrderStatus.CANCELED, "canceled before it reached the exchange", inferred=True)
                        return
                self._sending(cid)
                try:
                    answer = await self._call(ex.create_order, self.symbol, kind, order.side.value, order.quantity, order.price, params)
                    self._sent(cid)
                    self.on_exchange_order(answer)
                    return
                except ccxt.InsufficientFunds as exc:
                    # this request was refused; any earlier one was waited out above
                    self._final(cid, OrderStatus.REJECTED, f"exchange: insufficient margin ({exc})")
                    return
                except ccxt.OrderImmediatelyFillable as exc:
                    self._final(cid, OrderStatus.EXPIRED, f"post-only would cross ({exc})")
                    return
                except RETRYABLE as exc:
                    log.info("order %s: %s; looking it up before retrying", cid, type(exc).__name__)
                    self._sent(cid)
                    delay = await self._backoff(exc, delay)
                except ccxt.ExchangeError as exc:  # refused (or a duplicate id of our own earlier try)
                    found = await self._lookup(cid)
                    if found is not None:
                        self.on_exchange_order(found)
                    else:
                        self._final(cid, OrderStatus.REJECTED, f"exchange: {exc}")
                    return
            self._give_up(f"order {cid}", self.config.max_attempts)
        except RETRYABLE as exc:  # the look-up itself kept failing
            self._give_up(f"order {cid} (look-up: {type(exc).__name__})", self.config.max_attempts)
        finally:
            if cid in self._answered_until or cid in self._unknown_until:
                self._sent(cid)  # also when cancelled: whatever left did so before now
            self._placing.pop(cid, None)

    def _give_up(self, what: str, attempts: int) -> None:
        self.stats["gave_up"] += 1
        log.warning("%s: unresolved after %d attempts; reconciliation will settle it", what, attempts)
        if self.reconcile_wanted is not None:
            self.reconcile_wanted.set()  # soon, not at the next periodic pass

    async def _lookup(self, cid: str) -> dict | None:
        """The exchange's order with client id ``cid``, None if it has none; network errors are
        retried up to ``max_attempts`` times, then raised (the caller leaves the order to
        reconciliation, which looks again)."""
        self.stats["lookups"] += 1
        try:
            return await self._retry(self.exchange.fetch_order, None, self.symbol, client_id_params(self.exchange.id, cid, lookup=True))
        except ccxt.OrderNotFound:
            return None

    def cancel(self, client_id: str) -> None:
        """Ask to cancel; at most one cancel request per order is under way (see module doc)."""
        if client_id not in self._orders:
            return
        self._cancel_wanted.add(client_id)
        if client_id in self._canceling:
            self.stats["cancels_coalesced"] += 1
            return
        self._canceling[client_id] = self._spawn(self._cancel(client_id), f"cancel {client_id}")
        self._requests_sent += 1

    async def _cancel(self, cid: str) -> None:
        try:
            placing = self._placing.get(cid)
            if placing is not None:  # the exchange must know the order before it can cancel it
                await asyncio.wait({placing})
            if cid not in self._orders:
                return  # final meanwhile (rejected, filled, canceled)
            delay = self.config.backoff_s
            for _ in range(self.config.max_attempts):
                try:
                    answer = await self._call(self.exchange.cancel_order, None, self.symbol, client_id_params(self.exchange.id, cid))
                    self.on_exchange_order(answer)
                    return
                except RETRYABLE as exc:  # a repeated cancel is harmless: Binance answers -2011 if it is gone
                    delay = await self._backoff(exc, delay)
                except ccxt.ExchangeError:
                    break  # already final (or never arrived): the lookup says which
            asked = time.time() * 1000
            found = await self._lookup(cid)
            if found is not None:
                self.on_exchange_order(found)
            elif cid not in self._placing and not self._still_unknown(cid, asked):
                self._final(cid, OrderStatus.CANCELED, "not on the exchange", inferred=True)
            elif cid not in self._placing:
                # its placement may still execute: it stays wanted canceled, and the next
                # reconciliation sends the cancel again (or finds it ended)
                self.stats["unknown_waits"] += 1
        except RETRYABLE as exc:
            self._give_up(f"cancel {cid} (look-up: {type(exc).__name__})", self.config.max_attempts)
        finally:
            self._canceling.pop(cid, None)

    def _final(self, cid: str, status: OrderStatus, reason: str, inferred: bool = False) -> None:
        """End an order in the mirror. ``inferred``: the exchange did not say so, a look-up found
        no such order; should the exchange show it later after all, it is taken back."""
        order = self._orders.pop(cid, None)
        self._cancel_wanted.discard(cid)
        if order is None or not order.is_open:
            return
        if inferred:
            self._inferred[cid] = order
            self.journal.mark_inferred(cid)
        done = order.transition(status, reason=reason, updated_ms=self._now)
        self.journal.save_order(done)
        self._events.append(OrderEvent(done))

    # --- exchange -> mirror ---------------------------------------------------------------
    def on_exchange_order(self, data: dict, trades: list[dict] | None = None) -> None:
        """Apply one ccxt order (REST answer or websocket update): fills first, then status.

        A new fill's fee is the exchange's commission: from the push itself when it carries this
        very trade (``ORDER_TRADE_UPDATE`` ``n``/``N`` with ``l`` equal to the new quantity), else
        from the order's trades (``GET /fapi/v1/userTrades``, ``trades``): the order's commission
        up to the new cumulative quantity minus what earlier fills of it already booked. While
        those trades are being fetched, later news of the order waits behind the fill."""
        cid = data.get("clientOrderId")
        if cid not in self._known and not self.owns(cid):
            return  # not this bot's order (a user's manual order, another bot's): never touched
        if cid in self._commission_lookups and trades is None:
            self._hold(cid, data)
            return
        known = self._orders.get(cid)
        if known is None and cid not in self._inferred and cid in self._known:
            known = self._adopted(cid, data)
        if known is None and cid in self._inferred:
            # ended because a look-up did not find it, and now the exchange shows it: it wins
            known = self._inferred.pop(cid)
            self.stats["revived"] += 1
            self.journal.note(
                "revived", f"order {cid} was taken as ended (not found), the exchange has it {data.get('status')}: exchange wins"
            )
            log.warning("order %s reappeared on the exchange (%s); taking it back", cid, data.get("status"))
        if known is None:
            if data.get("status") == "open" and cid not in self._known:
                self.stats["orphans_canceled"] += 1
                self.journal.note("orphan", f"open order {cid} is ours but unknown to the journal: canceled")
                log.warning("orphan order %s (own prefix, not in the journal): canceling", cid)
                self._orders[cid] = self._order_from(data)
                self._known.add(cid)
                self.cancel(cid)
            return
        filled = float(data.get("filled") or 0.0)
        avg = float(data.get("average") or data.get("price") or 0.0)
        ts = int(data.get("lastTradeTimestamp") or data.get("timestamp") or self._now)
        if data.get("id") and known.exchange_id is None:
            known = replace(known, exchange_id=str(data["id"]))
        eps = self.instrument.lot_size / 2
        start_status, fill_status = known.status, None
        if filled > known.filled_qty + eps:
            qty = filled - known.filled_qty
            price = (avg * filled - known.avg_fill_price * known.filled_qty) / qty if known.filled_qty else avg
            maker = known.post_only or (known.type is OrderType.LIMIT and data.get("postOnly"))
            fee = self._pushed_commission(data, known.filled_qty, filled)
            if fee is None and trades is None:
                self._hold(cid, data)
                exchange_id = data.get("id") or known.exchange_id
                self._commission_lookups[cid] = self._spawn(self._commission_of(cid, exchange_id), f"commission {cid}")
                return
            if fee is None:
                fee = self._traded_commission(cid, trades, filled)
            if fee is None:  # the trades could not be read: Binance's fee schedule instead
                self.stats["fees_estimated"] += 1
                fee = qty * price * (self.instrument.maker_fee if maker else self.instrument.taker_fee)
            status = OrderStatus.FILLED if filled >= known.quantity - eps else OrderStatus.PARTIALLY_FILLED
            after = known.transition(status, filled_qty=filled, avg_fill_price=avg, updated_ms=ts)
            fill = Fill(
                trade_id=f"{cid}@{self.instrument.round_qty(filled):.{self.instrument.qty_decimals}f}",
                client_id=cid,
                symbol=known.symbol,
                side=known.side,
                price=round(price, 10),
                quantity=self.instrument.round_qty(qty) or qty,
                fee=fee,
                ts_ms=ts,
                is_maker=bool(maker),
                tag=known.tag,
                position_side=known.position_side,
            )
            if self.journal.record_fill(fill, after):
                # the position moves with the fill; the wallet is the exchange's (the balance push
                # that follows the fill, or REST), never an estimate added on top of it
                self._account.position(self.symbol, fill.position_side).apply(fill)
                self._events.append(FillEvent(fill, after))
                fill_status = after.status
            known = after
        new_status = order_status(data)
        if new_status is None and data.get("status") == "open" and known.status is OrderStatus.PENDING:
            new_status = OrderStatus.NEW
        if new_status is OrderStatus.FILLED and filled < known.quantity - eps:
            new_status = None  # an out-of-order "closed" ahead of its fill: wait for the quantity
        if new_status is not None and new_status is not known.status and new_status in _next(known.status):
            info = data.get("info") if isinstance(data.get("info"), dict) else {}
            reason = None if new_status is OrderStatus.NEW else str(info.get("status") or info.get("orderStatus") or data.get("status"))
            known = known.transition(new_status, updated_ms=ts, reason=reason)
        if known is not self._orders.get(cid):
            self.journal.save_order(known)
            if known.status is not start_status and known.status is not fill_status:
                self._events.append(OrderEvent(known))
        if known.is_open:
            self._orders[cid] = known
        else:
            self._orders.pop(cid, None)
            self._cancel_wanted.discard(cid)
        if fill_status is not None and self.deliver is not None:
            # the fill was journalled as delivered: hand it to the strategy in the same synchronous
            # step (no await between), so that a SIGKILL cannot fall between the two
            self.deliver()

    def _fills_in_flight(self) -> bool:
        return bool(self._placing or self._canceling or self._commission_lookups)

    def _journal_position(self, side: PositionSide = PositionSide.BOTH) -> float:
        """The position of ``side`` the journal's fills built, plus what reconciliation found beyond them."""
        total = self.journal.position_sum(None if side is PositionSide.BOTH else side)
        return round(total + float(self.journal.get(_offset_key(side), 0.0) or 0.0), self.instrument.qty_decimals)

    def _hold(self, cid: str, data: dict) -> None:
        """Keep the newest news of an order whose fill waits for its commission (the largest
        cumulative quantity; at equal quantity a final status over an open one, then the later
        exchange update time).

        A copy is kept: ccxt.pro merges every push of an order into one cached dict
        (``ArrayCacheBySymbolById.append`` updates it in place), so a push delivered late would
        turn news held by reference back into the older state (a canceled order open again)."""

        def rank(d: dict) -> tuple[float, bool, int]:
            return float(d.get("filled") or 0.0), order_status(d) is not None, int(d.get("lastUpdateTimestamp") or 0)

        held = self._held.get(cid)
        if held is None or rank(data) >= rank(held):
            self._held[cid] = dict(data)

    def _pushed_commission(self, data: dict, before: float, filled: float) -> float | None:
        """The commission a Binance ``ORDER_TRADE_UPDATE`` push reports (``n``, in asset ``N``)
        when that trade (``l``) is exactly the quantity between ``before`` and ``filled``."""
        info = data.get("info") or {}
        if not isinstance(info, dict) or info.get("x") != "TRADE" or info.get("n") is None or info.get("l") is None:
            return None
        eps = self.instrument.lot_size / 2
        if (
            info.get("N") != self._settle_id
            or abs(float(info.get("z", -1)) - filled) > eps
            or abs(filled - float(info["l"]) - before) > eps
        ):
            return None
        return float(info["n"])

    def _traded_commission(self, cid: str, trades: list[dict], filled: float) -> float | None:
        """The order's commission over its trades up to cumulative ``filled``, minus what its
        earlier fills booked; None when the trades do not cover ``filled`` or are not in the
        settle asset."""
        eps = self.instrument.lot_size / 2
        total = qty = 0.0
        for trade in sorted(trades, key=lambda t: int(t.get("id") or 0)):
            if qty >= filled - eps:
                break
            fee = trade.get("fee") or {}
            if fee.get("cost") is None or fee.get("currency") not in (self._settle_id, self.market.get("settle")):
                return None
            total += float(fee["cost"])
            qty += float(trade.get("amount") or 0.0)
        if abs(qty - filled) > eps:
            return None
        return total - self.journal.fees_booked(cid)

    async def _commission_of(self, cid: str, exchange_id: str | None) -> None:
        """Read the order's trades, then apply the held news with them (bounded: on failure the
        fee falls back to the fee schedule, counted in ``fees_estimated``)."""
        trades: list[dict] = []
        try:
            if exchange_id:
                trades = await self._retry(self.exchange.fetch_my_trades, self.symbol, None, None, {"orderId": exchange_id})
        except (ccxt.ExchangeError, *RETRYABLE) as exc:
            log.info("trades of %s: %s; fee from the fee schedule", cid, type(exc).__name__)
        finally:
            # whatever ends the read (also a cancel, or an error not caught above), the order must
            # not stay marked as waiting: its news would be held for good and reconciliation would
            # skip it as busy
            self._commission_lookups.pop(cid, None)
            held = self._held.pop(cid, None)
        if held is not None:
            self.on_exchange_order(held, trades=trades)

    def _adopted(self, cid: str, data: dict) -> Order | None:
        """An order this bot sent and took as ended (in this life or an earlier one) that the
        exchange shows open, or with more filled than the journal holds: it executed after all.
        It is taken back from the journal's record, so its fills are delivered (once)."""
        record = self.journal.order(cid)
        if record is None or record.is_open:
            return None
        filled = float(data.get("filled") or 0.0)
        more_filled = filled > record.filled_qty + self.instrument.lot_size / 2  # fills only grow: never stale news
        # "open" news of an order the exchange itself reported canceled or filled may be a late
        # push; of one it refused, or that the bot only inferred ended, it is another request landing
        landed = data.get("status") == "open" and (record.status is OrderStatus.REJECTED or self.journal.inferred(cid))
        if not (more_filled or landed):
            return None
        self.stats["adopted"] += 1
        self.journal.note(
            "adopted",
            f"order {cid} was {record.status.value}, the exchange has it {data.get('status')} with {filled:g} filled: exchange wins",
        )
        log.warning("order %s (%s in the journal) is %s on the exchange; adopting it", cid, record.status.value, data.get("status"))
        status = OrderStatus.PARTIALLY_FILLED if record.filled_qty else OrderStatus.NEW
        return replace(record, status=status, reason=None)

    def _order_from(self, data: dict) -> Order:
        return Order(
            client_id=data["clientOrderId"],
            symbol=self.symbol,
            side=Side(data["side"]),
            type=OrderType.LIMIT if data.get("type") == "limit" else OrderType.MARKET,
            quantity=float(data["amount"]),
            price=data.get("price"),
            status=OrderStatus.NEW,
            filled_qty=float(data.get("filled") or 0.0),
            exchange_id=str(data.get("id")),
            position_side=PositionSide(str((data.get("info") or {}).get("positionSide") or "BOTH").upper()),
        )

    def on_exchange_position(self, positions: list[dict]) -> dict:
        """Margin figures from a position update; returns the exchange's (signed quantity, entry)
        of each of :attr:`sides` (one-way: BOTH; hedge mode: LONG and SHORT, flat when not listed).

        The mirror's quantity moves only with fills (a position push may arrive before or after
        the order update carrying the same fill); reconciliation corrects it from REST."""
        snap = {side: (0.0, 0.0) for side in self.sides}
        for p in positions:
            if p.get("symbol") != self.symbol:
                continue
            short = p.get("side") == "short"
            side = PositionSide.BOTH
            if self.position_mode == "hedge":  # ccxt's side is the row's positionSide (REST) or ps (push)
                name = str(p.get("side") or (p.get("info") or {}).get("positionSide") or "").upper()
                if name not in ("LONG", "SHORT"):
                    continue
                side = PositionSide(name)
            contracts = float(p.get("contracts") or 0.0)
            margin = {
                k: p.get(k) for k in ("marginMode", "leverage", "initialMargin", "maintenanceMargin", "liquidationPrice", "collateral")
            }
            self._margins[side] = margin
            if side is PositionSide.BOTH or contracts or not self._margin:  # hedge mode: an open leg's figures
                self._margin = margin
            snap[side] = (contracts * (1 if not short else -1), float(p.get("entryPrice") or 0.0))
            if side is PositionSide.BOTH:
                break
        return snap

    def on_exchange_balance(self, balance: dict, pushed: bool = True) -> None:
        """Wallet balance from an ``ACCOUNT_UPDATE`` push or a REST read (``pushed=False``). A push
        can arrive late, after a newer one or a newer REST read: a pushed balance whose change
        time (``T``) is older than the last change applied is stale and ignored. A REST read is
        the exchange's state when it was read and always applies (its asset ``updateTime`` moves
        the change time forward)."""
        quote = self.market["settle"] or self.market["quote"]
        total = (balance.get(quote) or {}).get("total")
        info = balance.get("info") or {}
        changed = _balance_time(info, self.market.get("settleId") or quote)
        if changed is not None:
            if pushed and changed < self._balance_ms:
                self.stats["stale_updates"] += 1
                return
            self._balance_ms = max(self._balance_ms, changed)
        wallet = info.get("totalWalletBalance") if isinstance(info, dict) else None
        value = wallet if wallet is not None else total
        if value is not None:
            self._account.wallet_balance = float(value)
        self._free = (balance.get(quote) or {}).get("free")

    # --- reconciliation -------------------------------------------------------------------
    async def reconcile(self) -> dict:
        """Make the mirror equal to the exchange (see module docstring); returns a summary.

        One at a time: a call while another runs waits for it and then makes its own pass (the
        caller wants a picture taken after its call). Every request is bounded and retried at
        most ``max_attempts`` times, and the look-ups of orders missing from the open list run
        side by side, so a pass takes a few request times, not one per order."""
        async with self._reconcile_lock:
            return await self._reconcile()

    async def _reconcile(self) -> dict:
        ex = self.exchange
        started_ms = int(time.time() * 1000)
        first = None
        busy_at_start = self._fills_in_flight()
        requests_at_start = bool(self._placing or self._canceling), self._requests_sent
        if self.instrument.is_perpetual:
            first = self.on_exchange_position(await self._retry(ex.fetch_positions, [self.symbol]))
            if not self._entry_known:
                for side, (_, entry) in first.items():
                    self._account.position(self.symbol, side).entry_price = entry
                self._entry_known = True
        open_orders = await self._retry(ex.fetch_open_orders, self.symbol)
        live_ids = set()
        for data in open_orders:
            if data.get("clientOrderId") in self._known or self.owns(data.get("clientOrderId")):
                live_ids.add(data["clientOrderId"])
                self.on_exchange_order(data)
        # orders the mirror holds open that the exchange does not list: filled or canceled
        # while an update was lost, or never placed. A place or cancel under way settles its own
        # order (its answer is the order's state). An order whose fill waits for its fee is
        # looked up all the same: what is found waits with that fill (_hold), so the state the
        # fee read applies is at least as new as this pass (else news from before the pass could
        # leave a canceled order open with nothing under way to correct it).
        busy = self._placing.keys() | self._canceling.keys()
        missing = [cid for cid in self._orders if cid not in live_ids and cid not in busy]
        asked = time.time() * 1000  # each look-up below is sent at or after this moment
        found = await asyncio.gather(*(self._lookup(cid) for cid in missing))
        unknown = False
        for cid, data in zip(missing, found):
            if data is not None:
                self.on_exchange_order(data)
            elif cid in self._orders and self._still_unknown(cid, asked):
                # not found, but a request placing it may still execute: it stays as it is (no
                # replacement is sent for an open order) and a later pass looks again
                self.stats["unknown_waits"] += 1
                unknown = True
                if self.reconcile_wanted is not None and cid not in self._rechecks:
                    self._rechecks.add(cid)
                    self._spawn(self._reconcile_after(cid), f"recheck {cid}")
            elif cid in self._orders and cid not in self._placing and cid not in self._commission_lookups:
                order = self._orders[cid]
                status = OrderStatus.REJECTED if order.status is OrderStatus.PENDING else OrderStatus.CANCELED
                self._final(
                    cid, status, "never reached the exchange" if status is OrderStatus.REJECTED else "gone from the exchange", inferred=True
                )
        # a cancel that gave up is sent again: the strategy asked for it once and will not ask again
        for cid in sorted(self._cancel_wanted):
            if cid in self._orders and cid not in self._canceling:
                self.cancel(cid)
            elif cid not in self._orders:
                self._cancel_wanted.discard(cid)
        if self.instrument.is_perpetual:
            # exchange truth for the position, taken only when it held still while the orders
            # above were read (else a fill in flight would be counted twice) and no request whose
            # answer may carry a fill the mirror lacks (place, cancel, commission) was under way
            snaps = self.on_exchange_position(await self._retry(ex.fetch_positions, [self.symbol]))
            if snaps == first and not busy_at_start and not self._fills_in_flight():
                for side, snap in snaps.items():
                    pos = self._account.position(self.symbol, side)
                    if abs(pos.quantity - snap[0]) > self.instrument.lot_size / 2:
                        named = "" if side is PositionSide.BOTH else f" {side.value}"
                        self.stats["disagreements"] += 1
                        self.journal.note("position", f"mirror had{named} {pos.quantity:g}, exchange has {snap[0]:g}: exchange wins")
                        log.warning("reconcile: position%s mirror %g, exchange %g; using the exchange's", named, pos.quantity, snap[0])
                        self.journal.set(
                            _offset_key(side), snap[0] - self.journal.position_sum(None if side is PositionSide.BOTH else side)
                        )
                    pos.quantity, pos.entry_price = snap
        self.on_exchange_balance(await self._retry(ex.fetch_balance), pushed=False)
        if self.position_mode == "hedge":
            after = {side.value: self._account.position(self.symbol, side).quantity for side in self.sides}
        else:
            after = self._account.position(self.symbol).quantity
        self.stats["reconciles"] += 1
        self.last_reconcile_ms = started_ms  # what it saw is at least as new as this
        # settled: no place or cancel from start to end, no order left unknown, and no fill found
        # by this pass still waiting for its fee (held, not yet in the mirror)
        if (
            requests_at_start == (False, self._requests_sent)
            and not (self._placing or self._canceling or self._commission_lookups)
            and not unknown
        ):
            self.last_settled_reconcile_ms = started_ms
        return {"open": sorted(live_ids), "position": after, "wallet": self._account.wallet_balance}

    async def reconcile_forever(self, after=None) -> None:
        """Reconcile every ``reconcile_s`` seconds, sooner when asked (:attr:`reconcile_wanted`: a
        websocket failed, a request gave up, an unknown order's window passed); each pass is
        bounded by ``reconcile_timeout_s``. ``after()`` runs after every pass (the driver pumps
        the engine)."""
        while True:
            try:
                await asyncio.wait_for(self.reconcile_wanted.wait(), self.config.reconcile_s)
            except TimeoutError:
                pass
            self.reconcile_wanted.clear()
            # bounded: a request that never answers must not stall reconciliation for good
            try:
                await asyncio.wait_for(self.reconcile(), self.config.reconcile_timeout_s)
            except Exception as exc:  # noqa: BLE001 - exchange trouble: the next turn tries again
                self.stats["reconcile_failures"] += 1
                log.warning("reconcile failed (%s: %s); retrying in %g s", type(exc).__name__, exc, self.config.reconcile_s)
            if after is not None:
                after()

    async def _reconcile_after(self, cid: str) -> None:
        """Ask for a reconciliation once ``cid`` can no longer execute unseen."""
        try:
            await self._wait_out(cid)
            self.reconcile_wanted.set()
        finally:
            self._rechecks.discard(cid)

    async def watch(self) -> None:
        """Websocket updates of orders, balance and position. After an error a stream waits a
        moment, asks for a reconciliation (:attr:`reconcile_wanted`, run by the driver's bounded
        reconcile loop) and subscribes again."""

        async def loop(name: str, fn, handle) -> None:
            delay = self.config.backoff_s
            while True:
                try:
                    handle(await fn())
                    delay = self.config.backoff_s
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a dropped socket, a bad frame: poll REST, then resubscribe
                    self.stats["ws_errors"] += 1
                    log.info("%s stream: %s; reconciling over REST", name, type(exc).__name__)
                    self.reconcile_wanted.set()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)

        ex = self.exchange
        tasks = [loop("orders", lambda: ex.watch_orders(self.symbol), lambda orders: [self.on_exchange_order(o) for o in orders])]
        if ex.has.get("watchBalance"):
            tasks.append(loop("balance", ex.watch_balance, self.on_exchange_balance))
        if self.instrument.is_perpetual and ex.has.get("watchPositions"):
            tasks.append(loop("positions", lambda: ex.watch_positions([self.symbol]), self.on_exchange_position))  # margin figures
        await asyncio.gather(*tasks)

    # --- views ----------------------------------------------------------------------------
    def events(self) -> list:
        events, self._events = self._events, []
        return events

    def open_orders(self) -> list[Order]:
        return [o for o in self._orders.values() if o.is_open]

    def account(self) -> Account:
        return self._account

    def equity(self) -> float:
        equity = self._account.wallet_balance
        for side in self.sides:
            pos = self._account.position(self.symbol, side)
            equity += pos.unrealized_pnl(self._price if math.isfinite(self._price) else pos.entry_price)
        return equity

    def set_market(self, price: float, now_ms: int) -> None:
        self._price, self._now = float(price), max(self._now, int(now_ms))

    @property
    def now_ms(self) -> int:
        return self._now

    @property
    def last_price(self) -> float:
        return self._price

    # --- margin ---------------------------------------------------------------------------
    def set_leverage(self, leverage: float) -> None:
        self._setting("leverage", _whole(leverage), self.exchange.set_leverage)

    def set_margin_mode(self, mode: str) -> None:
        self._setting("margin mode", mode, self.exchange.set_margin_mode)

    def _setting(self, kind: str, value: Any, fn) -> None:
        """One request per kind of setting under way; asking again while it runs only changes
        the value sent next (the newest wins), so repeated asks never pile up."""
        running = kind in self._settings
        self._settings[kind] = value
        if not running:
            self._spawn(self._apply_setting(kind, fn), f"set {kind}")

    async def _apply_setting(self, kind: str, fn) -> None:
        sent = object()
        try:
            while self._settings.get(kind, sent) != sent:
                sent = self._settings[kind]
                try:
                    await self._retry(fn, sent, self.symbol)
                    if kind == "leverage":
                        self._margin["leverage"] = sent
                    elif kind == "margin mode":
                        self._margin["marginMode"] = sent
                except (ccxt.ExchangeError, *RETRYABLE) as exc:  # e.g. -4046 already set, -4047 open orders
                    log.warning("could not set %s %s: %s", kind, sent, exc)
                    self.journal.note("setup", f"could not set {kind} {sent}: {exc}")
        finally:
            self._settings.pop(kind, None)

    def adjust_margin(self, amount: float, position_side: PositionSide | str = PositionSide.BOTH) -> None:
        """Add (or remove) isolated margin. Sent once, never retried: Binance's positionMargin has
        no idempotency key, so a retry after a timeout could move the money twice. Until it is
        answered the amount counts in :meth:`margin`, so the strategy does not ask twice."""
        side = PositionSide(position_side)
        self._margin_pending += amount
        self._side_pending[side] = self._side_pending.get(side, 0.0) + amount
        self._spawn(self._adjust_margin(amount, side), "adjust margin")

    async def _adjust_margin(self, amount: float, position_side: PositionSide = PositionSide.BOTH) -> None:
        fn, args = (self.exchange.add_margin if amount > 0 else self.exchange.reduce_margin), (self.symbol, abs(amount))
        if position_side is not PositionSide.BOTH:  # hedge mode: Binance positionMargin's positionSide
            args = (*args, {"positionSide": position_side.value})
        if self.exchange.id == "bybit":  # ccxt has no addMargin for Bybit: its v5 "add or reduce margin" call
            fn = self.exchange.private_post_v5_position_add_margin
            args = (
                {"category": "linear", "symbol": self.market["id"], "margin": self.exchange.number_to_string(amount), "positionIdx": 0},
            )
        try:
            await self._call(fn, *args)
            figures = self._margin if position_side is PositionSide.BOTH else self._margins.get(position_side, {})
            if figures.get("collateral") is not None:
                figures["collateral"] = float(figures["collateral"]) + amount  # until the next position update
        except (ccxt.ExchangeError, *RETRYABLE) as exc:
            log.warning("could not adjust margin by %g: %s", amount, exc)
            self.journal.note("margin", f"could not adjust margin by {amount:g}: {exc}")
        finally:
            self._margin_pending -= amount
            self._side_pending[position_side] = self._side_pending.get(position_side, 0.0) - amount

    def margin(self, position_side: PositionSide | str = PositionSide.BOTH) -> MarginState:
        """The margin figures of the last position update; hedge mode with ``position_side`` LONG
        or SHORT: that position's row of Binance positionRisk (isolatedMargin as ccxt's
        ``collateral``, maintenance, liquidationPrice), with the symbol's leverage and margin mode
        as last set and the account's balances."""
        side = PositionSide(position_side)
        m = self._margin
        pending = self._margin_pending
        if side is not PositionSide.BOTH:
            if self.position_mode != "hedge":
                raise ExchangeError(f"margin of positionSide {side.value}: the bot trades one-way (Binance -4061)")
            m = {**self._margins.get(side, {}), **{k: self._margin.get(k) for k in ("marginMode", "leverage") if self._margin.get(k)}}
            pending = self._side_pending.get(side, 0.0)

        def num(key, default=0.0):
            value = m.get(key)
            return default if value is None else float(value)

        liq = m.get("liquidationPrice")
        return MarginState(
            mode=m.get("marginMode") or (self.config.margin_mode or "cross"),
            leverage=num("leverage", self.config.leverage or 1.0),
            wallet_balance=self._account.wallet_balance,
            position_margin=(num("collateral") or num("initialMargin")) + pending,
            maintenance_margin=num("maintenanceMargin"),
            available_balance=float(getattr(self, "_free", None) or self._account.wallet_balance),
            liquidation_price=float(liq) if liq else None,
        )


def _balance_time(info: Any, asset: str) -> int | None:
    """When the balance in a raw Binance answer last changed: ``T`` of an ``ACCOUNT_UPDATE`` push,
    the asset's ``updateTime`` in ``GET /fapi/v2|v3/account``; None when the answer has neither."""
    if not isinstance(info, dict):
        return None
    if info.get("e") == "ACCOUNT_UPDATE":
        return int(info["T"]) if info.get("T") is not None else None
    for row in info.get("assets") or ():
        if isinstance(row, dict) and row.get("asset") == asset and row.get("updateTime") is not None:
            return int(row["updateTime"])
    return None


def _offset_key(side: PositionSide) -> str:
    """Journal meta key of what reconciliation found beyond the bot's fills, per position side."""
    return "position_offset" if side is PositionSide.BOTH else f"position_offset_{side.value}"


def _whole(leverage: float) -> int:
    """Binance takes whole-number leverage (POST /fapi/v1/leverage, 1..125)."""
    return max(1, int(round(leverage)))


def _next(status: OrderStatus):
    from btc_quant.core.model import ORDER_TRANSITIONS

    return ORDER_TRANSITIONS[status]


@hookimpl
def quant_register_brokers(register):
    register("paper", PaperBroker)
    register("live", LiveBroker)


def run_live(config, plugins, **flags) -> dict:
    """``quant run`` with broker=paper/live: hand the run to the live driver."""
    from .driver import LiveRun

    return LiveRun(config, plugins, **flags).run()


PaperBroker.run_live = staticmethod(run_live)
LiveBroker.run_live = staticmethod(run_live)

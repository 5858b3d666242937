"""The engine: one loop that connects a strategy, the risk checks and a broker.

The engine owns no I/O. It routes every order from the strategy through the configured risk
checks to the broker, and every broker event (accepted, rejected, canceled, filled) back to the
strategy and to the observer hooks. A backtest, a paper run and a live run differ only in who
moves time forward:

* backtest: :meth:`Engine.run_backtest` drives a :class:`~btc_quant.core.broker.SimulatedBroker`
  over bar arrays with ``advance``, which skips bars on which nothing can happen;
* paper and live: a driver calls :meth:`Engine.on_bar_closed` as bars arrive and
  :meth:`Engine.pump` whenever the broker may have news (see the live broker plugin).

Strategies see the market only up to the last closed bar: ``ctx.bars()`` never includes a bar
whose close lies in the future of the event being handled.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from typing import Any

import numpy as np

from .broker import Broker, FillEvent, MarginState, OrderEvent, SimulatedBroker
from .data import BarArrays
from .errors import OrderError, StrategyError
from .margin import LIQUIDATION_FORMULAS
from .model import Bar, Fill, Instrument, Order, OrderStatus, Position, PositionSide, Side
from .plugins import PluginManager
from .results import RunInfo, RunResult
from .risk import KillSwitch, RiskCheck, RiskState
from .strategy import Strategy

log = logging.getLogger(__name__)


class BarHistory:
    """Closed bars as arrays: a window over preloaded bars (backtest) or a growing buffer (live)."""

    def __init__(self, bars: BarArrays | None = None) -> None:
        self._arrays = bars if bars is not None else BarArrays(*(np.empty(0, dtype=t) for t in (np.int64,) + (np.float64,) * 5))
        self._fixed = bars is not None
        self.closed = -1  # index of the last closed bar

    def close_through(self, index: int) -> None:
        self.closed = index

    def append(self, bar: Bar) -> None:
        """Live: add a newly closed bar (amortised growth)."""
        if self._fixed:
            raise StrategyError("cannot append to a backtest's bar history")
        n = self.closed + 1
        if n == len(self._arrays):
            grown = max(256, 2 * n)
            self._arrays = BarArrays(
                *(np.resize(getattr(self._arrays, c), grown) for c in ("ts", "open", "high", "low", "close", "volume"))
            )
        for name, value in zip(
            ("ts", "open", "high", "low", "close", "volume"), (bar.ts_ms, bar.open, bar.high, bar.low, bar.close, bar.volume)
        ):
            getattr(self._arrays, name)[n] = value
        self.closed = n

    def window(self, n: int | None = None) -> BarArrays:
        stop = self.closed + 1
        start = 0 if n is None else max(0, stop - n)
        return self._arrays[start:stop]

    def last(self) -> Bar | None:
        return None if self.closed < 0 else self._arrays.bar(self.closed)


class Context:
    """What a strategy acts through. Reads reflect the broker's view; orders go through risk checks."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # --- market ---------------------------------------------------------------------------
    @property
    def instrument(self) -> Instrument:
        return self._engine.instrument

    @property
    def now_ms(self) -> int:
        return self._engine.broker.now_ms

    @property
    def price(self) -> float:
        """Last known price: the last close, or the fill price while handling a fill."""
        return self._engine.broker.last_price

    @property
    def bar(self) -> Bar | None:
        """The last closed bar (None before the first)."""
        return self._engine.history.last()

    def bars(self, n: int | None = None) -> BarArrays:
        """The last ``n`` closed bars (all when None), oldest first."""
        return self._engine.history.window(n)

    # --- account --------------------------------------------------------------------------
    @property
    def position(self) -> Position:
        """The net position (one-way mode); in hedge mode see :meth:`position_of`."""
        return self._engine.broker.position()

    @property
    def position_mode(self) -> str:
        """``one_way`` or ``hedge`` (``broker.position_mode``): in hedge mode every order names its
        ``position_side`` (LONG or SHORT) and :meth:`position_of` gives each side's position."""
        return self._engine.broker.position_mode

    def position_of(self, position_side: PositionSide | str) -> Position:
        """The LONG or SHORT position (hedge mode), or the net one for ``BOTH``."""
        return self._engine.broker.position(position_side)

    @property
    def equity(self) -> float:
        return self._engine.broker.equity()

    @property
    def wallet_balance(self) -> float:
        return self._engine.broker.account().wallet_balance

    @property
    def open_orders(self) -> list[Order]:
        return self._engine.broker.open_orders()

    @property
    def halted(self) -> str | None:
        """Why the kill switch stopped trading, or None while trading is allowed."""
        return None if self._engine.halted is None else self._engine.halted.reason

    def order(self, client_id: str) -> Order | None:
        """The latest known state of one of this run's orders."""
        return self._engine.orders.get(client_id)

    # --- actions --------------------------------------------------------------------------
    def buy(self, quantity: float, price: float | None = None, **kwargs: Any) -> Order:
        """Buy ``quantity`` (rounded down to the lot) at market, or a limit at ``price`` (rounded down to the tick)."""
        return self._order(Side.BUY, quantity, price, **kwargs)

    def sell(self, quantity: float, price: float | None = None, **kwargs: Any) -> Order:
        """Sell ``quantity`` (rounded down to the lot) at market, or a limit at ``price`` (rounded up to the tick)."""
        return self._order(Side.SELL, quantity, price, **kwargs)

    def _order(
        self,
        side: Side,
        quantity: float,
        price: float | None,
        *,
        post_only: bool = False,
        reduce_only: bool = False,
        client_id: str | None = None,
        tag: str | None = None,
        position_side: PositionSide | str = PositionSide.BOTH,
    ) -> Order:
        inst = self.instrument
        position_side = PositionSide(position_side)
        qty = inst.round_qty(quantity)
        if qty <= 0:
            raise OrderError(f"{side.value} quantity {quantity!r} rounds to 0 at lot size {inst.lot_size}")
        if price is not None:
            price = inst.round_price(price, "down" if side is Side.BUY else "up")
        ref = price if price is not None else self.price
        notional_ok = reduce_only or position_side.closes(side) or ref * qty >= inst.min_notional
        if not notional_ok:
            raise OrderError(f"{side.value} {qty} at {ref:.2f} is below the minimum notional {inst.min_notional:g}")
        order = Order.create(
            inst,
            client_id or self._engine.next_client_id(),
            side,
            qty,
            price,
            post_only=post_only,
            reduce_only=reduce_only,
            ts_ms=self.now_ms,
            tag=tag,
            check_notional=False,
            position_side=position_side,
        )
        return self._engine.submit(order)

    def submit(self, order: Order) -> Order:
        """Send a prepared :class:`Order` (status PENDING)."""
        return self._engine.submit(order)

    def cancel(self, client_id: str) -> None:
        self._engine.broker.cancel(client_id)

    def amend(self, client_id: str, *, price: float | None = None, quantity: float | None = None) -> None:
        """Change an open limit order's price and/or quantity (cancel-replace: it loses its queue
        place); values are rounded like :meth:`buy`/:meth:`sell`. The new state arrives in ``on_order``."""
        order = self._engine.orders.get(client_id)
        inst = self.instrument
        if price is not None:
            buy = order is None or order.side is Side.BUY
            price = inst.round_price(price, "down" if buy else "up")
        if quantity is not None:
            quantity = inst.round_qty(quantity)
            if quantity <= 0:
                raise OrderError(f"amend {client_id}: quantity rounds to 0 at lot size {inst.lot_size}")
        self._engine.broker.amend(client_id, price=price, quantity=quantity)

    def cancel_all(self) -> None:
        for order in self.open_orders:
            self._engine.broker.cancel(order.client_id)

    # --- margin and wake-ups ---------------------------------------------------------------
    @property
    def margin(self) -> MarginState:
        """Leverage, margins, available balance and liquidation price (perpetuals)."""
        return self._engine.broker.margin()

    def margin_of(self, position_side: PositionSide | str) -> MarginState:
        """The margin picture of the LONG or SHORT position (hedge mode; ``BOTH``: :attr:`margin`):
        its isolated margin (cross: its initial margin), maintenance margin and liquidation price,
        with the account's wallet, leverage and available balance."""
        side = PositionSide(position_side)
        if side is PositionSide.BOTH:
            return self._engine.broker.margin()
        return self._engine.broker.margin(side)

    def set_leverage(self, leverage: float) -> None:
        self._engine.broker.set_leverage(leverage)

    def set_margin_mode(self, mode: str) -> None:
        self._engine.broker.set_margin_mode(mode)

    def adjust_margin(self, amount: float, position_side: PositionSide | str = PositionSide.BOTH) -> None:
        """Isolated margin: add (> 0) or remove (< 0) margin of the position (hedge mode: of the
        LONG or SHORT one)."""
        side = PositionSide(position_side)
        if side is PositionSide.BOTH:
            self._engine.broker.adjust_margin(amount)
        else:
            self._engine.broker.adjust_margin(amount, position_side=side)

    def wake_when_price_outside(self, low: float | None, high: float | None) -> None:
        """Call ``on_bar`` at the close of the first bar trading at/below ``low`` or at/above ``high``.

        For strategies with ``needs_every_bar = False`` whose next action depends on price (a grid
        moving its live window); one-shot, replaced by the next call.
        """
        self._engine.broker.set_price_alert(low, high)

    def order_target(self, quantity: float, **kwargs: Any) -> Order | None:
        """Market order for the difference between the position and ``quantity`` (signed)."""
        delta = quantity - self.position.quantity
        if abs(delta) < self.instrument.lot_size / 2:
            return None
        reduce_only = abs(quantity) < abs(self.position.quantity) and quantity * self.position.quantity >= 0
        side = Side.BUY if delta > 0 else Side.SELL
        return self._order(side, abs(delta), None, reduce_only=reduce_only or kwargs.pop("reduce_only", False), **kwargs)

    def log(self, message: str, *args: Any) -> None:
        log.info("[%s] " + message, self._engine.info.strategy, *args)


class Engine:
    """Routes orders strategy -> risk checks -> broker and events broker -> strategy."""

    def __init__(
        self,
        strategy: Strategy,
        broker: Broker,
        *,
        plugins: PluginManager,
        instrument: Instrument,
        risk_checks: list[tuple[str, RiskCheck]] | None = None,
        info: RunInfo | None = None,
        client_id_prefix: str | None = None,
    ) -> None:
        self.strategy = strategy
        self.broker = broker
        #: why the broker refused the strategy's compiled decisions (None: accepted or not offered)
        self.compiled_refusal: str | None = None
        self.plugins = plugins
        self.instrument = instrument
        self.risk_checks = list(risk_checks or [])
        self.info = info or RunInfo(uuid.uuid4().hex[:12], "backtest", type(strategy).__name__, type(broker).__name__, instrument, None)
        self.ctx = Context(self)
        self.history = BarHistory()
        self.orders: dict[str, Order] = {}
        self.fills: list[Fill] = []
        self.rejections: list[Order] = []
        self.halted: KillSwitch | None = None
        self._local: deque = deque()
        self._id_prefix = client_id_prefix or (self.info.strategy[:10] + "-" + self.info.run_id[:6])
        self._ids_issued = 0
        self._observers = [(n, c) for n, c in self.risk_checks if type(c).observe is not RiskCheck.observe]
        self._hook_fill = plugins.has_impls("quant_on_fill")
        self._hook_order = plugins.has_impls("quant_on_order")

    def why_not_compiled(self) -> str | None:
        """Why a strategy's compiled backtest cannot stand in for this engine's event path, as far
        as the engine is concerned (risk checks, plugins observing every order or fill, a halt);
        None if nothing here stops it. The strategy and the broker add their own reasons."""
        if self.risk_checks:
            return "risk checks are configured"
        if self.plugins.has_impls("quant_on_fill") or self.plugins.has_impls("quant_on_order"):
            return "a plugin observes every order or fill (quant_on_order / quant_on_fill)"
        if self.halted is not None:
            return "the engine is halted"
        if self.instrument.is_perpetual and self.instrument.exchange in LIQUIDATION_FORMULAS:
            # the venue core follows the exchange's rule (P_LIQRULE), maker_vol's compiled kernel computes
            # Binance's: such a run takes the event path (one decision here for every compiled loop)
            return f"{self.instrument.exchange} liquidates by its own formula, which only the event path computes"
        return None

    # --- orders ---------------------------------------------------------------------------
    def next_client_id(self) -> str:
        self._ids_issued += 1
        return f"{self._id_prefix}-{self._ids_issued}"

    def take_client_ids(self, count: int) -> tuple[str, int]:
        """Hand out the next ``count`` client ids at once, for code that builds them as arrays:
        returns ``(prefix, first)``; the ids are ``f"{prefix}-{first + k}"`` for ``k < count``,
        exactly what ``count`` calls of :meth:`next_client_id` would have returned."""
        first = self._ids_issued + 1
        self._ids_issued += count
        return self._id_prefix, first

    def submit(self, order: Order) -> Order:
        if order.status is not OrderStatus.PENDING:
            raise OrderError(f"order {order.client_id}: only new (pending) orders can be submitted, got {order.status.value}")
        if order.client_id in self.orders:
            raise OrderError(f"order {order.client_id}: client id already used in this run")
        if order.symbol != self.instrument.symbol:
            raise OrderError(f"order {order.client_id}: symbol {order.symbol} is not the run's {self.instrument.symbol}")
        self.orders[order.client_id] = order
        if self.halted is not None and not order.closes_only:
            return self._reject(order, f"kill switch engaged: {self.halted.reason}")
        if self.risk_checks:
            state = self.risk_state(order.position_side)
            for name, check in self.risk_checks:
                reason = check.check(order, state)
                if reason:
                    log.warning("order %s rejected by risk check %s: %s", order.client_id, name, reason)
                    return self._reject(order, f"risk {name}: {reason}")
        self.broker.submit(order)
        return order

    def _reject(self, order: Order, reason: str) -> Order:
        rejected = order.transition(OrderStatus.REJECTED, reason=reason, updated_ms=self.broker.now_ms)
        self.orders[order.client_id] = rejected
        self.rejections.append(rejected)
        self._local.append(OrderEvent(rejected))
        return rejected

    # --- risk -----------------------------------------------------------------------------
    def risk_state(self, position_side: PositionSide = PositionSide.BOTH) -> RiskState:
        """The account as the checks see it; ``position`` is the one an order of ``position_side``
        trades (hedge mode: its LONG or SHORT position)."""
        return RiskState(
            self.instrument,
            self.broker.position(position_side),
            self.broker.equity(),
            tuple(self.broker.open_orders()),
            self.broker.last_price,
            self.broker.now_ms,
        )

    def observe_risk(self) -> None:
        """Let the risk checks watch the account; engage the first kill switch one returns."""
        if self.halted is not None or not self._observers:
            return
        state = self.risk_state()
        for name, check in self._observers:
            switch = check.observe(state)
            if switch is not None:
                self.halt(f"{name}: {switch.reason}", flatten=switch.flatten)
                return

    def halt(self, reason: str, *, flatten: bool = False) -> None:
        """Refuse new orders from now on (reduce-only ones still pass); optionally flatten."""
        if self.halted is None:
            self.halted = KillSwitch(reason, flatten)
            log.warning("kill switch engaged (%s)%s", reason, "; flattening" if flatten else "")
        if flatten:
            self.flatten()

    def flatten(self) -> Order | None:
        """Cancel every open order and close the position at market (reduce-only; in hedge mode
        each side's with a SELL LONG / BUY SHORT). Returns the (last) closing order, or None."""
        for order in self.broker.open_orders():
            self.broker.cancel(order.client_id)
        self.pump()
        hedge = getattr(self.broker, "position_mode", "one_way") == "hedge"
        last = None
        for position_side in (PositionSide.LONG, PositionSide.SHORT) if hedge else (PositionSide.BOTH,):
            position = self.broker.position(position_side).quantity
            if abs(position) < self.instrument.lot_size / 2:
                continue
            last = Order.create(
                self.instrument,
                self.next_client_id(),
                Side.SELL if position > 0 else Side.BUY,
                self.instrument.round_qty(abs(position)),
                reduce_only=not hedge,
                ts_ms=self.broker.now_ms,
                tag="flatten",
                position_side=position_side,
            )
            self.submit(last)
        if last is not None:
            self.pump()
        return last

    # --- events ---------------------------------------------------------------------------
    def pump(self) -> int:
        """Deliver every pending event to the strategy and the hooks; returns how many."""
        handled = 0
        while True:
            if self._local:
                events = list(self._local)
                self._local.clear()
            else:
                events = self.broker.events()
                if not events:
                    return handled
            for event in events:
                handled += 1
                if isinstance(event, FillEvent):
                    self.orders[event.order.client_id] = event.order
                    self.fills.append(event.fill)
                    self.strategy.on_fill(self.ctx, event.fill)
                    if self._hook_fill:
                        self.plugins.hook.quant_on_fill(fill=event.fill, run=self.info)
                    self.observe_risk()
                else:
                    order = event.order
                    self.orders[order.client_id] = order
                    if order.status is OrderStatus.REJECTED and order not in self.rejections:
                        self.rejections.append(order)
                    self.strategy.on_order(self.ctx, order)
                    if self._hook_order:
                        self.plugins.hook.quant_on_order(order=order, run=self.info)

    def on_bar_closed(self, bar: Bar) -> None:
        """Live/paper driver: a new bar closed; record it and call ``on_bar``."""
        self.history.append(bar)
        self.observe_risk()
        self.strategy.on_bar(self.ctx, bar)
        self.pump()

    def start(self) -> None:
        self.broker.start()
        self.strategy.on_start(self.ctx)
        self.pump()
        self.plugins.call_optional("quant_on_run_start", run=self.info)

    def stop(self) -> None:
        self.strategy.on_stop(self.ctx)
        self.pump()
        self.broker.stop()

    # --- backtest -------------------------------------------------------------------------
    def run_backtest(self, bars: BarArrays) -> RunResult:
        from .metrics import build_result, count_trades  # metrics imports pandas-heavy helpers

        if not isinstance(self.broker, SimulatedBroker):
            raise StrategyError(f"broker {self.info.broker!r} cannot run a backtest; use broker=sim")
        external = getattr(self.broker, "run_external", None)
        if external is not None:  # another engine runs the whole backtest (broker=backtrader)
            return external(self, bars)
        if len(bars) == 0:
            raise StrategyError("no bars to run on")
        started = time.perf_counter()
        broker = self.broker
        broker.load(bars)
        self.history = BarHistory(bars)
        wake = None if self.strategy.needs_every_bar else np.asarray(self.strategy.wake_bars(bars), dtype=bool)
        if wake is not None and len(wake) != len(bars):
            raise StrategyError(f"wake_bars returned {len(wake)} flags for {len(bars)} bars")
        self.start()
        strategy, ctx, history, n = self.strategy, self.ctx, self.history, len(bars)
        while True:
            step = broker.advance(wake)
            if step.index >= n:
                break
            history.close_through(step.index if step.closed else step.index - 1)
            self.pump()
            if step.closed:
                self.observe_risk()
            if step.closed and (wake is None or step.alert or wake[step.index]):
                strategy.on_bar(ctx, bars.bar(step.index))
                self.pump()
        history.close_through(n - 1)
        self.stop()
        result = build_result(self, bars, broker).take_sources(broker)
        result.diagnostics = self.strategy.diagnostics()
        count_trades(result, self.strategy)
        result.elapsed_s = time.perf_counter() - started
        self.plugins.call_optional("quant_on_run_end", result=result)
        return result

"""``backtrader``: run an SDK strategy inside Backtrader's Cerebro on the same bars.

``quant run strategy=sma_cross broker=backtrader`` (or :func:`run_backtrader` from Python) gives
the same :class:`~btc_quant.sdk.RunResult` as ``broker=sim``, computed by Backtrader instead of
the native engine. It exists to cross-check the native simulator against an established one
(``tests/test_backtrader.py``) and as the Backtrader baseline of ``bench/``.

How our semantics map onto Backtrader's:

* bars -> a ``PandasData`` feed; ``on_bar`` runs in ``next()`` on the bars ``wake_bars`` names
  (every bar for ``needs_every_bar`` strategies), after the bar closed, as in the native engine;
* market orders -> ``Order.Market``, which Backtrader fills at the next bar's open (the sim's rule);
  limit orders -> ``Order.Limit`` (Backtrader fills a limit touched by the bar: ``touch``), post-only
  is not modelled by Backtrader and is refused here;
* fees -> a percentage commission on the notional at the instrument's taker rate (``maker`` for
  limit fills is not distinguished by Backtrader: use market orders for equality);
* the account -> stock-like cash accounting with ``checksubmit`` off (the sim allows leverage; the
  equity identity cash + position x close is the same as wallet + unrealised PnL);
* funding and liquidation do not exist in Backtrader: compare with ``broker.funding=off``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar

import backtrader as bt
import numpy as np
import pandas as pd
from pydantic import Field

from btc_quant.core.engine import Engine, RunInfo
from btc_quant.core.metrics import fills_frame, orders_frame
from btc_quant.core.results import assemble_result
from btc_quant.sdk import (
    BarArrays,
    BrokerConfig,
    Fill,
    Order,
    OrderError,
    OrderStatus,
    Position,
    RunResult,
    Side,
    SimulatedBroker,
    hookimpl,
)


class BacktraderConfig(BrokerConfig):
    initial_cash: float = Field(10_000.0, gt=0, description="starting cash in the quote currency")


class _Context:
    """The subset of :class:`~btc_quant.sdk.Context` a strategy uses, backed by Backtrader."""

    def __init__(self, runner: _Runner) -> None:
        self._r = runner

    instrument = property(lambda self: self._r.instrument)
    now_ms = property(lambda self: int(self._r.bars.ts[self._r.index]))
    price = property(lambda self: float(self._r.bars.close[self._r.index]))
    equity = property(lambda self: float(self._r.bt.broker.getvalue()))
    wallet_balance = property(lambda self: float(self._r.bt.broker.getcash()))
    halted = None

    @property
    def bar(self):
        return self._r.bars.bar(self._r.index)

    def bars(self, n: int | None = None) -> BarArrays:
        stop = self._r.index + 1
        return self._r.bars[0 if n is None else max(0, stop - n) : stop]

    #: Backtrader keeps one net position: one-way mode (orders take no ``position_side``)
    position_mode = "one_way"

    @property
    def position(self) -> Position:
        pos = self._r.bt.getposition()
        return Position(self._r.instrument.symbol, float(pos.size), float(pos.price) if pos.size else 0.0)

    @property
    def open_orders(self) -> list[Order]:
        return [o for o in self._r.orders.values() if o.is_open]

    def order(self, client_id: str) -> Order | None:
        return self._r.orders.get(client_id)

    def buy(self, quantity: float, price: float | None = None, **kwargs: Any) -> Order:
        return self._r.submit(Side.BUY, quantity, price, **kwargs)

    def sell(self, quantity: float, price: float | None = None, **kwargs: Any) -> Order:
        return self._r.submit(Side.SELL, quantity, price, **kwargs)

    def cancel(self, client_id: str) -> None:
        ref = self._r.bt_orders.get(client_id)
        if ref is not None:
            self._r.bt.cancel(ref)

    def order_target(self, quantity: float, **kwargs: Any) -> Order | None:
        delta = quantity - self.position.quantity
        if abs(delta) < self.instrument.lot_size / 2:
            return None
        return self._r.submit(Side.BUY if delta > 0 else Side.SELL, abs(delta), None, **kwargs)

    def log(self, message: str, *args: Any) -> None:
        pass


class _Runner:
    def __init__(self, strategy, bars: BarArrays, instrument, wake: np.ndarray | None, prefix: str) -> None:
        self.strategy = strategy
        self.bars = bars
        self.instrument = instrument
        self.wake = wake
        self.index = -1
        self.orders: dict[str, Order] = {}
        self.bt_orders: dict[str, Any] = {}
        self.by_ref: dict[int, str] = {}
        self.fills: list[Fill] = []
        self.fill_bars: list[int] = []
        self.rejections: list[Order] = []
        self.prefix = prefix
        self.seq = 0
        self.ctx = _Context(self)
        self.bt: bt.Strategy | None = None

    def submit(
        self, side: Side, quantity: float, price: float | None, *, post_only=False, reduce_only=False, client_id=None, tag=None
    ) -> Order:
        inst = self.instrument
        if post_only:
            raise OrderError("Backtrader has no post-only orders; use broker=sim")
        qty = inst.round_qty(quantity)
        if qty <= 0:
            raise OrderError(f"{side.value} quantity {quantity!r} rounds to 0 at lot size {inst.lot_size}")
        if price is not None:
            price = inst.round_price(price, "down" if side is Side.BUY else "up")
        ref_price = price if price is not None else self.ctx.price
        if not reduce_only and ref_price * qty < inst.min_notional:
            raise OrderError(f"{side.value} {qty} at {ref_price:.2f} is below the minimum notional {inst.min_notional:g}")
        self.seq += 1
        order = Order.create(
            inst,
            client_id or f"{self.prefix}-{self.seq}",
            side,
            qty,
            price,
            reduce_only=reduce_only,
            ts_ms=self.ctx.now_ms,
            tag=tag,
            check_notional=False,
        )
        exectype = bt.Order.Market if price is None else bt.Order.Limit
        call = self.bt.buy if side is Side.BUY else self.bt.sell
        ref = call(size=qty, price=price, exectype=exectype)
        self.orders[order.client_id] = order.transition(OrderStatus.NEW)
        self.bt_orders[order.client_id] = ref
        self.by_ref[ref.ref] = order.client_id
        return self.orders[order.client_id]

    def notify(self, bt_order) -> None:
        client_id = self.by_ref.get(bt_order.ref)
        if client_id is None:
            return
        order = self.orders[client_id]
        status = bt_order.status
        if status == bt_order.Completed:
            ex = bt_order.executed
            index = len(self.bt.data) - 1  # the bar it filled on
            fill = Fill(
                trade_id=f"bt-{bt_order.ref}",
                client_id=client_id,
                symbol=order.symbol,
                side=order.side,
                price=float(ex.price),
                quantity=abs(float(ex.size)),
                fee=float(ex.comm),
                ts_ms=int(self.bars.ts[index]),
                is_maker=order.price is not None,
                tag=order.tag,
            )
            self.fills.append(fill)
            self.fill_bars.append(index)
            done = order.transition(OrderStatus.FILLED, filled_qty=order.quantity, avg_fill_price=fill.price, updated_ms=fill.ts_ms)
            self.orders[client_id] = done
            self.strategy.on_fill(self.ctx, fill)
        elif status in (bt_order.Canceled, bt_order.Expired, bt_order.Margin, bt_order.Rejected):
            new = OrderStatus.CANCELED if status == bt_order.Canceled else OrderStatus.REJECTED
            changed = order.transition(new, reason=bt_order.getstatusname())
            self.orders[client_id] = changed
            if new is OrderStatus.REJECTED:
                self.rejections.append(changed)
            self.strategy.on_order(self.ctx, changed)


class _Adapter(bt.Strategy):
    params = (("runner", None),)

    def __init__(self) -> None:
        self.p.runner.bt = self
        self.equity: list[float] = []

    def start(self) -> None:
        self.p.runner.strategy.on_start(self.p.runner.ctx)

    def notify_order(self, order) -> None:
        self.p.runner.notify(order)

    def next(self) -> None:
        runner = self.p.runner
        runner.index = len(self.data) - 1
        wake = runner.wake
        if wake is None or wake[runner.index]:
            runner.strategy.on_bar(runner.ctx, runner.ctx.bar)
        self.equity.append(self.broker.getvalue())

    def stop(self) -> None:
        self.p.runner.strategy.on_stop(self.p.runner.ctx)


def run_backtrader(strategy, bars: BarArrays, instrument, *, initial_cash: float = 10_000.0, info: RunInfo | None = None) -> RunResult:
    """Run ``strategy`` (an SDK :class:`~btc_quant.sdk.Strategy` instance) in Cerebro on ``bars``."""
    started = time.perf_counter()
    info = info or RunInfo(uuid.uuid4().hex[:12], "backtest", type(strategy).__name__, "backtrader", instrument, None)
    wake = None if strategy.needs_every_bar else np.asarray(strategy.wake_bars(bars), dtype=bool)
    runner = _Runner(strategy, bars, instrument, wake, info.strategy[:10] + "-" + info.run_id[:6])
    frame = bars.to_frame()
    frame.index = pd.to_datetime(frame["ts"], unit="ms")
    cerebro = bt.Cerebro(stdstats=False, runonce=False, preload=True)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame[["open", "high", "low", "close", "volume"]], openinterest=None))
    cerebro.addstrategy(_Adapter, runner=runner)
    cerebro.broker.setcash(initial_cash)
    cerebro.broker.set_checksubmit(False)
    cerebro.broker.addcommissioninfo(
        bt.CommInfoBase(commission=instrument.taker_fee, commtype=bt.CommInfoBase.COMM_PERC, percabs=True, stocklike=True)
    )
    adapter = cerebro.run()[0]
    fills = fills_frame(runner.fills, np.asarray(runner.fill_bars))
    result = assemble_result(
        info,
        bars,
        np.asarray(adapter.equity, dtype=float),
        fills,
        orders_frame(runner.orders),
        initial_equity=initial_cash,
        rejections=len(runner.rejections),
        diagnostics=strategy.diagnostics(),
    )
    result.elapsed_s = time.perf_counter() - started
    return result


class BacktraderBroker(SimulatedBroker):
    """``broker=backtrader``: the whole backtest is run by Backtrader (see :meth:`run_external`)."""

    Config: ClassVar[type[BacktraderConfig]] = BacktraderConfig

    @staticmethod
    def run_external(engine: Engine, bars: BarArrays) -> RunResult:
        """Called by :func:`btc_quant.core.run.backtest` instead of the native engine loop."""
        return run_backtrader(engine.strategy, bars, engine.instrument, initial_cash=engine.broker.config.initial_cash, info=engine.info)

    # The native loop never drives this broker; these satisfy the contract.
    def _external_only(self, *args, **kwargs):  # pragma: no cover
        raise OrderError("broker=backtrader runs the whole backtest in Backtrader (run_external)")

    load = advance = equity_curve = fill_bar_indices = submit = cancel = events = open_orders = account = equity = _external_only
    now_ms = last_price = property(_external_only)


@hookimpl
def quant_register_brokers(register):
    register("backtrader", BacktraderBroker)

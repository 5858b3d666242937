"""``maker_vol``: the maker-only volatility grid of ``STRATEGY_MAKER_VOL.md`` on a USD-M perpetual.

Capital is spread over small post-only entry orders on a geometric ladder between top and bottom
(long: top = ``top_ratio`` x the lookback high, bottom = ``bottom_ratio`` x it); every filled entry
gets a post-only take-profit on the first free ladder level ``tp_pct`` beyond it (never two on one
level, never beyond top; when none is free the lot whose take-profit is nearest top is closed at
market: *saturation*). Each lot's leverage puts its isolated liquidation at bottom. ``side=short``
is the mirror image (ladder rising from ``short_top_ratio`` x the lookback low), ``side=both``
runs a long ladder below the mid of the lookback range and a short ladder above it.

The rules themselves are pure functions and small classes in ``maker_vol_grid`` (tested with
hand-made numbers); this module turns them into virtual orders, hands those to
:class:`~btc_quant.sdk.ordersync.OrderSync` (only ``max_live_orders`` per side nearest the price
are real orders) and keeps the diagnostics the report shows.

Design decisions where the spec leaves room (each is a parameter or documented here):

* Sizing is refreshed at every re-computation (``recompute``), with the equity of that moment:
  re-sizing on every bar would cancel and replace every live order whenever equity moved.
* An order whose notional would be under the exchange's minimum is raised to the minimum (its
  margin grows with it, so its liquidation line stays at bottom); such orders are counted.
* The lookback uses the bars available when a run starts with less history than ``lookback``.
* Free margin for the cash-shortage pause is equity minus the margin held by open lots minus the
  margin reserved by live entry orders: the isolated-margin picture of the strategy's own lots.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import model_validator

from btc_quant import sdk
from btc_quant.sdk import Duration, ExchangeError, Field, OrderStatus, Side, Strategy, StrategyConfig, StrategyError, hookimpl
from btc_quant.sdk.ordersync import OrderSync, VirtualOrder

from .maker_vol_grid import GridBook, Ladder, Lot, order_leverage

#: Used when the instrument carries no maintenance brackets: Binance BTCUSDT's first tier
#: (maintenance margin rate 0.40%, maintenance amount 0), from Binance's leverage-bracket table.
DEFAULT_MMR = 0.004


class MakerVolConfig(StrategyConfig):
    side: Literal["long", "short", "both"] = Field("long", description="long, short (mirror image) or both (long below mid, short above)")
    lookback: Duration = Field(timedelta(days=30), description="window of the recent high (long) / low (short)")
    top_ratio: float = Field(0.95, gt=0, description="long: top = top_ratio x recent high")
    bottom_ratio: float = Field(0.50, gt=0, description="long: bottom = bottom_ratio x recent high")
    short_top_ratio: float = Field(1.05, gt=0, description="short: top = short_top_ratio x recent low")
    short_bottom_ratio: float = Field(2.00, gt=0, description="short: bottom = short_bottom_ratio x recent low")
    order_pct: float = Field(0.002, gt=0, le=1, description="margin of each order as a share of equity")
    step_pct: float = Field(0.002, gt=0, lt=0.5, description="spacing of grid levels (geometric)")
    tp_pct: float = Field(0.002, gt=0, lt=0.5, description="take-profit distance beyond the fill")
    max_live_orders: int = Field(20, ge=1, description="virtual orders nearest the price that are live, per side")
    recompute: Duration = Field(timedelta(hours=1), description="how often top/bottom are recomputed")
    global_stop: float | None = Field(None, gt=0, lt=1, description="equity drawdown from peak that closes everything and halts")
    strategy_id: str = Field("mv", pattern=r"^[A-Za-z0-9_-]{1,12}$", description="prefix of this bot's client order ids")
    max_requests: int | None = Field(None, ge=1, description="order requests (submit + cancel) per request_interval; none = unlimited")
    request_interval: Duration = Field(timedelta(seconds=10), description="window of max_requests")
    fast: bool = Field(True, description="backtests on the sim broker: use the compiled path when it applies (false: always the event path)")

    @model_validator(mode="after")
    def _ratios(self):
        if self.bottom_ratio >= self.top_ratio:
            raise ValueError(f"bottom_ratio ({self.bottom_ratio}) must be below top_ratio ({self.top_ratio})")
        if self.short_bottom_ratio <= self.short_top_ratio:
            raise ValueError(f"short_bottom_ratio ({self.short_bottom_ratio}) must be above short_top_ratio ({self.short_top_ratio})")
        return self


@dataclass
class Grid:
    """One ladder in use: its book, its key letters and its per-level order sizes."""

    direction: int
    entry_key: str  # "b" long entries, "s" short entries
    tp_key: str  # "t" long take-profits, "u" short take-profits
    book: GridBook
    sizes: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # level -> (qty, margin, leverage)
    entry_prices: dict[int, float] = field(default_factory=dict)  # level -> price rounded to the tick
    entry_orders: dict[int, VirtualOrder] = field(default_factory=dict)  # level -> its virtual order (this sizing)
    first_entry: int = 0  # the first level that takes entries

    @property
    def ladder(self) -> Ladder:
        return self.book.ladder

    @property
    def entry_side(self) -> Side:
        return Side.BUY if self.direction > 0 else Side.SELL


class MakerVol(Strategy):
    """Maker-only grid between bottom and top; see the module docstring and the spec."""

    Config = MakerVolConfig
    needs_every_bar = False

    def __init__(self, config: MakerVolConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.sync = OrderSync(
            c.strategy_id,
            max_live_orders=c.max_live_orders,
            max_requests=c.max_requests,
            interval_ms=int(c.request_interval.total_seconds() * 1000),
        )
        self.grids: list[Grid] = []
        self._recompute_ms = int(c.recompute.total_seconds() * 1000)
        self._next_recompute = -1
        self._partial: dict[str, float] = {}  # entry client id -> quantity filled so far
        self._closing: dict[str, tuple[Grid, Lot, str]] = {}  # market close client id -> (grid, lot, why)
        self._close_later: list[tuple[Grid, Lot, str]] = []  # closes to send (again) at the next bar
        self._paused = False
        self._peak = -math.inf
        self.halted: str | None = None
        self._tp_orders: dict[tuple, VirtualOrder] = {}
        self._margin_calls: bool | None = None  # broker supports leverage / isolated margin calls
        # diagnostics
        self.entry_fills: Counter = Counter()  # (direction, level price) -> entry fills
        self.tp_fills: Counter = Counter()
        self.entry_log: list[tuple[int, int, float]] = []  # (ts_ms, direction, price) of every lot opened
        self.saturations: list[dict] = []
        self.round_trips: list[dict] = []
        self.samples: list[tuple] = []
        self.counts = Counter()
        self.pnl = Counter()

    def compiled_backtest(self, engine, bars):
        """The whole backtest in compiled code when it applies (see ``maker_vol_kernel.why_not``),
        else None and the engine's event path runs. Both give the same fills."""
        from .maker_vol_kernel import compiled_backtest

        return compiled_backtest(self, engine, bars)

    # --- the parts that read config and bars ------------------------------------------------------
    def wake_bars(self, bars):
        """Wake on the first bar and on every bar that starts a new ``recompute`` period."""
        period = np.asarray(bars.ts, dtype=np.int64) // self._recompute_ms
        wake = np.ones(len(bars), dtype=bool)
        wake[1:] = period[1:] != period[:-1]
        return wake

    def _mmr(self, ctx, notional: float) -> tuple[float, float]:
        inst = ctx.instrument
        if inst.margin_brackets:
            b = inst.bracket_for(notional)
            return b.maintenance_rate, b.maintenance_amount
        return DEFAULT_MMR, 0.0

    def levels_from(self, high: float, low: float) -> list[tuple[int, float, float]]:
        """(direction, top, bottom) of each ladder for a lookback ``high`` and ``low``."""
        c = self.config
        long_ = (1, c.top_ratio * high, c.bottom_ratio * high)
        short = (-1, c.short_top_ratio * low, c.short_bottom_ratio * low)
        if c.side == "long":
            return [long_]
        if c.side == "short":
            return [short]
        mid = (high + low) / 2
        return [(1, min(long_[1], mid), long_[2]), (-1, max(short[1], mid * (1 + c.step_pct)), short[2])]

    def _recompute(self, ctx) -> None:
        c = self.config
        now = ctx.now_ms
        window = ctx.bars(int(c.lookback.total_seconds() // 60) + 1)
        keep = window.ts > (window.ts[-1] - int(c.lookback.total_seconds() * 1000))
        high, low = float(window.high[keep].max()), float(window.low[keep].min())
        equity = ctx.equity
        new = self.levels_from(high, low)
        grids: list[Grid] = []
        for n, (direction, top, bottom) in enumerate(new):
            ladder = Ladder(top, bottom, c.step_pct, direction)
            old = next((g for g in self.grids if g.direction == direction), None)
            if old is None:
                grid = Grid(direction, "b" if direction > 0 else "s", "t" if direction > 0 else "u", GridBook(ladder, c.tp_pct))
            else:
                grid = old
                for lot in grid.book.relay(ladder):
                    self._close_lot(ctx, grid, lot, "saturation")
                self.counts["recomputes"] += 1
            self._size(ctx, grid, equity)
            grids.append(grid)
        self.grids = grids
        self._next_recompute = (now // self._recompute_ms + 1) * self._recompute_ms

    def _size(self, ctx, grid: Grid, equity: float) -> None:
        """Quantity, margin and leverage of an entry at each level (spec: margin = order_pct x equity),
        for all levels at once."""
        inst = ctx.instrument
        ladder = grid.ladder
        margin = self.config.order_pct * equity
        first = grid.first_entry = self._first_entry(ladder)
        raw = ladder.prices[first:]
        ticks = np.floor(raw / inst.tick_size + 1e-9) if grid.direction > 0 else np.ceil(raw / inst.tick_size - 1e-9)
        prices = np.round(ticks * inst.tick_size, inst.price_decimals)
        mmr, _ = self._mmr(ctx, margin * 2)
        if grid.direction > 0:  # order_leverage, vectorised
            lev = 1.0 / (1.0 + mmr - ladder.bottom / prices)
        else:
            lev = 1.0 / ((1.0 + mmr) * ladder.bottom / prices - 1.0)
        qty = np.floor(margin * lev / prices / inst.lot_size + 1e-9) * inst.lot_size
        min_qty = np.ceil(inst.min_notional / prices / inst.lot_size - 1e-9) * inst.lot_size
        raised = (qty * prices < inst.min_notional) | (qty <= 0)
        qty = np.round(np.where(raised, np.maximum(min_qty, inst.lot_size), qty), inst.qty_decimals)
        self.counts["levels_raised_to_min_notional"] = int(raised.sum())
        grid.sizes = {first + i: (float(q), float(q * p / l), float(l)) for i, (q, p, l) in enumerate(zip(qty, prices, lev))}
        grid.entry_prices = {first + i: float(p) for i, p in enumerate(prices)}
        grid.entry_orders = {}

    def _first_entry(self, ladder: Ladder) -> int:
        """The first level whose take-profit target lies beyond it (top itself has no room)."""
        for level in range(len(ladder)):
            if ladder.tp_target(float(ladder.prices[level]), self.config.tp_pct) < level:
                return level
        return len(ladder)

    # --- handlers ----------------------------------------------------------------------------------
    def on_start(self, ctx):
        if not ctx.instrument.is_perpetual:
            raise StrategyError(
                f"maker_vol trades a perpetual with leverage; {ctx.instrument.exchange} {ctx.instrument.symbol} is spot "
                "(use exchange=binanceusdm symbol=BTC/USDT:USDT)"
            )
        try:
            ctx.set_margin_mode("isolated")
            self._margin_calls = True
        except ExchangeError:
            self._margin_calls = False  # the broker models no isolated margin: the strategy's own lot book is used

    def on_bar(self, ctx, bar):
        if self._close_later:
            self._retry_closes(ctx)
        if self.halted:
            return
        if ctx.now_ms >= self._next_recompute or not self.grids:
            self._recompute(ctx)
        equity = ctx.equity
        self._peak = max(self._peak, equity)
        if self.config.global_stop is not None and equity <= self._peak * (1 - self.config.global_stop):
            self._stop(ctx, f"global stop: equity {equity:.2f} is {1 - equity / self._peak:.2%} below its peak {self._peak:.2f}")
            return
        self._refresh(ctx)

    def on_fill(self, ctx, fill):
        order = ctx.order(fill.client_id)
        self.sync.on_fill(fill, order)
        self.pnl["fees_maker" if fill.is_maker else "fees_taker"] += fill.fee
        if fill.is_liquidation:
            self._liquidated(ctx, fill)
            return
        if fill.client_id in self._closing:
            self._closed_at_market(ctx, fill, order)
            return
        key = self.sync.key_of(fill.client_id)
        if key is None:
            return
        grid = next((g for g in self.grids if key[0] in (g.entry_key, g.tp_key)), None)
        if grid is None:
            return
        if key[0] == grid.entry_key:
            self._entry_filled(ctx, grid, int(key[1:]), fill, order)
        else:
            self._tp_filled(ctx, grid, int(key[1:]), fill)
        # Act once at the close of this bar (orders placed now could only act from the next bar anyway).
        ctx.wake_when_price_outside(math.inf, None)

    def on_order(self, ctx, order):
        self.sync.on_order(order)
        closing = self._closing.pop(order.client_id, None) if not order.is_open else None
        if closing is not None and closing[0].book.lots.get(closing[1].lot_id) is closing[1]:
            # a close refused, expired or cut short (reduce-only, the position was smaller): the
            # rest of the lot is closed at the next bar
            self.counts["closes_retried"] += 1
            self._close_later.append(closing)
        got = self._partial.pop(order.client_id, None) if not order.is_open else None
        if got:  # a partly filled entry was canceled: what filled is a lot and gets its take-profit
            key = self.sync.key_of(order.client_id)
            grid = next((g for g in self.grids if key and key[0] == g.entry_key), None)
            if grid is not None:
                self._open_lot(ctx, grid, int(key[1:]), order.avg_fill_price or order.price, got)

    def on_stop(self, ctx):
        self._sample(ctx)
        position = ctx.position
        self.pnl["funding"] = 0.0 - position.funding
        # by lot, not by the position's average entry: grid profit is booked per lot as well
        self.pnl["unrealised"] = sum(g.direction * (ctx.price - lot.entry) * lot.quantity for g in self.grids for lot in g.book.lots.values())

    # --- fills ----------------------------------------------------------------------------------------
    def _entry_filled(self, ctx, grid: Grid, level: int, fill, order) -> None:
        got = self._partial.pop(fill.client_id, 0.0) + fill.quantity
        if order is not None and order.status is OrderStatus.PARTIALLY_FILLED:
            self._partial[fill.client_id] = got  # the lot opens when the order is done (filled or canceled)
            return
        self._open_lot(ctx, grid, level, fill.price, got)

    def _open_lot(self, ctx, grid: Grid, level: int, price: float, quantity: float) -> None:
        mmr, _ = self._mmr(ctx, quantity * price)
        try:
            lev = order_leverage(price, grid.ladder.bottom, mmr, grid.direction)
        except ValueError:  # an order of an older ladder filled beyond the new bottom: fund it fully
            lev = 1.0
            self.counts["entries_beyond_bottom"] += 1
        lot = grid.book.open_lot(level, price, quantity, quantity * price / lev, lev)
        self.entry_fills[(grid.direction, round(price, 1))] += 1
        self.entry_log.append((ctx.now_ms, grid.direction, price))
        victim = grid.book.place_tp(lot)
        if victim is not None:
            self._close_lot(ctx, grid, victim, "saturation")
        self._fund_position(ctx)

    def _tp_filled(self, ctx, grid: Grid, lot_id: int, fill) -> None:
        lot = grid.book.lots.get(lot_id)
        if lot is None:
            return
        gross = grid.direction * (fill.price - lot.entry) * fill.quantity
        self.pnl["grid_profit"] += gross
        self.tp_fills[(grid.direction, round(fill.price, 1))] += 1
        if fill.quantity < lot.quantity - 1e-12:
            grid.book.reduce_lot(lot, fill.quantity)
        else:
            grid.book.close_lot(lot_id)
            self.round_trips.append({"ts_ms": fill.ts_ms, "direction": grid.direction, "entry": lot.entry, "exit": fill.price, "quantity": fill.quantity, "gross": gross})

    def _close_lot(self, ctx, grid: Grid, lot: Lot, why: str) -> None:
        """Close ``lot`` at market (saturation or stop); the level it held is already free."""
        lot.closing = True
        if why == "saturation":
            self.counts["saturations"] += 1
        self._send_close(ctx, grid, lot, why)

    def _send_close(self, ctx, grid: Grid, lot: Lot, why: str, again: bool = False) -> None:
        """The market order that closes ``lot``, reduce-only whenever it reduces the position.

        Binance exempts reduce-only orders from MIN_NOTIONAL (-4164 "Order's notional must be no
        smaller than 100 (unless you choose reduce only)"), so a lot left small by partial fills
        can be closed. One side: every close reduces. ``side=both`` runs both grids on one net
        position, so a close reduces only while the position, less what closes of the same
        side under way will take off it, still holds the lot on its side; otherwise it opens the
        other way, must meet the minimum notional, and below it waits for the next bar
        (``closes_waiting``). ``again``: a retry of a close that ended without closing the lot;
        on one side, when the position no longer holds any of it, the lot is gone (liquidated or
        closed outside the strategy) and leaves the book (``lots_gone``)."""
        one_side = self.config.side != "both"
        if again and one_side and not self._covered(ctx, grid.direction, ctx.instrument.lot_size):
            grid.book.close_lot(lot.lot_id)
            self.counts["lots_gone"] += 1
            return
        reduce_only = one_side or self._covered(ctx, grid.direction, lot.quantity)
        if not reduce_only and lot.quantity * ctx.price < ctx.instrument.min_notional:
            if not again:
                self.counts["closes_waiting"] += 1
            self._close_later.append((grid, lot, why))
            return
        side = Side.SELL if grid.direction > 0 else Side.BUY
        order = (ctx.sell if side is Side.SELL else ctx.buy)(lot.quantity, reduce_only=reduce_only, tag=f"{why}:{lot.lot_id}")
        self._closing[order.client_id] = (grid, lot, why)

    def _covered(self, ctx, direction: int, quantity: float) -> bool:
        """Does the position, less the rest of the closes of ``direction``'s lots under way, hold
        ``quantity`` on that side?"""
        held = direction * ctx.position.quantity
        for cid, (grid, _, _) in self._closing.items():
            order = ctx.order(cid) if grid.direction == direction else None
            if order is not None and order.is_open:
                held -= order.remaining_qty
        return held >= quantity - ctx.instrument.lot_size / 2

    def _retry_closes(self, ctx) -> None:
        """Send again the closes that waited or ended without closing their lot."""
        waiting, self._close_later = self._close_later, []
        for grid, lot, why in waiting:
            if grid.book.lots.get(lot.lot_id) is lot:
                self._send_close(ctx, grid, lot, why, again=True)

    def _closed_at_market(self, ctx, fill, order) -> None:
        grid, lot, why = self._closing[fill.client_id]
        pnl = grid.direction * (fill.price - lot.entry) * fill.quantity
        if order is None or not order.is_open:
            del self._closing[fill.client_id]
            if lot.lot_id in grid.book.lots:
                grid.book.close_lot(lot.lot_id)
        elif lot.lot_id in grid.book.lots:
            grid.book.reduce_lot(lot, fill.quantity)
            if lot.quantity < ctx.instrument.lot_size / 2:
                grid.book.close_lot(lot.lot_id)
        if why == "saturation":
            self.pnl["saturation_loss"] += pnl
            self.saturations.append({"ts_ms": fill.ts_ms, "entry": lot.entry, "take_profit": lot.freed_tp, "exit": fill.price, "quantity": fill.quantity, "pnl": pnl, "fee": fill.fee})
        else:
            self.pnl["stop_pnl"] += pnl

    def _liquidated(self, ctx, fill) -> None:
        self.counts["liquidations"] += 1
        for grid in self.grids:
            for lot in list(grid.book.lots.values()):
                self.pnl["liquidation_loss"] += grid.direction * (fill.price - lot.entry) * lot.quantity
                grid.book.close_lot(lot.lot_id)

    def _fund_position(self, ctx) -> None:
        """Brokers with isolated margin: set the leverage the deepest lot needs and keep the
        position's margin at least the sum of the lots' margins (its liquidation price at or
        beyond bottom). A refusal (leverage above the bracket's cap, not enough available
        balance) is counted in the diagnostics; the invariant check then shows its effect."""
        if not self._margin_calls:
            return
        lots = [lot for g in self.grids for lot in g.book.lots.values()]
        if not lots:
            return
        try:
            wanted_leverage = math.ceil(max(lot.leverage for lot in lots))
            if ctx.margin.leverage != wanted_leverage:
                ctx.set_leverage(wanted_leverage)
            want = sum(g.book.margin for g in self.grids)
            have = ctx.margin.position_margin
            if want - have > 1e-6:
                ctx.adjust_margin(want - have)
                self.counts["margin_added"] += 1
        except ExchangeError as exc:
            self.counts["margin_call_refused"] += 1
            self._last_margin_error = str(exc)

    def _stop(self, ctx, reason: str) -> None:
        self.halted = reason
        ctx.log(reason)
        self.sync.set_desired([])
        self.sync.sync(ctx)
        for grid in self.grids:
            for lot in list(grid.book.lots.values()):
                if not lot.closing:
                    grid.book.withdraw_tp(lot)
                    self._close_lot(ctx, grid, lot, "stop")
        self.counts["global_stops"] += 1

    # --- the desired set --------------------------------------------------------------------------
    def desired(self, ctx, price: float, equity: float) -> tuple[list[VirtualOrder], int, bool]:
        """Virtual orders for ``price``: every take-profit, and the entries nearest the price that
        free margin can fund. Returns (orders, number of armed entry levels, paused for cash)."""
        orders: list[VirtualOrder] = []
        committed = sum(g.book.margin for g in self.grids)
        free = equity - committed
        armed_total = 0
        paused = False
        reduce_only = self.config.side != "both"
        min_notional = ctx.instrument.min_notional
        n = self.config.max_live_orders
        for grid in self.grids:
            ladder, book = grid.ladder, grid.book
            tp_side = grid.entry_side.opposite
            cache = self._tp_orders
            # Only the take-profits nearest the price can be among the live ones (OrderSync keeps
            # the nearest max_live_orders per side), so only they are handed over: sync stays O(n).
            k = ladder.first_adverse(price)
            for level in book.nearest_tp_levels(k, n):
                lot = book.lots[book.tp_at[level]]
                if not lot.closing:
                    ident = (grid.direction, lot.lot_id, lot.tp_level, lot.quantity, book.ladder.top)
                    vo = cache.get(ident)
                    if vo is None:
                        if len(cache) > 50_000:
                            cache.clear()
                        tp_price = book.tp_price(lot)
                        # side=both: a take-profit under the minimum notional (a lot left small by
                        # partial fills) can rest only reduce-only (Binance -4164); while the net
                        # position is on the other side the exchange refuses it (-2022) and the
                        # next sync sends it again
                        small = lot.quantity * tp_price < min_notional
                        vo = cache[ident] = VirtualOrder(f"{grid.tp_key}{lot.lot_id}", tp_side, tp_price, lot.quantity, reduce_only=reduce_only or small)
                    orders.append(vo)
            start = max(k, grid.first_entry)
            armed_total += len(ladder) - start - (len(book.tp_levels) - bisect.bisect_left(book.tp_levels, start)) + len(book.lots)
            placed = 0
            for level in range(start, len(ladder)):
                if placed >= n:
                    break
                if level in book.tp_at:
                    continue
                qty, margin, _ = grid.sizes[level]
                if margin > free:
                    paused = True
                    break
                free -= margin
                vo = grid.entry_orders.get(level)
                if vo is None:
                    vo = grid.entry_orders[level] = VirtualOrder(f"{grid.entry_key}{level}", grid.entry_side, grid.entry_prices[level], qty)
                orders.append(vo)
                placed += 1
        return orders, armed_total, paused

    def _refresh(self, ctx) -> None:
        price, equity = ctx.price, ctx.equity
        orders, armed, paused = self.desired(ctx, price, equity)
        if paused and not self._paused:
            self.counts["cash_pauses"] += 1
        self._paused = paused
        self.sync.set_desired(orders)
        report = self.sync.sync(ctx)
        self._armed = armed
        self._sample(ctx, report)
        self._set_alert(ctx, price)

    def _set_alert(self, ctx, price: float) -> None:
        """Wake when the price passes the next level toward top (a new entry level is armed)."""
        low, high = None, None
        for grid in self.grids:
            k = grid.ladder.first_adverse(price)
            if k == 0:
                continue
            nxt = float(grid.ladder.prices[k - 1])  # the level the price must pass to arm it
            if grid.direction > 0:
                high = nxt if high is None else min(high, nxt)
            else:
                low = nxt if low is None else max(low, nxt)
        ctx.wake_when_price_outside(low, high)

    # --- diagnostics --------------------------------------------------------------------------------
    def _sample(self, ctx, report=None) -> None:
        price = ctx.price
        liq = math.nan
        dist = math.nan
        violation = False
        for grid in self.grids:
            if not grid.book.lots:
                continue
            q = grid.book.quantity
            mmr, cum = self._mmr(ctx, q * price)
            liq = grid.book.liquidation_price(mmr, cum)
            dist = grid.direction * (price - liq) / price
            beyond_bottom = grid.direction * (price - grid.ladder.bottom) <= 0
            if not beyond_bottom and grid.direction * (liq - grid.ladder.bottom) > 1e-6 * grid.ladder.bottom:
                violation = True
        if violation:
            self.counts["invariant_violations"] += 1
        broker_liq = math.nan
        if self._margin_calls and len(self.grids) == 1 and self.grids[0].book.lots:
            # the broker's own liquidation price of the position (Binance formula, its brackets)
            grid = self.grids[0]
            broker_liq = ctx.margin.liquidation_price or math.nan
            above_bottom = grid.direction * (price - grid.ladder.bottom) > 0
            if above_bottom and grid.direction * (broker_liq - grid.ladder.bottom) > 1e-6 * grid.ladder.bottom:
                self.counts["broker_invariant_violations"] += 1
        occupied = sum(len(g.book.tp_at) for g in self.grids)
        levels = sum(len(g.ladder) for g in self.grids)
        live = report.live if report is not None else self.sync.live_count
        virtual = getattr(self, "_armed", 0)  # armed entry levels + open lots' take-profits
        self.samples.append((ctx.now_ms, price, liq, broker_liq, dist, occupied, levels, live, virtual, ctx.equity))

    def diagnostics(self) -> dict[str, Any]:
        samples = _frame(self.samples, ["ts_ms", "price", "liquidation_price", "broker_liquidation_price", "distance_to_liquidation", "tp_levels_occupied", "levels", "live_orders", "virtual_orders", "equity"])
        live = samples["live_orders"].to_numpy()
        distance = samples["distance_to_liquidation"].to_numpy(dtype=np.float64)
        levels = sorted(set(self.entry_fills) | set(self.tp_fills))
        fills_per_level = pd.DataFrame(
            [(d, p, self.entry_fills[(d, p)], self.tp_fills[(d, p)]) for d, p in levels],
            columns=["direction", "price", "entry_fills", "tp_fills"],
        )
        attribution = {
            "grid_profit": self.pnl["grid_profit"],
            "maker_fees": -self.pnl["fees_maker"],
            "taker_fees": -self.pnl["fees_taker"],
            "funding": self.pnl["funding"],
            "unrealised_inventory": self.pnl["unrealised"],
            "saturation_loss": self.pnl["saturation_loss"],
            "liquidation_loss": self.pnl["liquidation_loss"],
            "stop_pnl": self.pnl["stop_pnl"],
            "open_lots": sum(len(g.book.lots) for g in self.grids),
        }
        summary = {
            "round_trips": len(self.round_trips),
            "saturation_closes": self.counts["saturations"],
            "saturation_loss": round(self.pnl["saturation_loss"], 2),
            "liquidations": self.counts["liquidations"],
            "cash_pauses": self.counts["cash_pauses"],
            "invariant_violations": self.counts["invariant_violations"],
            "broker_invariant_violations": self.counts["broker_invariant_violations"] if self._margin_calls else None,
            "levels_raised_to_min_notional": self.counts["levels_raised_to_min_notional"],
            "closes_waiting": self.counts["closes_waiting"],
            "closes_retried": self.counts["closes_retried"],
            "lots_gone": self.counts["lots_gone"],
            "isolated_margin_calls": "yes" if self._margin_calls else "no (the broker has no isolated margin; the strategy's lot book is checked)",
            "margin_call_refused": self.counts["margin_call_refused"],
            "post_only_rearmed": self.sync.stats.rearmed,
            "orders_submitted": self.sync.stats.submitted,
            "orders_canceled": self.sync.stats.canceled,
            "max_live_orders_seen": int(live.max()) if len(live) else 0,
            "min_distance_to_liquidation": float(np.nanmin(distance)) if (~np.isnan(distance)).any() else None,
            "halted": self.halted,
        }
        return {
            "summary": summary,
            "pnl_attribution": attribution,
            "fills_per_level": fills_per_level,
            "entries": _frame(self.entry_log, ["ts_ms", "direction", "price"]),
            "saturations": _frame(self.saturations, ["ts_ms", "entry", "take_profit", "exit", "quantity", "pnl", "fee"]),
            "round_trips": _frame(self.round_trips, ["ts_ms", "direction", "entry", "exit", "quantity", "gross"]),
            "samples": samples,
        }


def _frame(rows, columns: list[str]) -> pd.DataFrame:
    """``rows`` as a frame with ``columns``: the event path's list of tuples, or the compiled path's
    frame with these columns already (copied: rebuilding it with ``columns=`` is a slow reindex)."""
    if isinstance(rows, pd.DataFrame) and list(rows.columns) == columns:
        return rows.copy()
    return pd.DataFrame(rows, columns=columns)


@hookimpl
def quant_register_strategies(register):
    register("maker_vol", MakerVol)


if hasattr(sdk, "ReportSection"):  # the run report's section hook (backtester issue) is installed

    @hookimpl
    def quant_report_sections(result):
        """maker_vol's grid diagnostics as report sections (after the standard ones)."""
        if result.info.strategy != "maker_vol":
            return None
        from .maker_vol_report import grid_figures

        diagnostics = result.extra.get("diagnostics") or {}
        return [sdk.ReportSection(title, figure=fig, order=200 + n) for n, (title, fig) in enumerate(grid_figures(diagnostics))]

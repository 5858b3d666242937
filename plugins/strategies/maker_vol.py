"""``maker_vol``: the maker-only volatility grid of ``STRATEGY_MAKER_VOL.md`` on a USD-M perpetual.

Capital is spread over small post-only entry orders on a geometric ladder between top and bottom
(long: top = ``top_ratio`` x the lookback high, bottom = ``bottom_ratio`` x it); every filled entry
gets a post-only take-profit on the first free ladder level ``tp_pct`` beyond it (never two on one
level, never beyond top; when none is free the lot whose take-profit is nearest top is closed at
market: *saturation*). Each lot's leverage puts its isolated liquidation at bottom. ``side=short``
is the mirror image (ladder rising from ``short_top_ratio`` x the lookback low), ``side=both``
runs a long ladder below the mid of the lookback range and a short ladder above it.

The rules themselves are the compiled functions of ``maker_vol_grid`` (tested with hand-made
numbers), the same ones the compiled backtest (``maker_vol_kernel``) calls; this module calls them
over its :class:`~.maker_vol_grid.GridBook`, turns their answers into virtual orders, hands those to
:class:`~btc_quant.sdk.ordersync.OrderSync` (only ``max_live_orders`` per side nearest the price
are real orders) and keeps the diagnostics the report shows.

Design decisions where the spec leaves room (each is a parameter or documented here):

* Sizing is refreshed at every re-computation (``recompute``), with the equity of that moment:
  re-sizing on every bar would cancel and replace every live order whenever equity moved.
* An order whose notional would be under the exchange's minimum is never raised to it: its level
  takes the margin of as many levels toward bottom as the minimum needs and those levels hold no
  entry (``levels_merged_min_notional`` counts them; :func:`~.maker_vol_grid.level_sizes`).
* The liquidation promise is kept on the position, not only lot by lot: after every entry fill
  and at every wake-up the position's isolated margin is brought to what puts its liquidation
  price (Binance formula, the symbol's brackets) at bottom
  (:func:`~.maker_vol_grid.required_margin`), from the available balance; when that cannot fund
  it (at a wake-up, price on the safe side), the most leveraged lots are closed at market, enough
  that the margin they release funds the rest (:func:`~.maker_vol_grid.restore_share`).
  Diagnostics: ``liq_line_restores`` (wake-ups that moved margin or closed lots to restore the
  line), ``liq_line_breaches`` (wake-ups that still find the line beyond bottom while the price
  is on the safe side: must be 0), ``liquidations_above_bottom`` (must be 0). Each lot's leverage
  is capped at its bracket's maximum, the position's at the bracket of its notional.
* The lookback uses the bars available when a run starts with less history than ``lookback``.
* Free margin for the cash-shortage pause is equity minus the margin held by open lots minus the
  margin reserved by live entry orders: the isolated-margin picture of the strategy's own lots.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import model_validator

from btc_quant import sdk
from btc_quant.sdk import Duration, ExchangeError, Field, OrderStatus, PositionSide, Side, Strategy, StrategyConfig, StrategyError, hookimpl
from btc_quant.sdk.ordersync import OrderSync, VirtualOrder

from ..brokers.sim.venue import POSITION_SIDES  # lot_close answers in the venue core's PS_* codes
from .maker_vol_grid import (
    CLOSE_GONE,
    CLOSE_WAIT,
    LINE_ADD,
    LINE_CLOSE,
    LINE_OK,
    GridBook,
    Ladder,
    Lot,
    arming_band,
    arming_price,
    beyond_line,
    bracket_table,
    desired_levels,
    entry_prices,
    entry_sizes,
    first_entry_level,
    line_funding,
    liquidated_above_bottom,
    lookback_range,
    lot_close,
    next_recompute_ms,
    position_leverage,
    required_margin,
)

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
    fast: bool = Field(
        True, description="backtests on the sim broker: use the compiled path when it applies (false: always the event path)"
    )

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
    # per level (this sizing): the entry's price rounded to the tick, its quantity (0: none) and margin
    entry_prices: np.ndarray = field(default_factory=lambda: np.zeros(0))
    entry_qty: np.ndarray = field(default_factory=lambda: np.zeros(0))
    entry_margin: np.ndarray = field(default_factory=lambda: np.zeros(0))
    entry_orders: dict[int, VirtualOrder] = field(default_factory=dict)  # level -> its virtual order (this sizing)
    first_entry: int = 0  # the first level that takes entries

    @property
    def ladder(self) -> Ladder:
        return self.book.ladder

    @property
    def entry_side(self) -> Side:
        return Side.BUY if self.direction > 0 else Side.SELL

    def position_side(self, ctx) -> PositionSide:
        """Hedge mode (``broker.position_mode=hedge``): the long grid trades LONG, the short grid
        SHORT, and its closes are SELL LONG / BUY SHORT (never reduce-only); one-way: BOTH."""
        if ctx.position_mode != "hedge":
            return PositionSide.BOTH
        return PositionSide.LONG if self.direction > 0 else PositionSide.SHORT


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

    def compiled_decisions(self, engine):
        """The declared fast path (``docs/strategy-guide.md``): maker_vol's decisions as a compiled
        loop over the sim's venue core (``maker_vol_kernel``), with this run's reason not to when
        there is one (``maker_vol_kernel.strategy_reason``); the broker decides. Both paths give
        the same fills."""
        from .maker_vol_kernel import run_kernel, strategy_reason

        return sdk.CompiledDecisions(
            "kernel", why_not=strategy_reason(self, engine), run=lambda engine, bars: run_kernel(self, engine, bars)
        )

    # --- the parts that read config and bars ------------------------------------------------------
    def wake_bars(self, bars):
        """Wake on the first bar and on every bar that starts a new ``recompute`` period."""
        period = np.asarray(bars.ts, dtype=np.int64) // self._recompute_ms
        wake = np.ones(len(bars), dtype=bool)
        wake[1:] = period[1:] != period[:-1]
        return wake

    def _brackets(self, ctx) -> np.ndarray:
        """The instrument's maintenance brackets as the compiled rules take them."""
        table = getattr(self, "_bracket_table", None)
        if table is None:
            table = self._bracket_table = bracket_table(ctx.instrument.margin_brackets, DEFAULT_MMR)
        return table

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
        n_window = int(c.lookback.total_seconds() // 60) + 1
        window = ctx.bars(n_window)
        last = np.array([len(window.ts) - 1])
        highs, lows = lookback_range(window.ts, window.high, window.low, last, n_window, int(c.lookback.total_seconds() * 1000))
        high, low = float(highs[0]), float(lows[0])
        equity = ctx.equity
        new = self.levels_from(high, low)
        grids: list[Grid] = []
        self.counts["levels_merged_min_notional"] = 0
        for direction, top, bottom in new:
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
        self._next_recompute = int(next_recompute_ms(now, self._recompute_ms))

    def _size(self, ctx, grid: Grid, equity: float) -> None:
        """Quantity, margin and leverage of an entry at each level (spec: margin = order_pct x equity),
        for all levels at once."""
        inst = ctx.instrument
        ladder = grid.ladder
        first = grid.first_entry = self._first_entry(ladder)
        grid.entry_prices = entry_prices(ladder, inst.tick_size, inst.price_decimals)
        grid.entry_qty, grid.entry_margin = np.zeros(len(ladder)), np.zeros(len(ladder))
        self.counts["levels_merged_min_notional"] += entry_sizes(
            grid.entry_prices,
            first,
            ladder.bottom,
            grid.direction,
            self.config.order_pct * equity,
            self._brackets(ctx),
            inst.lot_size,
            10.0**inst.qty_decimals,
            inst.min_notional,
            grid.entry_qty,
            grid.entry_margin,
        )
        grid.entry_orders = {}

    def _first_entry(self, ladder: Ladder) -> int:
        """The first level whose take-profit target lies beyond it (top itself has no room)."""
        return int(first_entry_level(ladder.prices, self.config.tp_pct, ladder.direction))

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
        if self.config.side == "both" and ctx.position_mode == "hedge":
            # each grid is its own position and keeps its own max_live_orders take-profits and
            # entries (desired() hands over no more): one order side carries one grid's
            # take-profits and the other grid's entries, so it is not cut to max_live_orders
            # across both (as the compiled kernel, whose sync caps nothing beyond desired)
            self.sync.max_live_orders = 2 * self.config.max_live_orders

    def on_bar(self, ctx, bar):
        if self._close_later:
            self._retry_closes(ctx)
        if self.halted:
            return
        if ctx.now_ms >= self._next_recompute or not self.grids:
            self._recompute(ctx)
        self._fund_position(ctx, wake=True)
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
        if ctx.position_mode == "hedge":  # both positions' funding
            self.pnl["funding"] = 0.0 - sum(ctx.position_of(side).funding for side in (PositionSide.LONG, PositionSide.SHORT))
        else:
            self.pnl["funding"] = 0.0 - ctx.position.funding
        # by lot, not by the position's average entry: grid profit is booked per lot as well; at the
        # last bar's close, as the equity curve (the broker's last price is the last bar it visited)
        last = float(ctx.bars(1).close[-1])
        self.pnl["unrealised"] = sum(g.direction * (last - lot.entry) * lot.quantity for g in self.grids for lot in g.book.lots.values())

    # --- fills ----------------------------------------------------------------------------------------
    def _entry_filled(self, ctx, grid: Grid, level: int, fill, order) -> None:
        got = self._partial.pop(fill.client_id, 0.0) + fill.quantity
        if order is not None and order.status is OrderStatus.PARTIALLY_FILLED:
            self._partial[fill.client_id] = got  # the lot opens when the order is done (filled or canceled)
            return
        self._open_lot(ctx, grid, level, fill.price, got)

    def _open_lot(self, ctx, grid: Grid, level: int, price: float, quantity: float) -> None:
        if grid.direction * (price - grid.ladder.bottom) <= 0:  # an order of an older ladder filled beyond the new bottom: funded fully
            self.counts["entries_beyond_bottom"] += 1
        lot = grid.book.open_entry(level, price, quantity, grid.ladder.bottom, self._brackets(ctx))
        self.entry_fills[(grid.direction, round(price, 1))] += 1
        self.entry_log.append((ctx.now_ms, grid.direction, price))
        victim = grid.book.place_tp(lot)
        if victim is not None:
            self._close_lot(ctx, grid, victim, "saturation")
        self._fund_position(ctx, grid=grid)

    def _tp_filled(self, ctx, grid: Grid, lot_id: int, fill) -> None:
        lot = grid.book.lots.get(lot_id)
        if lot is None:
            return
        gross, closed = grid.book.take_profit_fill(lot, fill.quantity, fill.price)
        self.pnl["grid_profit"] += gross
        self.tp_fills[(grid.direction, round(fill.price, 1))] += 1
        if closed:
            self.round_trips.append(
                {
                    "ts_ms": fill.ts_ms,
                    "direction": grid.direction,
                    "entry": lot.entry,
                    "exit": fill.price,
                    "quantity": fill.quantity,
                    "gross": gross,
                }
            )
        # one-way side=both: one grid's exit can grow the net position the other grid's lots make
        if self.config.side == "both" and ctx.position_mode != "hedge":
            self._fund_position(ctx)

    def _close_lot(self, ctx, grid: Grid, lot: Lot, why: str) -> None:
        """Close ``lot`` at market (saturation or stop); the level it held is already free."""
        lot.closing = True
        if why == "saturation":
            self.counts["saturations"] += 1
        self._send_close(ctx, grid, lot, why)

    def _send_close(self, ctx, grid: Grid, lot: Lot, why: str, again: bool = False) -> None:
        """The market order that closes ``lot``, as ``maker_vol_grid.lot_close`` decides it (the
        compiled backtest calls it too); here only the broker calls. ``again``: a retry of a close
        that waited or ended without closing the lot."""
        action, side, reduce_only, pside, cancel_tp = lot_close(
            grid.direction,
            lot.quantity,
            self._held(ctx, grid.direction),
            again,
            ctx.position_mode == "hedge",
            self.config.side != "both",
            ctx.price,
            ctx.instrument.lot_size,
            ctx.instrument.min_notional,
        )
        if cancel_tp:  # OrderSync would cancel it only at the next sync
            self.sync.cancel_now(ctx, f"{grid.tp_key}{lot.lot_id}")
        if action == CLOSE_GONE:
            grid.book.close_lot(lot.lot_id)
            self.counts["lots_gone"] += 1
            return
        if action == CLOSE_WAIT:
            if not again:
                self.counts["closes_waiting"] += 1
            self._close_later.append((grid, lot, why))
            return
        order = (ctx.buy if side > 0 else ctx.sell)(
            lot.quantity, reduce_only=bool(reduce_only), position_side=POSITION_SIDES[pside], tag=f"{why}:{lot.lot_id}"
        )
        self._closing[order.client_id] = (grid, lot, why)

    def _held(self, ctx, direction: int) -> float:
        """The position on ``direction``'s side (hedge mode: the grid's own position) less the
        rest of the closes of ``direction``'s lots under way."""
        if ctx.position_mode == "hedge":  # the grid's own position (LONG: quantity >= 0, SHORT: <= 0)
            held = direction * ctx.position_of(PositionSide.LONG if direction > 0 else PositionSide.SHORT).quantity
        else:
            held = direction * ctx.position.quantity
        for cid, (grid, _, _) in self._closing.items():
            order = ctx.order(cid) if grid.direction == direction else None
            if order is not None and order.is_open:
                held -= order.remaining_qty
        return held

    def _retry_closes(self, ctx) -> None:
        """Send again the closes that waited or ended without closing their lot."""
        waiting, self._close_later = self._close_later, []
        for grid, lot, why in waiting:
            if grid.book.lots.get(lot.lot_id) is lot:
                self._send_close(ctx, grid, lot, why, again=True)

    def _closed_at_market(self, ctx, fill, order) -> None:
        grid, lot, why = self._closing[fill.client_id]
        done = order is None or not order.is_open
        if done:
            del self._closing[fill.client_id]
        pnl = grid.book.close_fill(lot, fill.quantity, fill.price, done, ctx.instrument.lot_size / 2)
        if why == "saturation":
            self.pnl["saturation_loss"] += pnl
            self.saturations.append(
                {
                    "ts_ms": fill.ts_ms,
                    "entry": lot.entry,
                    "take_profit": lot.freed_tp,
                    "exit": fill.price,
                    "quantity": fill.quantity,
                    "pnl": pnl,
                    "fee": fill.fee,
                }
            )
        elif why == "restore":
            self.pnl["restore_pnl"] += pnl
            self._fund_position(ctx, grid=grid)  # the margin the close released funds the rest of the position
            ctx.wake_when_price_outside(math.inf, None)  # and the line is looked at again at this bar's close
        else:
            self.pnl["stop_pnl"] += pnl
        # one-way side=both, as a take-profit: it can grow the net position
        if why != "restore" and self.config.side == "both" and ctx.position_mode != "hedge":
            self._fund_position(ctx)

    def _liquidated(self, ctx, fill) -> None:
        self.counts["liquidations"] += 1
        held = -fill.side.sign  # the side of the liquidated position
        for grid in self.grids:
            if grid.direction == held and liquidated_above_bottom(fill.price, grid.ladder.bottom, grid.direction):
                self.counts["liquidations_above_bottom"] += 1
        hedge = ctx.position_mode == "hedge"
        for grid in self.grids:
            if hedge and grid.direction != held:  # hedge mode: the other grid's position is still there
                continue
            self.pnl["liquidation_loss"] += grid.book.liquidate(fill.price)

    def _fund_position(self, ctx, wake: bool = False, grid: Grid | None = None) -> None:
        """Brokers with isolated margin, one side: keep the position's liquidation price at or
        beyond bottom. Sets the leverage its most leveraged lot needs (capped at the bracket's
        maximum) and brings its isolated margin up to :func:`~.maker_vol_grid.required_margin`
        from the available balance. When the balance cannot fund it at a wake-up (``wake``) with
        the price on the safe side of bottom, the most leveraged lots are closed at market, enough
        that what their close releases funds the rest (:func:`~.maker_vol_grid.restore_share`;
        the top-up follows their fill). Refusals are counted (``margin_call_refused``).

        ``side=both`` nets its two grids into one position (one-way mode): the line kept is the
        one of the side the net position is on (long: at or below the long bottom; short: at or
        above the short bottom), with that grid's lots. In hedge mode each grid keeps the line of
        its own position (LONG or SHORT, :meth:`Context.margin_of`): ``grid``'s, or at a wake-up
        each grid's in turn (as the compiled kernel's ``_fund_position``, grid by grid)."""
        if not self._margin_calls:
            return
        if ctx.position_mode == "hedge":
            for g in (grid,) if grid is not None else self.grids:
                self._fund_side(ctx, g, g.position_side(ctx), wake)
            return
        grid = self._line_grid(ctx)
        if grid is not None:
            self._fund_side(ctx, grid, PositionSide.BOTH, wake)

    def _fund_side(self, ctx, grid: Grid, pside: PositionSide, wake: bool) -> None:
        """:meth:`_fund_position` for ``grid`` on the position ``pside`` (BOTH: the net one)."""
        position = ctx.position if pside is PositionSide.BOTH else ctx.position_of(pside)
        qty = abs(position.quantity)
        if qty < 1e-12 or not grid.book.lots:
            return
        brackets = self._brackets(ctx)
        wanted = position_leverage(grid.book.max_leverage(), qty * ctx.price, brackets)
        if ctx.margin.leverage != wanted:
            try:
                ctx.set_leverage(wanted)
            except ExchangeError as exc:
                self.counts["margin_call_refused"] += 1
                self._last_margin_error = str(exc)
        state = ctx.margin_of(pside)
        required = required_margin(qty, position.entry_price, grid.ladder.bottom, grid.direction, brackets)
        action, amount = line_funding(
            required,
            state.position_margin,
            state.available_balance,
            qty,
            position.entry_price,
            ctx.price,
            grid.ladder.bottom,
            grid.direction,
            ctx.instrument.taker_fee,
            wake,
        )
        if action == LINE_OK:
            return
        if action == LINE_ADD:
            try:
                ctx.adjust_margin(amount, position_side=pside)
            except ExchangeError as exc:
                self.counts["margin_call_refused"] += 1
                self._last_margin_error = str(exc)
                return
            self.counts["margin_added"] += 1
            if wake:
                self.counts["liq_line_restores"] += 1
            return
        self.counts["margin_call_refused"] += 1
        if action != LINE_CLOSE:
            return
        lots = grid.book.restore_closes(amount)  # the most leveraged, marked closing
        if not lots:
            return
        self.counts["liq_line_restores"] += 1
        for lot in lots:
            self._close_lot(ctx, grid, lot, "restore")
            self.counts["liq_line_restore_closes"] += 1

    def _line_grid(self, ctx) -> Grid | None:
        """The grid whose bottom the position's liquidation price must respect: the one grid, or
        with ``side=both`` the grid on the side of the net position (None when flat)."""
        if len(self.grids) == 1:
            return self.grids[0]
        quantity = ctx.position.quantity
        if abs(quantity) < 1e-12:
            return None
        return next((g for g in self.grids if g.direction == (1 if quantity > 0 else -1)), None)

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
        tp_out, entry_out = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        for grid in self.grids:
            ladder, book = grid.ladder, grid.book
            tp_side = grid.entry_side.opposite
            pside = grid.position_side(ctx)
            cache = self._tp_orders
            # Only the take-profits nearest the price can be among the live ones (OrderSync keeps
            # the nearest max_live_orders per side), so only they are handed over: sync stays O(n).
            levels = (book.totals, book.L, book.tp_lots, ladder.prices, 0, len(ladder), grid.first_entry, grid.entry_qty, grid.entry_margin)
            # every level was sized at the recompute (_size): none is left to size
            ntp, nentry, armed, grid_paused, free, _ = desired_levels(
                *levels, len(ladder), price, grid.direction, n, free, tp_out, entry_out
            )
            armed_total += armed
            paused = paused or grid_paused
            for level in tp_out[:ntp].tolist():
                lot = book.lots[int(book.tp_lots[level])]
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
                    vo = cache[ident] = VirtualOrder(
                        f"{grid.tp_key}{lot.lot_id}",
                        tp_side,
                        tp_price,
                        lot.quantity,
                        reduce_only=(reduce_only or small) and pside is PositionSide.BOTH,
                        position_side=pside,
                    )
                orders.append(vo)
            for level in entry_out[:nentry].tolist():
                vo = grid.entry_orders.get(level)
                if vo is None:
                    vo = grid.entry_orders[level] = VirtualOrder(
                        f"{grid.entry_key}{level}",
                        grid.entry_side,
                        float(grid.entry_prices[level]),
                        float(grid.entry_qty[level]),
                        position_side=pside,
                    )
                orders.append(vo)
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
        low, high = math.nan, math.nan
        for grid in self.grids:
            low, high = arming_band(low, high, arming_price(grid.ladder.prices, 0, len(grid.ladder), price, grid.direction), grid.direction)
        ctx.wake_when_price_outside(None if math.isnan(low) else float(low), None if math.isnan(high) else float(high))

    # --- diagnostics --------------------------------------------------------------------------------
    def _sample(self, ctx, report=None) -> None:
        price = ctx.price
        liq = math.nan
        dist = math.nan
        violation = False
        for grid in self.grids:
            if not grid.book.lots:
                continue
            liq = grid.book.liquidation_price(self._brackets(ctx))
            dist = grid.direction * (price - liq) / price
            if beyond_line(price, liq, grid.ladder.bottom, grid.direction):
                violation = True
        broker_liq = math.nan
        grid = self._line_grid(ctx) if self.grids else None
        if self._margin_calls and ctx.position_mode == "hedge":
            liq, broker_liq, dist = self._position_lines(ctx, price)
        elif self._margin_calls and grid is not None and grid.book.lots:
            # the broker's own liquidation price of the position (Binance formula, its brackets)
            broker_liq = ctx.margin.liquidation_price or math.nan
            # a market close sent at this wake-up fills at the next open (the sim's market orders
            # placed between bars): a restore close, or a saturation close whose lot the restore
            # counts on (_fund_position sends no more when the lots already closing cover it); the
            # line they restore is not a breach
            restoring = any(why in ("restore", "saturation") for _, _, why in self._closing.values())
            if beyond_line(price, broker_liq, grid.ladder.bottom, grid.direction) and not restoring:
                self.counts["liq_line_breaches"] += 1
            dist = grid.direction * (price - broker_liq) / price  # the position's, not the lot book's
        elif violation and not self._margin_calls:  # no isolated margin at the broker: the lot book's line
            self.counts["liq_line_breaches"] += 1
        occupied = sum(int(np.count_nonzero(g.book.tp_lots)) for g in self.grids)
        levels = sum(len(g.ladder) for g in self.grids)
        live = report.live if report is not None else self.sync.live_count
        virtual = getattr(self, "_armed", 0)  # armed entry levels + open lots' take-profits
        self.samples.append((ctx.now_ms, price, liq, broker_liq, dist, occupied, levels, live, virtual, ctx.equity))

    def _position_lines(self, ctx, price: float) -> tuple[float, float, float]:
        """Hedge mode: each grid's own position's liquidation price (:meth:`Context.margin_of`)
        against its bottom. A breach: the line beyond bottom while the price is on the safe side
        and no restore or saturation close of that grid waits for the next open. Returns the lot
        book's line, the position's line and the distance of the grid nearest its liquidation."""
        liq = broker_liq = dist = math.nan
        for grid in self.grids:
            if not grid.book.lots:
                continue
            d, bottom = grid.direction, grid.ladder.bottom
            g_liq = grid.book.liquidation_price(self._brackets(ctx))
            g_broker = ctx.margin_of(grid.position_side(ctx)).liquidation_price
            g_broker = math.nan if g_broker is None else g_broker
            restoring = any(g is grid and why in ("restore", "saturation") for g, _, why in self._closing.values())
            if beyond_line(price, g_broker, bottom, d) and not restoring:
                self.counts["liq_line_breaches"] += 1
            g_dist = d * (price - g_broker) / price
            if not dist <= g_dist:  # the first grid, or one nearer its liquidation
                liq, broker_liq, dist = g_liq, g_broker, g_dist
        return liq, broker_liq, dist

    def completed_round_trips(self) -> int:
        """Entries whose take-profit filled: the run's ``trades``."""
        return len(self.round_trips)

    def diagnostics(self) -> dict[str, Any]:
        samples = _frame(
            self.samples,
            [
                "ts_ms",
                "price",
                "liquidation_price",
                "broker_liquidation_price",
                "distance_to_liquidation",
                "tp_levels_occupied",
                "levels",
                "live_orders",
                "virtual_orders",
                "equity",
            ],
        )
        live = samples["live_orders"].to_numpy()
        distance = samples["distance_to_liquidation"].to_numpy(dtype=np.float64)
        fills_per_level = _fills_per_level(self.entry_fills, self.tp_fills)
        attribution = {
            "grid_profit": self.pnl["grid_profit"],
            "maker_fees": -self.pnl["fees_maker"],
            "taker_fees": -self.pnl["fees_taker"],
            "funding": self.pnl["funding"],
            "unrealised_inventory": self.pnl["unrealised"],
            "saturation_loss": self.pnl["saturation_loss"],
            "liquidation_loss": self.pnl["liquidation_loss"],
            "stop_pnl": self.pnl["stop_pnl"],
            "restore_pnl": self.pnl["restore_pnl"],
            "open_lots": sum(len(g.book.lots) for g in self.grids),
        }
        summary = {
            "round_trips": len(self.round_trips),
            "saturation_closes": self.counts["saturations"],
            "saturation_loss": round(self.pnl["saturation_loss"], 2),
            "liquidations": self.counts["liquidations"],
            "cash_pauses": self.counts["cash_pauses"],
            "liq_line_breaches": self.counts["liq_line_breaches"],
            "liq_line_restores": self.counts["liq_line_restores"],
            "liq_line_restore_closes": self.counts["liq_line_restore_closes"],
            "liquidations_above_bottom": self.counts["liquidations_above_bottom"],
            "levels_merged_min_notional": self.counts["levels_merged_min_notional"],
            "closes_waiting": self.counts["closes_waiting"],
            "closes_retried": self.counts["closes_retried"],
            "lots_gone": self.counts["lots_gone"],
            "isolated_margin_calls": "yes"
            if self._margin_calls
            else "no (the broker has no isolated margin; the strategy's lot book is checked)",
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


def _fills_per_level(entry_fills: Counter, tp_fills: Counter) -> pd.DataFrame:
    """Entry and take-profit fills per (direction, price) level, in order of the level."""
    from btc_quant.core.metrics import columns_frame

    levels = sorted(set(entry_fills) | set(tp_fills))
    columns = ["direction", "price", "entry_fills", "tp_fills"]
    if not levels:
        return pd.DataFrame([], columns=columns)
    n = len(levels)
    return columns_frame(  # the dtypes pd.DataFrame gives these rows, column by column (a grid has hundreds of levels)
        {
            "direction": np.fromiter((d for d, _ in levels), np.int64, n),
            "price": np.fromiter((p for _, p in levels), np.float64, n),
            "entry_fills": np.fromiter((entry_fills[level] for level in levels), np.int64, n),
            "tp_fills": np.fromiter((tp_fills[level] for level in levels), np.int64, n),
        }
    )


def _frame(rows, columns: list[str]) -> pd.DataFrame:
    """``rows`` as a frame with ``columns``: the event path's list of tuples, or the compiled path's
    frame with these columns already (copied: rebuilding it with ``columns=`` is a slow reindex)."""
    if isinstance(rows, pd.DataFrame) and rows.columns.tolist() == columns:
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

        return [sdk.ReportSection(title, figure=fig, order=200 + n) for n, (title, fig) in enumerate(grid_figures(result.diagnostics))]

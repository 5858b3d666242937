"""``sim``: the native simulated broker for backtests and paper trading (spot and USDⓈ-M
perpetuals), and the ``through``/``touch`` fill models.

:class:`SimBroker` keeps the strategy-facing objects (orders, fills, events) and drives the venue
core (:mod:`.venue`) for every rule below, one event at a time: the compiled loops of
:mod:`.pairs` and :mod:`.signals` call the same core functions, so the paths fill alike by
construction.

Execution rules (each one a test in ``tests/test_sim_broker.py``):

* **Path.** Each bar is walked as previous close -> open -> one extreme -> the other -> close
  (``broker.path``: ``nearest`` extreme first, the default, or by bar ``direction``; see
  :func:`.venue.bar_path`). Events happen in path order; after each one the engine hands the events to
  the strategy, and orders it places then can only trade on the rest of the path.
* **Market orders** placed after a bar closed fill at the next bar's open, paying the taker fee
  (Backtrader's default, so the two give the same trades). Placed during a bar (from ``on_fill``
  or ``on_order``), they fill at once at the current path price.
* **Limit orders** that would cross when they arrive are takers: during a bar they fill at once at
  the current path price, after a close at the next open if the open still crosses (else they
  rest). A resting limit fills at its price, paying the maker fee, when the path reaches it by the
  fill model: ``through`` (default) needs the price to trade beyond it (low < price for a buy),
  ``touch`` accepts low <= price. A resting limit that the gap between two bars jumps over fills
  at its price clipped into the new bar's range (so no fill lies outside its bar).
* **Post-only** (Binance GTX): an order that would cross on arrival (or on amend) is EXPIRED
  without trading, and the strategy gets the order event with the reason.
* **Reduce-only**: refused when it would not reduce the position; at fill time its quantity is
  cut to the position, and it expires if the position is gone (Binance -2022).
* **Amend** (:meth:`SimBroker.amend`): cancel-replace semantics -- same client id, new price and/or
  quantity, the order loses its place: it can only fill on the path after the amend.
* **Partial fills** (optional): with ``broker.max_volume_share`` an order fills at most that share
  of a bar's volume per bar; the rest stays open (PARTIALLY_FILLED).
* **Margin** (perpetuals): cross or isolated (``broker.margin_mode``), ``broker.leverage``;
  orders that need more initial margin than is available are REJECTED; the liquidation price is
  Binance's formula (:mod:`btc_quant.core.margin`) with the symbol's brackets; when the path
  reaches it the whole position is closed there with the liquidation clearance fee
  (``broker.liquidation_fee_rate``, Binance exchangeInfo ``liquidationFee``), open orders are
  canceled, and the wallet never goes below zero (a shortfall is the insurance fund's).
  Liquidation is triggered on the **mark price** when the run's bars carry it, else on the last
  price (:func:`.venue.liquidation_bounds`; ``liquidation_price_source``).
* **Funding** (perpetuals): at every funding time (00:00, 08:00, 16:00 UTC) a position pays
  ``quantity * mark * rate`` (Binance: funding amount = position nominal value x funding rate;
  longs pay when the rate is positive; an isolated position's margin carries it). With
  ``broker.funding=auto`` (default) the rates come from the store's funding history when it covers
  the run, else from the bundled Binance BTCUSDT history (``btc_quant.sample``, for binanceusdm
  BTC/USDT:USDT) when that covers it, else the constant ``broker.funding_rate``
  (``funding_source``: ``store``, ``bundled``, ``constant``, or ``off``); the mark is the open of
  the bar at the funding time.

* **Trade replay** (``broker.fill_model=queue``): resting orders fill on the stored trade tape by
  their place in the queue at their price, with ``broker.latency_ms`` for entry and cancel; the
  bars only give the strategy its clock. The rules above stay the core's; see :mod:`.tape`.

Bars on which nothing can happen (no resting order reached, no liquidation, no funding with a
position, no wake or alert) are skipped in compiled code (:func:`.venue.skip_to`).
Strategies whose whole behaviour the broker knows in advance -- an :class:`~btc_quant.sdk.PairGrid`
(:meth:`SimBroker.run_pairs`, :mod:`.pairs`) or a :class:`~btc_quant.sdk.SignalStrategy`
(:meth:`SimBroker.run_signal`, :mod:`.signals`) -- can run the whole backtest in one compiled
loop over the same core, adding only their decisions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from btc_quant.core import margin as mm
from btc_quant.core.data import bundled_funding_arrays
from btc_quant.core.metrics import columns_frame
from btc_quant.sdk import (
    PROB,
    QUEUE,
    THROUGH,
    TOUCH,
    Account,
    BarArrays,
    BrokerConfig,
    ConfigError,
    DataError,
    Duration,
    ExchangeError,
    Fill,
    FillEvent,
    MarginState,
    Order,
    OrderError,
    OrderEvent,
    OrderStatus,
    OrderType,
    PositionSide,
    Side,
    SimulatedBroker,
    Step,
    StoreError,
    hookimpl,
    registered,
)

from . import venue as vc
from .tape import advance_tape, arrive, grow_tape, new_tape_state, rejoin, start_market

log = logging.getLogger(__name__)
_EPS = vc.EPS
FUNDING_PERIOD_MS = 8 * 3600 * 1000
_STATUS = {
    vc.ST_NEW: OrderStatus.NEW,
    vc.ST_FILLED: OrderStatus.FILLED,
    vc.ST_CANCELED: OrderStatus.CANCELED,
    vc.ST_REJECTED: OrderStatus.REJECTED,
    vc.ST_EXPIRED: OrderStatus.EXPIRED,
    vc.ST_PARTIAL: OrderStatus.PARTIALLY_FILLED,
}


class SimConfig(BrokerConfig):
    initial_cash: float = Field(10_000.0, gt=0, description="starting wallet balance in the quote currency (USDT)")
    fill_model: registered("fill_model") = Field(
        "through",
        description="rule for resting limit orders: through (default), touch, prob (with calibration), or queue (trade replay on stored trades)",
    )
    calibration: str | None = Field(None, description="fill_model=prob: the name of a calibration saved by quant calibrate --name NAME")
    fill_seed: int = Field(0, ge=0, description="fill_model=prob: seed of the per-order, per-bar fill draws (same seed, same fills)")
    path: Literal["nearest", "direction"] = Field(
        "nearest", description="intrabar path: nearest extreme first, or by bar direction (O-L-H-C up, O-H-L-C down)"
    )
    margin_mode: Literal["cross", "isolated"] = Field(
        "cross", description="perpetuals: cross or isolated margin (Binance's default is cross)"
    )
    leverage: float = Field(20.0, ge=1, le=125, description="perpetuals: leverage of the symbol (Binance's default is 20)")
    position_mode: Literal["one_way", "hedge"] = Field(
        "one_way",
        description="perpetuals: one_way (one net position, Binance's default) or hedge (a LONG and a SHORT position; orders name their position_side)",
    )
    funding_rate: float = Field(
        0.0001, ge=-0.03, le=0.03, description="perpetuals: funding rate per period when no funding history covers the run (0.0001 = 0.01%)"
    )
    funding: Literal["auto", "constant", "off"] = Field(
        "auto",
        description="auto: the store's history if it covers the run, else the bundled Binance BTCUSDT history, else funding_rate; constant: always funding_rate; off: none",
    )
    funding_interval: Duration = Field("8h", description="time between funding payments")
    liquidation_fee_rate: float = Field(
        0.0125, ge=0, le=0.1, description="liquidation clearance fee on the liquidated notional (Binance BTCUSDT liquidationFee 1.25%)"
    )
    max_volume_share: float | None = Field(
        None, gt=0, le=1, description="cap each order's fills per bar at this share of the bar's volume (partial fills); None = no cap"
    )
    check_margin: bool = Field(
        True, description="reject orders that need more initial margin (perpetual) or cash/holdings (spot) than available"
    )
    latency_ms: int = Field(
        0, ge=0, le=60_000, description="fill_model=queue: ms from placing (or canceling) an order until the exchange has it"
    )
    queue_qty: float | None = Field(
        None,
        gt=0,
        description="fill_model=queue: quantity (base asset) assumed ahead at a price no best bid/offer shows; "
        "default: the median displayed quantity of the period's stored quotes, 1.0 without quotes",
    )
    quote_advance: bool = Field(
        True, description="fill_model=queue: best bid/offer updates shorten the queue ahead (cancels); False: only prints do"
    )

    @model_validator(mode="after")
    def _calibration_with_prob(self):
        # a setting the user gave is never dropped: calibration only means something to prob
        if self.fill_model == "prob" and not self.calibration:
            raise ValueError("fill_model=prob needs calibration=NAME (a calibration saved by quant calibrate --name NAME)")
        if self.calibration and self.fill_model != "prob":
            raise ValueError(f"calibration={self.calibration} is used only by fill_model=prob (fill_model is {self.fill_model})")
        # (judged by value, not by whether it was set: `quant config show` writes every default out)
        values = self.model_dump(include={"latency_ms", "queue_qty", "quote_advance"})
        queue_only = [k for k, value in values.items() if value != type(self).model_fields[k].default]
        if queue_only and self.fill_model != "queue":
            raise ValueError(f"{', '.join(queue_only)}: used only by fill_model=queue (fill_model is {self.fill_model})")
        return self


class SimBroker(SimulatedBroker):
    """Native backtest broker: the strategy-facing side of the venue core (:mod:`.venue`)."""

    Config: ClassVar[type[SimConfig]] = SimConfig

    def __init__(self, config: SimConfig, runtime) -> None:
        super().__init__(config, runtime)
        self.fill_model = runtime.registry.get("fill_model", config.fill_model, key="broker.fill_model").factory
        self.calibration = load_calibration(config.calibration) if getattr(self.fill_model, "calibrated", False) else None
        #: what results and --fill-band show of the calibration (RunResult.take_sources)
        self.fill_calibration = (
            None
            if self.calibration is None
            else {"name": self.calibration.name, "samples": self.calibration.samples, "fills": self.calibration.fills}
        )
        self.perpetual = self.instrument.is_perpetual
        self.brackets = self.instrument.margin_brackets or mm.NO_BRACKETS
        self.mode = "cross" if self.perpetual else "spot"
        if self.perpetual:
            self.mode = config.margin_mode
        self.leverage = float(config.leverage) if self.perpetual else 1.0
        if config.position_mode == "hedge" and not self.perpetual:
            raise ConfigError(f"broker.position_mode=hedge: {self.instrument.symbol} is a spot market (hedge mode is for perpetuals)")
        self.position_mode = config.position_mode
        self.funding_source = "off"  # where the funding rates come from (load)
        self.liquidation_price_source = "last"  # "mark" when the bars carry the mark price (load)
        self._liq_of: BarArrays | None = None  # the bars _liq_low/_liq_high were computed for
        self._liq_low = self._liq_high = np.empty(0)
        self.venue = self.new_venue(log_events=True, orders=32, slots=8, fills=32, funding=4)  # grows as the run needs
        self._account = Account(config.initial_cash)
        self._position = self._account.position(self.instrument.symbol)
        self._sides = (  # hedge mode: the LONG (core row 0) and SHORT (row 1) positions
            (
                self._account.position(self.instrument.symbol, PositionSide.LONG),
                self._account.position(self.instrument.symbol, PositionSide.SHORT),
            )
            if self.position_mode == "hedge"
            else ()
        )
        self._orders: dict[str, Order] = {}  # open orders by client id, oldest first
        self._oi: dict[str, int] = {}  # open orders' rows in the core
        self._known: list[Order | None] = []  # the latest Order object of each core row
        self._events: list = []
        self._i = 0  # bar being processed
        self._inside = False  # walking bar _i's path
        self._alert: tuple[float, float] | None = None
        # Set by load(); brokers fed bar by bar (paper) never call it and get no funding schedule.
        self._wake_index: np.ndarray | None = None
        self._funding: pd.DataFrame | None = None  # paper trading's (empty) schedule; a backtest keeps arrays
        self._fund_ts = self._fund_bar = np.empty(0, np.int64)
        self._fund_rate = np.empty(0)
        self._arrays_of: BarArrays | None = None  # the bars _arrays were made of
        self._arrays: tuple = ()
        #: fill model queue: resting orders fill on the stored trade tape (:mod:`.tape`), set up by load()
        self.tape = bool(self.fill_model.tape)
        self._tp = None
        self._tape: tuple = ()
        self.tape_source: dict | None = None  # what the replay read: trades, quotes, queue_qty

    # --- the venue core ----------------------------------------------------------------------------
    def venue_params(self) -> np.ndarray:
        """The core's parameter vector ``P`` for this broker's settings and instrument."""
        inst, cfg = self.instrument, self.config
        P = np.zeros(vc.NPARAM)
        P[vc.P_MAKER], P[vc.P_TAKER], P[vc.P_LIQFEE], P[vc.P_LOT] = inst.maker_fee, inst.taker_fee, cfg.liquidation_fee_rate, inst.lot_size
        P[vc.P_STRICT] = 1.0 if self.fill_model.strict else 0.0
        P[vc.P_PATHDIR] = 1.0 if cfg.path == "direction" else 0.0
        P[vc.P_CHECK] = 1.0 if cfg.check_margin else 0.0
        P[vc.P_PERP] = 1.0 if self.perpetual else 0.0
        P[vc.P_ISOLATED] = 1.0 if self.mode == "isolated" else 0.0
        P[vc.P_LEV] = self.leverage
        P[vc.P_HEDGE] = 1.0 if self.position_mode == "hedge" else 0.0
        P[vc.P_VOLSHARE] = cfg.max_volume_share or 0.0
        P[vc.P_MINNOT] = inst.min_notional
        P[vc.P_QSCALE] = 10.0**inst.qty_decimals
        if self.calibration is not None:  # fill model prob (venue.prob_allows)
            P[vc.P_PROB] = 1.0
            P[vc.P_PB0], P[vc.P_PB1], P[vc.P_PB2] = self.calibration.coef
            P[vc.P_TICK] = self.calibration.tick
            P[vc.P_SEED] = float(cfg.fill_seed)
        P[vc.P_LOT_UNITS] = round(inst.lot_size * P[vc.P_QSCALE])
        P[vc.P_LIQRULE] = vc.LIQ_RULE_OF.get(inst.exchange, vc.LIQ_BINANCE)
        return P

    def new_venue(self, *, log_events: bool = False, **capacity) -> vc.VenueState:
        """A fresh core state for this broker (``capacity``: :func:`.venue.new_state`'s sizes)."""
        P = self.venue_params()
        P[vc.P_LOG] = 1.0 if log_events else 0.0
        return vc.new_state(P, vc.brackets_array(self.brackets), initial_cash=self.config.initial_cash, **capacity)

    def funding_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(bar of each funding time, its rate) for the loaded bars, as writable arrays."""
        return np.array(self._fund_bar, dtype=np.int64), np.array(self._fund_rate, dtype=np.float64)

    @property
    def _price(self) -> float:
        return float(self.venue.S[vc.PRICE])

    @_price.setter
    def _price(self, value: float) -> None:
        self.venue.S[vc.PRICE] = value

    @property
    def _now(self) -> int:
        return int(self.venue.S[vc.NOW])

    @_now.setter
    def _now(self, value: int) -> None:
        self.venue.S[vc.NOW] = value

    @property
    def _fk(self) -> int:
        return int(self.venue.S[vc.FK])

    @_fk.setter
    def _fk(self, value: int) -> None:
        self.venue.S[vc.FK] = value

    @property
    def liquidations(self) -> int:
        return int(self.venue.S[vc.NLIQ])

    @property
    def insurance(self) -> float:
        return float(self.venue.S[vc.INSUR])

    def _room(self) -> None:
        """Grow the core's logs before a call when the worst single event might not fit."""
        left = len(self._fund_bar) - self._fk
        if not vc.has_room(self.venue, min(left, 4)):
            self.venue = vc.grow(self.venue, funding_rows=len(self._fund_bar))

    def _call(self, fn, *args) -> int:
        """A core call that answers ``SUB_FULL`` (nothing done) when the logs need room: grow, retry."""
        while True:
            out = fn(self.venue, *args)
            if out != vc.SUB_FULL:
                return out
            self.venue = vc.grow(self.venue, funding_rows=len(self._fund_bar))

    def _drain(self) -> None:
        """Turn what the core logged into order and fill events, and mirror the account."""
        v = self.venue
        S, O, FL = v.S, v.O, v.FL
        now = self._now
        for kind, oi, fi in v.EV[: int(S[vc.NEV])].astype(np.int64).tolist():
            order = self._known[oi] if oi < len(self._known) else None
            if kind == vc.EV_ACCEPTED:
                order = order.transition(OrderStatus.NEW, updated_ms=now)
                self._known[oi] = self._orders[order.client_id] = order
                self._events.append(OrderEvent(order))
            elif kind == vc.EV_AMENDED:
                order = replace(order, price=float(O[oi, vc.O_PRICE]), quantity=float(O[oi, vc.O_QTY]), updated_ms=now)
                self._orders.pop(order.client_id, None)  # at the back of the queue
                self._known[oi] = self._orders[order.client_id] = order
                self._events.append(OrderEvent(order))
            elif kind == vc.EV_STATUS:
                self._close(order.client_id)
                if order.price is not None and (order.price != O[oi, vc.O_PRICE] or order.quantity != O[oi, vc.O_QTY]):
                    order = replace(order, price=float(O[oi, vc.O_PRICE]), quantity=float(O[oi, vc.O_QTY]))  # an amend that expired
                order = order.transition(
                    _STATUS[int(O[oi, vc.O_STATUS])], reason=vc.reason_text(v, oi), updated_ms=int(O[oi, vc.O_UPDATED])
                )
                self._known[oi] = order
                self._events.append(OrderEvent(order))
            else:  # EV_FILL
                if order is None:  # the core's own liquidation order
                    order = self._liquidation_order(oi)
                status = _STATUS[int(O[oi, vc.O_STATUS])]
                fill = Fill(
                    trade_id=f"sim-{int(FL[fi, vc.F_SEQ])}",
                    client_id=order.client_id,
                    symbol=order.symbol,
                    side=order.side,
                    price=float(FL[fi, vc.F_PRICE]),
                    quantity=float(FL[fi, vc.F_QTY]),
                    fee=float(FL[fi, vc.F_FEE]),
                    ts_ms=int(O[oi, vc.O_UPDATED]),
                    is_maker=bool(FL[fi, vc.F_MAKER]),
                    is_liquidation=bool(FL[fi, vc.F_LIQ]),
                    tag=order.tag,
                    position_side=order.position_side,
                )
                order = order.transition(
                    status, filled_qty=float(O[oi, vc.O_FILLED]), avg_fill_price=float(O[oi, vc.O_AVG]), updated_ms=fill.ts_ms
                )
                self._known[oi] = order
                if status is OrderStatus.FILLED:
                    self._close(order.client_id)
                else:
                    self._orders[order.client_id] = order
                self._events.append(FillEvent(fill, order))
        S[vc.NEV] = 0
        self._mirror()

    def _close(self, client_id: str) -> None:
        self._orders.pop(client_id, None)
        self._oi.pop(client_id, None)

    def _liquidation_order(self, oi: int) -> Order:
        O = self.venue.O
        order = Order(
            client_id=f"liquidation-{int(O[oi, vc.O_REF])}",
            symbol=self.instrument.symbol,
            side=Side.BUY if O[oi, vc.O_SIDE] > 0 else Side.SELL,
            type=OrderType.MARKET,
            quantity=float(O[oi, vc.O_QTY]),
            status=OrderStatus.NEW,
            created_ms=int(O[oi, vc.O_CREATED]),
            updated_ms=int(O[oi, vc.O_CREATED]),
            tag="liquidation",
            position_side=vc.POSITION_SIDES[int(O[oi, vc.O_PSIDE])],
        )
        self._known.extend([None] * (oi + 1 - len(self._known)))
        self._known[oi] = order
        return order

    def _mirror(self) -> None:
        """The domain Account/Position show the core's account (the core computed it)."""
        S, POS = self.venue.S, self.venue.POS
        self._account.wallet_balance = float(S[vc.WALLET])
        for r, pos in enumerate(self._sides or (self._position,)):
            pos.quantity, pos.entry_price = float(POS[r, vc.Q_QTY]), float(POS[r, vc.Q_ENTRY])
            pos.realized_pnl, pos.fees, pos.funding = float(POS[r, vc.Q_REALIZED]), float(POS[r, vc.Q_FEES]), float(POS[r, vc.Q_FUNDING])

    # --- data ----------------------------------------------------------------------------
    def load(self, bars: BarArrays) -> None:
        self.bars = bars
        self._price = float(bars.open[0])
        self._now = int(bars.ts[0])
        self._wake_index: np.ndarray | None = None
        with self.runtime.store_session():  # funding, trades and best bid/offer over one connection
            ts, bar, rate = self._funding_arrays(bars)
            self._fund_ts, self._fund_bar, self._fund_rate = (
                np.array(ts, dtype=np.int64),
                np.array(bar, dtype=np.int64),
                np.array(rate, dtype=np.float64),
            )
            self._fk = 0
            self._liq_bounds()
            if self.tape:
                self._load_tape(bars)

    def _liq_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per bar, how far a liquidation can be triggered (:func:`.venue.liquidation_bounds`)."""
        if self._liq_of is not self.bars:
            low, high, self.liquidation_price_source = vc.liquidation_bounds(self.bars)
            self._liq_low, self._liq_high = np.require(low, np.float64, "C"), np.require(high, np.float64, "C")
            self._liq_of = self.bars
        return self._liq_low, self._liq_high

    def _funding_schedule(self, bars: BarArrays) -> pd.DataFrame:
        """Funding times inside the run, the bar each falls on and its rate."""
        ts, bar, rate = self._funding_arrays(bars)
        return pd.DataFrame({"ts": ts, "bar": bar, "rate": rate})

    def _funding_arrays(self, bars: BarArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_funding_schedule` as arrays (ts, bar, rate): no frame built per run."""
        cfg = self.config
        if not self.perpetual or cfg.funding == "off" or len(bars) == 0:
            self.funding_source = "off"
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        start, end = int(bars.ts[0]), int(bars.ts[-1])
        period = int(cfg.funding_interval.total_seconds() * 1000)
        history = None
        self.funding_source = "constant"
        if cfg.funding == "auto":
            history, self.funding_source = self._funding_history(start, end, period)
        if history is None:
            first = -(-start // period) * period
            ts = np.arange(first, end + 1, period, dtype=np.int64)
            rates = np.full(len(ts), cfg.funding_rate)
        else:
            ts, rates = history
        bar = np.searchsorted(bars.ts, ts, side="left")
        keep = bar < len(bars)
        return ts[keep], bar[keep].astype(np.int64), rates[keep]

    def _funding_history(self, start: int, end: int, period: int) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
        """((ts, rate), source) for ``broker.funding=auto``: the store's history if it covers
        ``[start, end]``, else the bundled one if it does, else (None, "constant")."""
        inst, cfg = self.instrument, self.config
        if self.runtime.config.store.name in self.runtime.registry.names("store"):
            try:
                frame = self.runtime.store().read_funding(inst.exchange, inst.symbol, start, end + 1)
            except StoreError as exc:  # the bars may come from a file: a broken store must not stop the run
                log.warning("funding history unavailable from the store (%s)", exc)
                frame = None
            if frame is not None and len(frame):
                stored = frame["ts"].to_numpy(np.int64), frame["rate"].to_numpy(np.float64)
                if _covers(stored[0], start, end, period):
                    return stored, "store"
                log.warning("the store's funding history of %s %s does not cover the run; not using it", inst.exchange, inst.symbol)
        bundled = bundled_funding_arrays(inst.exchange, inst.symbol, start, end + 1)
        if bundled is not None and len(bundled[0]) and _covers(bundled[0], start, end, period):
            return bundled, "bundled"
        log.info(
            "no funding history covers %s %s over the run: constant broker.funding_rate=%g every %s",
            inst.exchange,
            inst.symbol,
            cfg.funding_rate,
            cfg.funding_interval,
        )
        return None, "constant"

    # --- Broker API ------------------------------------------------------------------------
    def submit(self, order: Order) -> None:
        reason = position_side_refusal(self.position_mode, order)
        if reason is not None:
            self._events.append(OrderEvent(order.transition(OrderStatus.REJECTED, reason=reason, updated_ms=self._now)))
            return
        price = np.nan if order.price is None else order.price
        side = 1.0 if order.side is Side.BUY else -1.0
        pside = vc.PS_OF[order.position_side]
        while (oi := vc.new_order(self.venue, side, price, order.quantity, float(order.post_only), float(order.reduce_only), pside)) < 0:
            self.venue = vc.grow(self.venue, funding_rows=len(self._fund_bar))
        self._known.extend([None] * (oi + 1 - len(self._known)))
        self._known[oi] = order
        self._oi[order.client_id] = oi
        if self.tape:
            self._tape_submit(oi)
        else:
            self._call(vc.submit, oi, self._inside)
        self._drain()

    def amend(self, client_id: str, *, price: float | None = None, quantity: float | None = None) -> None:
        """Cancel-replace: new price and/or quantity, same client id, back of the queue."""
        order = self._orders.get(client_id)
        if order is None:
            raise OrderError(f"order {client_id}: not open, cannot amend")
        if order.type is not OrderType.LIMIT:
            raise OrderError(f"order {client_id}: only limit orders can be amended")
        new_qty = order.quantity if quantity is None else quantity
        if new_qty <= order.filled_qty + _EPS:
            raise OrderError(f"order {client_id}: amended quantity {new_qty} is not above the filled {order.filled_qty}")
        replace(order, price=order.price if price is None else price, quantity=new_qty)  # validates the new values
        if self.tape and self.config.latency_ms:
            # the amend reaches the exchange latency_ms later; the order can fill as it was until then (.tape)
            tp, oi = self._tape_state(), self._oi[client_id]
            tp.AMEND[oi] = self._now + int(self.config.latency_ms)
            tp.AMEND_PRICE[oi] = order.price if price is None else price
            tp.AMEND_QTY[oi] = new_qty
            return
        if self.tape:
            tick, queue_qty, _ = self._tape_params()
            self._call(rejoin, self._tape_state(), self._oi[client_id], order.price if price is None else price, new_qty, tick, queue_qty)
        else:
            self._call(vc.amend, self._oi[client_id], order.price if price is None else price, new_qty, self._inside)
        self._drain()

    def cancel(self, client_id: str) -> None:
        oi = self._oi.get(client_id)
        if oi is not None and self.tape and self.config.latency_ms:
            # the cancel reaches the exchange latency_ms later; the order can fill until then (.tape)
            tp = self._tape_state()
            tp.DEAD[oi] = min(int(tp.DEAD[oi]), self._now + int(self.config.latency_ms))
            return
        if oi is not None:
            self._room()
            vc.cancel(self.venue, oi, vc.R_NONE)
            self._drain()

    def set_price_alert(self, low: float | None, high: float | None) -> None:
        if low is None and high is None:
            self._alert = None
        else:
            self._alert = (-np.inf if low is None else low, np.inf if high is None else high)

    def events(self) -> list:
        events, self._events = self._events, []
        return events

    def open_orders(self) -> list[Order]:
        return list(self._orders.values())

    def account(self) -> Account:
        return self._account

    def equity(self) -> float:
        """Wallet plus the unrealised PnL of the position at the current price."""
        S, POS = self.venue.S, self.venue.POS
        equity = float(S[vc.WALLET])
        for r in range(2):
            if abs(POS[r, vc.Q_QTY]) >= 1e-12:
                equity += POS[r, vc.Q_QTY] * (S[vc.PRICE] - POS[r, vc.Q_ENTRY])
        return equity

    @property
    def now_ms(self) -> int:
        return self._now

    @property
    def last_price(self) -> float:
        return self._price

    # --- margin ----------------------------------------------------------------------------
    def _perpetual_only(self, what: str) -> None:
        if not self.perpetual:
            raise ExchangeError(f"{self.instrument.symbol} is a spot market: no {what}")

    def set_leverage(self, leverage: float) -> None:
        """Binance POST /fapi/v1/leverage: 1 .. the bracket's maximum for the current position."""
        self._perpetual_only("leverage")
        if not vc.set_leverage(self.venue, float(leverage)):
            notional = self._notional()
            cap = vc.max_leverage(notional, self.venue.BB)
            raise ExchangeError(f"leverage {leverage:g} is outside 1..{cap:g} for a {notional:,.0f} USDT position")
        self.leverage = float(leverage)

    def set_margin_mode(self, mode: str) -> None:
        """Binance POST /fapi/v1/marginType: only while flat and without open orders."""
        self._perpetual_only("margin modes")
        if mode not in ("cross", "isolated"):
            raise ExchangeError(f"margin mode must be cross or isolated, got {mode!r}")
        if mode != self.mode and (vc.has_position(self.venue) or self._orders):
            raise ExchangeError("margin mode cannot change while a position or open orders exist (Binance -4047/-4048)")
        self.mode = mode
        self.venue.P[vc.P_ISOLATED] = 1.0 if mode == "isolated" else 0.0

    def adjust_margin(self, amount: float, position_side: PositionSide | str = PositionSide.BOTH) -> None:
        """Binance POST /fapi/v1/positionMargin: move ``amount`` into (> 0) or out of the isolated
        position (hedge mode: of the ``position_side`` LONG or SHORT one, which it must name, -4061)."""
        self._perpetual_only("isolated margin")
        if self.mode != "isolated":
            raise ExchangeError("adjust_margin needs margin_mode isolated")
        side = PositionSide(position_side)
        if (self.position_mode == "hedge") == (side is PositionSide.BOTH):
            raise ExchangeError(
                f"adjust_margin: positionSide {side.value} does not match the {self.position_mode} position mode (Binance -4061)"
            )
        r = 1 if side is PositionSide.SHORT else 0
        pos = self.position(side)
        if pos.is_flat:
            raise ExchangeError("no isolated position to adjust margin of")
        free = self._available()
        if amount > 0 and amount > free + 1e-9:
            raise ExchangeError(f"cannot add {amount:.2f} margin: {free:.2f} available")
        POS = self.venue.POS
        initial = abs(pos.quantity) * pos.entry_price / self.leverage
        if amount < 0 and POS[r, vc.Q_ISO] + amount < initial - 1e-9:
            raise ExchangeError(f"cannot remove {-amount:.2f} margin: the position keeps at least its initial margin {initial:.2f}")
        self._room()
        vc.add_isolated_margin(self.venue, r, float(amount))

    @property
    def _iso_margin(self) -> float:
        return float(self.venue.POS[0, vc.Q_ISO])

    def _available(self) -> float:
        """Binance availableBalance: what new orders can use as initial margin."""
        return float(vc.available(self.venue))

    def set_position_mode(self, mode: str) -> None:
        """Binance POST /fapi/v1/positionSide/dual: ``hedge`` or ``one_way``, only while flat and
        without open orders (-4068 / -4067)."""
        self._perpetual_only("hedge mode")
        if mode not in ("one_way", "hedge"):
            raise ExchangeError(f"position mode must be one_way or hedge, got {mode!r}")
        if mode == self.position_mode:
            return
        if self._orders:
            raise ExchangeError("position mode cannot change while open orders exist (Binance -4067)")
        if vc.has_position(self.venue):
            raise ExchangeError("position mode cannot change while a position exists (Binance -4068)")
        self.position_mode = mode
        self.venue.P[vc.P_HEDGE] = 1.0 if mode == "hedge" else 0.0
        symbol = self.instrument.symbol
        self._sides = (
            (self._account.position(symbol, PositionSide.LONG), self._account.position(symbol, PositionSide.SHORT))
            if mode == "hedge"
            else ()
        )

    def _notional(self) -> float:
        """Absolute notional of the position(s) at the current price (hedge mode: both legs)."""
        POS = self.venue.POS
        return float((abs(POS[0, vc.Q_QTY]) + abs(POS[1, vc.Q_QTY])) * self._price)

    def margin(self, position_side: PositionSide | str = PositionSide.BOTH) -> MarginState:
        """The account's margin picture (hedge mode: both positions summed), or in hedge mode the
        LONG or SHORT position's (Binance GET /fapi/v2/positionRisk, one row per positionSide:
        its isolatedMargin, maintenance and liquidationPrice), the wallet, leverage and available
        balance being the account's."""
        side = PositionSide(position_side)
        if side is PositionSide.BOTH:
            rows = (0, 1)
        elif self.position_mode == "hedge":
            rows = (1,) if side is PositionSide.SHORT else (0,)
        else:
            raise ExchangeError(f"margin of positionSide {side.value}: the account is in one-way mode (Binance -4061)")
        POS = self.venue.POS
        notional = float(sum(abs(POS[r, vc.Q_QTY]) for r in rows) * self._price)
        held = float(sum(POS[r, vc.Q_ISO] for r in rows)) if self.mode == "isolated" else notional / self.leverage
        return MarginState(
            mode=self.mode,
            leverage=self.leverage,
            wallet_balance=self._account.wallet_balance,
            position_margin=held,
            maintenance_margin=sum(float(vc.maintenance_margin(abs(POS[r, vc.Q_QTY]) * self._price, self.venue.BB)) for r in rows)
            if self.perpetual
            else 0.0,
            available_balance=max(self._available(), 0.0),
            liquidation_price=self.liquidation_price(side),
        )

    def liquidation_price(self, position_side: PositionSide | str = PositionSide.BOTH) -> float | None:
        """The venue's liquidation price of the current position (None: flat, spot, unreachable):
        Binance's formula, or the exchange's own (:func:`.venue.refresh_liquidation`). Hedge mode:
        of the LONG or SHORT position (cross margin: one price for the account, the one of
        whichever side is open); ``BOTH`` there means the first open side."""
        POS = self.venue.POS
        side = PositionSide(position_side)
        rows = (1,) if side is PositionSide.SHORT else (0,) if side is PositionSide.LONG or self.position_mode != "hedge" else (0, 1)
        r = next((r for r in rows if abs(POS[r, vc.Q_QTY]) >= 1e-12), None)
        if not self.perpetual or r is None:
            return None
        lp = float(POS[r, vc.Q_LIQ])
        return None if math.isnan(lp) else lp

    def margin_ratio(self, mark: float) -> float:
        """Maintenance margin / margin balance at ``mark`` (Binance liquidates at >= 1)."""
        pos = self._position
        if not self.perpetual or pos.is_flat:
            return 0.0
        wallet = self._iso_margin if self.mode == "isolated" else self._account.wallet_balance
        return float(vc.margin_ratio(pos.quantity, pos.entry_price, mark, wallet, self.venue.BB))

    # --- simulation ----------------------------------------------------------------------------
    def _next_wake(self, start: int, wake: np.ndarray | None) -> int:
        if wake is None:
            return start
        if self._wake_index is None:
            self._wake_index = np.flatnonzero(wake)
        k = int(self._wake_index.searchsorted(start))
        return int(self._wake_index[k]) if k < len(self._wake_index) else len(self.bars)

    def _bar_arrays(self) -> tuple:
        """The bars as the core's loop takes them (rebuilt when the bars change: paper trading)."""
        if self._arrays_of is not self.bars:
            from .pairs import bar_arrays

            self._arrays = (*bar_arrays(self.bars), *self._liq_bounds())
            self._arrays_of = self.bars
        return self._arrays

    def advance(self, wake: np.ndarray | None) -> Step:
        n = len(self.bars)
        if self._i >= n:
            return Step(n, True)
        bars = self._bar_arrays()
        alert_low, alert_high = self._alert if self._alert is not None else (-np.inf, np.inf)
        wake_at = self._next_wake(self._i, wake)
        while True:
            if self.tape:  # fill_model=queue: every bar is walked on the tape (.tape)
                code, i, inside = advance_tape(
                    self.venue,
                    self._tape_state(),
                    bars,
                    self._fund_bar,
                    self._fund_rate,
                    self._i,
                    self._inside,
                    wake_at,
                    alert_low,
                    alert_high,
                    *self._tape_args,
                )
            else:
                code, i, inside = vc.advance(
                    self.venue, *bars, self._fund_bar, self._fund_rate, self._i, self._inside, wake_at, alert_low, alert_high
                )
            self._i, self._inside = int(i), bool(inside)
            if code != vc.ADV_ROOM:
                break
            self._room()
        self._drain()
        if code == vc.ADV_EVENT:
            return Step(self._i, False)
        if code == vc.ADV_END:
            return Step(n, True)
        self._i += 1  # the bar closed
        if code == vc.ADV_ALERT:
            self._alert = None
        return Step(self._i - 1, True, code == vc.ADV_ALERT)

    # --- trade replay (fill_model=queue, :mod:`.tape`) ---------------------------------------
    def _load_tape(self, bars: BarArrays) -> None:
        """Read the period's trades (and best bid/offer) from the store; DataError naming the
        period and the import command when it has none, or when they do not cover the bars."""
        from btc_quant.core.data import ms_to_iso, timeframe_ms

        inst = self.instrument
        bar_ms = timeframe_ms(self.runtime.config.timeframe)
        start, end = int(bars.ts[0]), int(bars.ts[-1]) + bar_ms
        span = f"{ms_to_iso(start)} .. {ms_to_iso(end)} UTC"
        hint = f"import a tape: quant data import FILE exchange={inst.exchange} symbol={inst.symbol} kind=trades"
        store = self.runtime.store() if self.runtime.config.store.name in self.runtime.registry.names("store") else None
        if store is None:
            raise DataError(f"broker.fill_model=queue reads trades from the store, and store={self.runtime.config.store.name} is not one")
        trades = store.read_trades(inst.exchange, inst.symbol, start, end)
        if len(trades) == 0:
            raise DataError(f"broker.fill_model=queue: no {inst.exchange} {inst.symbol} trades stored for {span}", hint=hint)
        if trades.ts[0] >= start + bar_ms or trades.ts[-1] < end - bar_ms:
            raise DataError(
                f"broker.fill_model=queue: the stored {inst.exchange} {inst.symbol} trades cover "
                f"{ms_to_iso(int(trades.ts[0]))} .. {ms_to_iso(int(trades.ts[-1]))} UTC, not the run's bars {span}",
                hint="set data.start and data.end inside the tape (quant data ls shows it), or " + hint.replace("import a tape: ", ""),
            )
        quotes = store.read_quotes(inst.exchange, inst.symbol, start, end)
        queue_qty = self.config.queue_qty
        if queue_qty is None:
            queue_qty = float(np.median(np.concatenate((quotes.bid_qty, quotes.ask_qty)), overwrite_input=True)) if len(quotes) else 1.0
        self._tape = (
            trades.ts,
            trades.price,
            trades.qty,
            trades.side.astype(np.int64),
            quotes.ts,
            quotes.bid_px,
            quotes.bid_qty,
            quotes.ask_px,
            quotes.ask_qty,
        )
        self._tp = new_tape_state(len(self.venue.O))
        start_market(self._tp, trades, quotes, start)
        self._queue_qty = float(queue_qty)
        self.tape_source = {"trades": len(trades), "quotes": len(quotes), "queue_qty": self._queue_qty}
        tick, queue_qty, quote_advance = self._tape_params()
        self._tape_args = (timeframe_ms(self.runtime.config.timeframe), self._tape, tick, queue_qty, quote_advance)
        log.info(
            "fill_model=queue: %s trades and %s best bid/offer updates over %s; %g assumed ahead where no quote shows the price%s",
            f"{len(trades):,}",
            f"{len(quotes):,}",
            span,
            self._queue_qty,
            "" if self.config.queue_qty is not None or not len(quotes) else " (the quotes' median)",
        )

    def _tape_state(self):
        self._tp = grow_tape(self._tp, len(self.venue.O))
        return self._tp

    def _tape_params(self) -> tuple[float, float, bool]:
        return float(self.instrument.tick_size), self._queue_qty, bool(self.config.quote_advance)

    def _tape_submit(self, oi: int) -> None:
        tp = self._tape_state()
        latency = int(self.config.latency_ms)
        tp.LIVE[oi] = self._now + latency
        if latency == 0:
            tick, queue_qty, _ = self._tape_params()
            self._call(arrive, tp, oi, tick, queue_qty)
            return
        tp.PEND[int(tp.NP[0])] = oi
        tp.NP[0] += 1

    # --- compiled backtests (the declared protocol: core/strategy.py, core/broker.py) ------------
    def compiled_refusal(self, engine, offer) -> str | None:
        """Why this sim cannot run ``offer`` (a strategy's compiled decisions) in compiled code,
        or None. The one check: the strategy's own reason, the engine's (risk checks, observers of
        every order or fill), then the sim's (a subclass, partial fills, an unknown loop)."""
        if offer.why_not is not None:
            return offer.why_not
        if self.position_mode == "hedge" and offer.kind != "kernel":  # a kernel says itself whether it trades hedge positions
            return "broker.position_mode=hedge runs on the event path (the compiled loops trade one-way positions)"
        reason = engine.why_not_compiled()
        if reason is not None:
            return reason
        if type(self) is not SimBroker:  # a subclass may change the rules the compiled loops run
            return f"broker {type(self).__name__} is not the sim itself"
        if self.tape:
            return "broker.fill_model=queue replays the trade tape on the event path (the compiled loops walk bars)"
        if offer.kind in ("signal", "pairs"):
            from .pairs import why_not

            return why_not(self)
        if offer.kind == "kernel":
            if self.calibration is not None:  # a kernel reads P_STRICT only, not the prob model
                return "broker.fill_model=prob runs on the venue core's walk (event, signal and pairs paths), not in a strategy kernel"
            if self.config.max_volume_share is not None:  # a kernel's decisions assume whole fills
                return "broker.max_volume_share (partial fills) is set"
            return None if offer.run is not None else "kernel offered without its run function"
        return f"the sim has no {offer.kind!r} decision loop (it has signal, pairs, kernel)"

    def run_compiled(self, engine, bars: BarArrays, offer):
        """Run an accepted offer: the :mod:`.signals` or :mod:`.pairs` loop over the venue core,
        or the strategy's own kernel. None when the loop stopped at a case it does not implement."""
        if offer.kind == "signal":
            from .signals import run_signal

            return run_signal(self, engine, bars, engine.strategy)
        if offer.kind == "pairs":
            from .pairs import run_pairs

            return run_pairs(self, engine, bars, engine.strategy)
        return offer.run(engine, bars)

    # --- results ----------------------------------------------------------------------------
    def equity_curve(self) -> np.ndarray:
        # equity = wallet + qty * (close - entry) = (initial + sum of -qty*price - fee - funding) + qty * close
        return vc.equity_curve(self.venue, self.bars.close, self.config.initial_cash)

    def fill_bar_indices(self) -> np.ndarray:
        return self.venue.FL[: int(self.venue.S[vc.NFILL]), vc.F_BAR].astype(np.int64)

    def bar_series(self) -> dict[str, np.ndarray]:
        """Per-bar liquidation price (NaN when flat or unreachable) at each bar's close; hedge mode:
        the LONG position's, and the SHORT one's as ``liquidation_price_short``
        (:func:`btc_quant.core.results.assemble_result` makes the result's series of them)."""
        series = {"liquidation_price": vc.liquidation_marks(self.venue, len(self.bars))}
        if self.position_mode == "hedge":
            series["liquidation_price_short"] = vc.liquidation_marks(self.venue, len(self.bars), row=1)
        return series

    def funding_payments(self) -> pd.DataFrame:
        """One row per funding payment: ts, bar, rate, mark, position, amount (> 0 = paid)."""
        v = self.venue
        rows = v.FUNDR[: int(v.S[vc.NFUND])]
        if not len(rows):  # most runs: a copy of the one empty frame built per process
            return _no_funding().copy()
        fk = rows[:, 0].astype(np.int64)
        return columns_frame(  # each column already has its dtype
            {
                "ts": pd.to_datetime(self._fund_ts[fk], unit="ms", utc=True).array,
                "bar": rows[:, 1].astype(np.int64),
                "rate": self._fund_rate[fk],
                "mark": rows[:, 2],
                "position": rows[:, 3],
                "amount": rows[:, 4],
            }
        )


def position_side_refusal(position_mode: str, order: Order) -> str | None:
    """Why Binance refuses ``order`` in ``position_mode``, or None: in one-way mode only
    ``positionSide`` BOTH (-4061), in hedge mode only LONG/SHORT (-4061) and no ``reduceOnly``
    (-1106: SELL LONG / BUY SHORT close instead). Source: Binance USD-M "New Order (TRADE)",
    positionSide and reduceOnly parameters, and its error codes page."""
    hedge = position_mode == "hedge"
    if hedge == (order.position_side is PositionSide.BOTH):
        return (
            f"order {order.client_id}: positionSide {order.position_side.value} does not match the account's "
            f"{'hedge' if hedge else 'one-way'} position mode (Binance -4061)"
        )
    if hedge and order.reduce_only:
        return f"order {order.client_id}: reduceOnly is not accepted in hedge mode; SELL LONG / BUY SHORT close (Binance -1106)"
    return None


def _covers(ts: np.ndarray, start: int, end: int, period: int) -> bool:
    """Do funding times ``ts`` (sorted) cover ``[start, end]``: one within a period of each end and
    no hole longer than one and a half periods between them (a rate for every funding time)?"""
    if len(ts) == 0:
        return False
    if ts[0] > start + period or ts[-1] < end - period:
        return False
    return len(ts) < 2 or int(np.diff(ts).max()) <= period * 3 // 2


@lru_cache(maxsize=1)
def _no_funding() -> pd.DataFrame:
    frame = pd.DataFrame([], columns=["ts", "bar", "rate", "mark", "position", "amount"])
    frame["ts"] = pd.to_datetime(frame["ts"].astype("int64"), unit="ms", utc=True)
    return frame


def load_calibration(name: str):
    """The calibration ``name`` saved by ``quant calibrate`` (``<data dir>/calibrations/NAME.json``);
    ConfigError naming what is known when it is missing."""
    from btc_quant.core.paths import data_dir

    from ..calibrate import Calibration

    cal = Calibration.load(data_dir() / "calibrations", name)
    if len(cal.coef) != 3 or not cal.tick > 0:
        raise ConfigError(f"calibration {name!r}: expected 3 coefficients and a tick > 0, got {cal.coef} and tick {cal.tick}")
    return cal


@hookimpl
def quant_register_brokers(register):
    register("sim", SimBroker)


@hookimpl
def quant_register_fill_models(register):
    register("through", THROUGH)
    register("touch", TOUCH)
    register("prob", PROB)
    register("queue", QUEUE)

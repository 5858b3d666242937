"""The broker interface: one contract for simulated, paper and live (ccxt) brokers.

The engine and strategies are synchronous; brokers may not be. The contract is built so that a
live broker can do its I/O on an asyncio loop while the engine stays synchronous:

* **Requests do not block and return nothing.** :meth:`Broker.submit` and :meth:`Broker.cancel`
  hand the request over (a simulated broker acts at once; a live broker queues it for its asyncio
  task, which sends it with the order's ``client_id`` so that a retry after a timeout can be looked
  up instead of duplicated).
* **Outcomes come back as events.** Acknowledgements, rejections, cancels, expiries and fills are
  queued as :class:`OrderEvent` / :class:`FillEvent` and drained by the engine with
  :meth:`Broker.events`, in the order they happened. A fill event arrives after the account
  already reflects it. An order that the broker refuses (post-only that would cross, margin
  short) is an ``OrderEvent`` whose order has status REJECTED or EXPIRED and a ``reason``.
* **State is the broker's view.** :meth:`open_orders`, :meth:`position`, :meth:`account`,
  :meth:`equity` describe what the broker believes; for a live broker that is its mirror of the
  exchange, refreshed by websocket updates and reconciliation.

A broker that can run a backtest is a :class:`SimulatedBroker`: it is given all bars up front and
the engine moves it forward with :meth:`SimulatedBroker.advance`, which may skip many bars at once
in compiled code when nothing can happen on them.

Live brokers (issue: live trading) implement the same methods; their ``start`` connects, loads
markets and reconciles, and the live driver calls :meth:`Broker.poll` on every loop turn so the
broker can move data between its asyncio task and the engine's queue.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .config import QuantModel
from .errors import ExchangeError
from .model import Account, Fill, Order, Position, PositionSide

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .data import BarArrays
    from .engine import Engine
    from .results import RunResult
    from .runtime import Runtime
    from .strategy import CompiledDecisions


class BrokerConfig(QuantModel):
    """Base of broker configs."""


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """An order's new state (accepted, rejected, canceled, expired, partially filled, filled)."""

    order: Order


@dataclass(frozen=True, slots=True)
class FillEvent:
    """A fill and the order's state after it."""

    fill: Fill
    order: Order


BrokerEvent = OrderEvent | FillEvent


@dataclass(frozen=True, slots=True)
class MarginState:
    """The margin picture of the run's symbol, as the broker (or exchange) computes it.

    ``liquidation_price`` is None when there is no position or it cannot be liquidated (spot).
    ``available_balance`` is what new orders can use as initial margin.
    """

    mode: str  # "isolated" | "cross" | "spot"
    leverage: float
    wallet_balance: float
    position_margin: float  # isolated: margin held by the position; cross: its initial margin
    maintenance_margin: float
    available_balance: float
    liquidation_price: float | None


@dataclass(frozen=True, slots=True)
class Step:
    """Where :meth:`SimulatedBroker.advance` stopped.

    ``index`` is the bar; ``closed`` is True when that bar is complete (its close is known and
    the engine may call ``on_bar``) and False when the broker stopped inside the bar because
    something happened (a fill, a liquidation): the next ``advance`` continues the same bar.
    ``index == len(bars)`` means the run is over.
    """

    index: int
    closed: bool
    alert: bool = False  # the bar reached the strategy's price alert band (see Broker.set_price_alert)


class Broker(ABC):
    """Where orders go and where fills come from. See the module docstring for the contract."""

    Config: ClassVar[type[BrokerConfig]] = BrokerConfig

    def __init__(self, config: BrokerConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.instrument = runtime.instrument

    def start(self) -> None:
        """Connect and load state before the first bar (live: markets, balances, reconcile)."""

    def stop(self) -> None:
        """Release resources after the run (live: close sockets; open orders stay as they are)."""

    def poll(self) -> None:
        """Live brokers: move pending I/O results into the event queue. Simulated: nothing."""

    @abstractmethod
    def submit(self, order: Order) -> None:
        """Send a new order (status PENDING, already risk-checked). The outcome arrives as events."""

    @abstractmethod
    def cancel(self, client_id: str) -> None:
        """Ask to cancel an open order; a CANCELED event follows (or a fill, if it came first)."""

    def amend(self, client_id: str, *, price: float | None = None, quantity: float | None = None) -> None:
        """Change an open limit order's price and/or quantity, keeping its client id (Binance:
        PUT /fapi/v1/order). Cancel-replace semantics: the order loses its place in the queue; an
        OrderEvent with the new values follows (EXPIRED if a post-only amend would cross)."""
        raise ExchangeError(f"{type(self).__name__} does not support amending orders")

    @abstractmethod
    def events(self) -> list[BrokerEvent]:
        """Drain and return the events that happened since the last call, oldest first."""

    @abstractmethod
    def open_orders(self) -> list[Order]:
        """Orders the broker believes are open, oldest first."""

    @abstractmethod
    def account(self) -> Account:
        """Wallet balance and positions (the broker's object; do not modify it)."""

    #: ``one_way`` (one net position per symbol) or ``hedge`` (Binance ``dualSidePosition``: a LONG
    #: and a SHORT position, orders say which with ``Order.position_side``); set from
    #: ``broker.position_mode`` by the brokers that support it
    position_mode: str = "one_way"

    def position(self, position_side: PositionSide | str = PositionSide.BOTH) -> Position:
        """The position in the run's instrument: the net one (one-way mode), or in hedge mode the
        LONG or SHORT one."""
        return self.account().position(self.instrument.symbol, position_side)

    # --- margin (perpetuals). Spot-only brokers keep these defaults, which refuse. -------------
    def set_leverage(self, leverage: float) -> None:
        """Set the symbol's leverage (Binance: POST /fapi/v1/leverage)."""
        raise ExchangeError(f"{type(self).__name__} does not support leverage")

    def set_margin_mode(self, mode: str) -> None:
        """``isolated`` or ``cross`` (Binance: POST /fapi/v1/marginType)."""
        raise ExchangeError(f"{type(self).__name__} does not support margin modes")

    def set_position_mode(self, mode: str) -> None:
        """``one_way`` or ``hedge`` (Binance: POST /fapi/v1/positionSide/dual ``dualSidePosition``)."""
        raise ExchangeError(f"{type(self).__name__} does not support position modes")

    def adjust_margin(self, amount: float) -> None:
        """Isolated mode: add (``amount`` > 0) or remove margin of the position (Binance: POST
        /fapi/v1/positionMargin). Brokers with hedge mode also take ``position_side`` (LONG/SHORT)."""
        raise ExchangeError(f"{type(self).__name__} does not support isolated margin")

    def margin(self, position_side: PositionSide | str = PositionSide.BOTH) -> MarginState:
        """Margin, maintenance and liquidation price of the run's symbol; brokers with hedge mode
        give one position's with ``position_side`` LONG or SHORT (its isolated margin, maintenance
        and liquidation price; wallet, leverage and available balance are the account's)."""
        raise ExchangeError(f"{type(self).__name__} does not report margin")

    # --- the compiled fast path (backtests; see core/strategy.py) -----------------------------
    def compiled_refusal(self, engine: Engine, offer: CompiledDecisions) -> str | None:
        """The one eligibility check of a strategy's compiled decisions on this broker: None when
        :meth:`run_compiled` may run ``offer`` in ``engine``, else the reason (the run log shows
        it). Brokers without a compiled path keep this default."""
        return f"the {type(self).__name__} broker has no compiled backtest"

    def run_compiled(self, engine: Engine, bars: BarArrays, offer: CompiledDecisions) -> RunResult | None:
        """Run the backtest of ``offer`` (accepted by :meth:`compiled_refusal`) in compiled code:
        the RunResult, or None when the loop met a case it does not implement (it logs which;
        the event path then runs)."""
        return None

    def set_price_alert(self, low: float | None, high: float | None) -> None:
        """Ask to be woken at the close of the first bar that trades at or below ``low`` or at
        or above ``high`` (one-shot; None clears a side). Simulated brokers use it to skip bars
        until the price leaves a band; live runs see every bar anyway and ignore it."""

    @abstractmethod
    def equity(self) -> float:
        """Wallet balance plus unrealised PnL at the broker's current mark price."""

    @property
    @abstractmethod
    def now_ms(self) -> int:
        """The broker's clock: the current bar's open time in a backtest, wall time live."""

    @property
    @abstractmethod
    def last_price(self) -> float:
        """The last traded or mark price the broker knows."""


class SimulatedBroker(Broker):
    """A broker that replays bars: the engine drives it with :meth:`advance`."""

    @abstractmethod
    def load(self, bars: BarArrays) -> None:
        """Take the bars of the run; called once before ``start``."""

    @abstractmethod
    def advance(self, wake: np.ndarray | None) -> Step:
        """Process bars from where the last call stopped; stop at the first event or wake bar.

        ``wake`` (from the strategy's ``wake_bars``, None = every bar) marks bars whose close the
        engine must see; a bar that triggers the price alert is returned closed with
        ``alert=True``. Bars with no possible fill, nothing due (funding, liquidation), no wake
        and no alert may be processed in bulk without returning.
        """

    @abstractmethod
    def equity_curve(self) -> np.ndarray:
        """Equity at every bar's close, for the whole run (called after the last ``advance``)."""

    @abstractmethod
    def fill_bar_indices(self) -> np.ndarray:
        """For each fill of the run, in order, the index of the bar it happened on."""

    def bar_series(self) -> dict[str, np.ndarray]:
        """Per-bar series for the results, keyed by their :class:`~btc_quant.core.results.RunResult`
        field (``liquidation_price``); none by default."""
        return {}

    def funding_payments(self) -> pd.DataFrame | None:
        """Funding payments of the run (ts, bar, rate, mark, position, amount > 0 = paid), or None."""
        return None

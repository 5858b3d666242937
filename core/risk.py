"""Pre-trade risk checks: every order passes through them before a broker sees it.

A check is a class with a ``Config`` model, built as ``cls(config)`` and registered through
``quant_register_risk_checks``. ``check(order, state)`` returns None to accept or a one-line
reason to reject; the engine then marks the order rejected with that reason, tells the strategy
through ``on_order`` and logs the rule and the numbers.

A check may also watch the account: ``observe(state)`` is called whenever the engine sees the
market move (every closed bar it handles, every fill) and returns a :class:`KillSwitch` to halt
trading. Once halted, the engine refuses every order that is not reduce-only, and if the switch
asks to flatten it cancels the open orders and closes the position at market. The switch stays
engaged until the run is restarted. (In a backtest whose strategy skips bars, the engine sees the
market at the strategy's wake bars, fills and price alerts only; live runs see every bar.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import QuantModel
from .model import Instrument, Order, Position


class RiskCheckConfig(QuantModel):
    """Base of risk-check configs."""


@dataclass(frozen=True)
class RiskState:
    """What a check may look at: the account as the broker reports it, and the market."""

    instrument: Instrument
    position: Position
    equity: float
    open_orders: tuple[Order, ...]
    last_price: float
    now_ms: int


@dataclass(frozen=True)
class KillSwitch:
    """Why trading halts, and whether to close everything as well."""

    reason: str
    flatten: bool = False


class RiskCheck:
    """Base class: override :meth:`check`."""

    Config: ClassVar[type[RiskCheckConfig]] = RiskCheckConfig
    name: str = "risk"

    def __init__(self, config: RiskCheckConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def check(self, order: Order, state: RiskState) -> str | None:
        """None to accept ``order``, or why it is refused (one line, with the numbers)."""
        return None

    def observe(self, state: RiskState) -> KillSwitch | None:
        """None while all is well, or a :class:`KillSwitch` to halt trading."""
        return None

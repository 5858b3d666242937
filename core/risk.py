"""Pre-trade risk checks: every order passes through them before a broker sees it.

A check is a class with a ``Config`` model, built as ``cls(config)`` and registered through
``quant_register_risk_checks``. ``check(order, state)`` returns None to accept or a one-line
reason to reject; the engine then marks the order rejected with that reason, tells the strategy
through ``on_order`` and logs the rule and the numbers.
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


class RiskCheck:
    """Base class: override :meth:`check`."""

    Config: ClassVar[type[RiskCheckConfig]] = RiskCheckConfig
    name: str = "risk"

    def __init__(self, config: RiskCheckConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def check(self, order: Order, state: RiskState) -> str | None:
        """None to accept ``order``, or why it is refused (one line, with the numbers)."""
        return None

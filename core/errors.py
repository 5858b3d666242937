"""The exception hierarchy of btc-quant.

Every error a user can cause or fix is a :class:`QuantError`. Its message is one line that says
what is wrong and where (file, key, row); ``hint`` says what to do. Only the CLI turns these into
exit codes (2 for user errors); library code raises them and never swallows them.

Anything that is not a ``QuantError`` is a bug in btc-quant or a plugin and keeps its traceback.
"""

from __future__ import annotations


class QuantError(Exception):
    """Base of every user-facing error. ``str(err)`` is one line; ``err.hint`` is optional advice."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


class ConfigError(QuantError):
    """A config key, value or plugin name is wrong (names the dotted key and the valid choices)."""


class PluginError(QuantError):
    """A plugin failed to load, registered a name twice, or implements an unknown hook."""


class DataError(QuantError):
    """Market data is missing, malformed or inconsistent (names the file, row or range)."""


class StoreError(QuantError):
    """The market-data store cannot be reached or refused an operation."""


class ExchangeError(QuantError):
    """An exchange refused a request or cannot do what the strategy needs."""


class OrderError(QuantError):
    """An order has invalid values (non-positive, NaN, off-tick, below minimum notional)."""


class RiskError(QuantError):
    """A pre-trade risk check refused an order or the kill switch is engaged."""


class StrategyError(QuantError):
    """A strategy was misused or reached a state it cannot continue from."""

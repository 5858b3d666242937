"""The market-data store interface the engine reads bars through.

Store plugins (``quant_register_stores``) are built as ``cls(config, runtime)``. The engine needs
only :meth:`Store.read_bars`; the data commands use the rest of the store plugin's API, which is
documented there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from .config import QuantModel
from .data import BarArrays


class StoreConfig(QuantModel):
    """Base of store configs."""


class Store(ABC):
    Config: ClassVar[type[StoreConfig]] = StoreConfig

    @abstractmethod
    def read_bars(
        self, exchange: str, symbol: str, timeframe: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> BarArrays:
        """De-duplicated bars with ``start_ms <= ts < end_ms``, sorted; empty arrays if none."""

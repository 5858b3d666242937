"""The market-data store interface the engine reads bars through.

Store plugins (``quant_register_stores``) are built as ``cls(config, runtime)``. The engine needs
only :meth:`Store.read_bars`; the data commands use the rest of the store plugin's API, which is
documented there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import pandas as pd

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

    def read_funding(self, exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None) -> pd.DataFrame:
        """Funding rates of a perpetual with ``start_ms <= ts < end_ms``: columns ``ts`` (int64 ms,
        the funding time) and ``rate`` (float64, e.g. 0.0001 = 0.01% paid by longs to shorts),
        sorted, de-duplicated; empty if none are stored. Stores without funding data keep this default."""
        return pd.DataFrame({"ts": np.empty(0, dtype=np.int64), "rate": np.empty(0, dtype=np.float64)})

"""The market-data store interface the engine reads bars through.

Store plugins (``quant_register_stores``) are built as ``cls(config, runtime)``. The engine needs
only :meth:`Store.read_bars`; the data commands use the rest of the store plugin's API, which is
documented there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import numpy as np
import pandas as pd

from .config import QuantModel
from .data import BarArrays
from .trades import QuoteArrays, TradeArrays


class StoreConfig(QuantModel):
    """Base of store configs."""


class Store(ABC):
    Config: ClassVar[type[StoreConfig]] = StoreConfig

    @contextmanager
    def session(self) -> Iterator[Store]:
        """Within the block, the reads share one connection: a run's loads (bars, mark prices,
        funding, trades, best bid/offer) open the store once instead of once per read. Stores that
        stay connected anyway keep this default (nothing to do)."""
        yield self

    @abstractmethod
    def read_bars(self, exchange: str, symbol: str, timeframe: str, start_ms: int | None = None, end_ms: int | None = None) -> BarArrays:
        """De-duplicated bars with ``start_ms <= ts < end_ms``, sorted; empty arrays if none."""

    def read_funding(self, exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None) -> pd.DataFrame:
        """Funding rates of a perpetual with ``start_ms <= ts < end_ms``: columns ``ts`` (int64 ms,
        the funding time) and ``rate`` (float64, e.g. 0.0001 = 0.01% paid by longs to shorts),
        sorted, de-duplicated; empty if none are stored. Stores without funding data keep this default."""
        from .metrics import columns_frame  # pd.DataFrame of typed columns, without its checks (asked once per run)

        return columns_frame({"ts": np.empty(0, dtype=np.int64), "rate": np.empty(0, dtype=np.float64)})

    def read_mark_bars(
        self, exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[tuple[str, BarArrays]]:
        """Mark-price klines of a perpetual with ``start_ms <= ts < end_ms``: ``[(timeframe, bars),
        ...]``, finest timeframe first; empty if none are stored. A run triggers liquidation on
        them when they cover its bars. Stores without mark prices keep this default."""
        return []

    def read_trades(self, exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None) -> TradeArrays:
        """Trade prints with ``start_ms <= ts < end_ms`` (:class:`~btc_quant.core.trades.TradeArrays`,
        sorted, de-duplicated); empty if none. The trade replay (``broker.fill_model=queue``) reads
        them. Stores without trades keep this default."""
        return TradeArrays.empty()

    def read_quotes(self, exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None) -> QuoteArrays:
        """Best bid/offer updates with ``start_ms <= ts < end_ms``; empty if none (the default)."""
        return QuoteArrays.empty()

    def trade_bars(
        self, exchange: str, symbol: str, timeframe: str = "1m", start_ms: int | None = None, end_ms: int | None = None
    ) -> BarArrays:
        """Klines built from the stored trades (one per bucket with a print); empty if none (the
        default). A run uses them when no klines are stored for its period."""
        return BarArrays(*(np.empty(0, dtype=np.int64 if i == 0 else np.float64) for i in range(6)))

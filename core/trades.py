"""Trade prints and best bid/offer updates as columns of numpy arrays.

A tape is what the trade replay (``broker.fill_model=queue``) and ``quant calibrate`` read, and
what ``quant data import|fetch ... kind=trades`` writes. Like :class:`~btc_quant.core.data.BarArrays`
it is one array per field, so the compiled replay walks it without Python objects.

* :class:`TradeArrays`: ``ts`` (int64 ms UTC, the exchange's trade time), ``trade_id`` (int64, the
  exchange's id; for a Binance aggTrade its first trade id), ``last_id`` (int64, the last trade id
  the row covers: equal to ``trade_id`` for a single trade, the aggTrade's last id otherwise),
  ``price`` and ``qty`` (float64, qty in base asset), ``side`` (int8: +1 the taker bought, -1 the
  taker sold). Sorted by (``ts``, ``trade_id``).
* :class:`QuoteArrays`: best bid/offer updates (Binance ``bookTicker``): ``ts``, ``update_id``
  (0 where the source has none), ``bid_px``, ``bid_qty``, ``ask_px``, ``ask_qty``. Sorted by
  (``ts``, ``update_id``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import DataError

TRADE_COLUMNS = ("ts", "trade_id", "last_id", "price", "qty", "side")
QUOTE_COLUMNS = ("ts", "update_id", "bid_px", "bid_qty", "ask_px", "ask_qty")
_TRADE_DTYPES = {"ts": np.int64, "trade_id": np.int64, "last_id": np.int64, "price": np.float64, "qty": np.float64, "side": np.int8}
_QUOTE_DTYPES = {
    "ts": np.int64,
    "update_id": np.int64,
    "bid_px": np.float64,
    "bid_qty": np.float64,
    "ask_px": np.float64,
    "ask_qty": np.float64,
}
#: ``side`` values: the taker's side.
BUY, SELL = 1, -1


def side_codes(values) -> np.ndarray:
    """``"buy"``/``"sell"`` (any case) or +1/-1 -> int8 +1/-1; anything else -> 0 (a bad row)."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iuf":
        out = np.where(arr > 0, BUY, np.where(arr < 0, SELL, 0))
        return out.astype(np.int8)
    text = pd.Series(arr, dtype="string").str.strip().str.lower().fillna("")
    return np.where(text == "buy", BUY, np.where(text == "sell", SELL, 0)).astype(np.int8)


@dataclass(frozen=True)
class TradeArrays:
    """Trade prints of one market (see the module doc for the columns)."""

    ts: np.ndarray
    trade_id: np.ndarray
    last_id: np.ndarray
    price: np.ndarray
    qty: np.ndarray
    side: np.ndarray

    def __post_init__(self) -> None:
        for name in TRADE_COLUMNS:
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=_TRADE_DTYPES[name]))
        if len({len(getattr(self, c)) for c in TRADE_COLUMNS}) != 1:
            raise DataError("trades: columns of different lengths")

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, index) -> TradeArrays:
        if isinstance(index, int):
            raise TypeError("TradeArrays supports slices and masks")
        return TradeArrays(*(getattr(self, c)[index] for c in TRADE_COLUMNS))

    @classmethod
    def empty(cls) -> TradeArrays:
        return cls(*(np.empty(0, dtype=_TRADE_DTYPES[c]) for c in TRADE_COLUMNS))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> TradeArrays:
        """A frame with ``ts, trade_id, price, qty, side`` (``last_id`` optional), as the tapes in
        ``shared/data/trades`` have; ``side`` as "buy"/"sell" or +1/-1. Not validated: use
        :func:`btc_quant.core.trade_files.read_trade_file` for files from users."""
        last = frame["last_id"] if "last_id" in frame.columns else frame["trade_id"]
        return cls(
            frame["ts"].to_numpy(),
            frame["trade_id"].to_numpy(),
            np.asarray(last),
            frame["price"].to_numpy(),
            frame["qty"].to_numpy(),
            side_codes(frame["side"].to_numpy()),
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({c: getattr(self, c) for c in TRADE_COLUMNS})


@dataclass(frozen=True)
class QuoteArrays:
    """Best bid/offer updates of one market (see the module doc)."""

    ts: np.ndarray
    update_id: np.ndarray
    bid_px: np.ndarray
    bid_qty: np.ndarray
    ask_px: np.ndarray
    ask_qty: np.ndarray

    def __post_init__(self) -> None:
        for name in QUOTE_COLUMNS:
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=_QUOTE_DTYPES[name]))
        if len({len(getattr(self, c)) for c in QUOTE_COLUMNS}) != 1:
            raise DataError("quotes: columns of different lengths")

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, index) -> QuoteArrays:
        if isinstance(index, int):
            raise TypeError("QuoteArrays supports slices and masks")
        return QuoteArrays(*(getattr(self, c)[index] for c in QUOTE_COLUMNS))

    @classmethod
    def empty(cls) -> QuoteArrays:
        return cls(*(np.empty(0, dtype=_QUOTE_DTYPES[c]) for c in QUOTE_COLUMNS))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> QuoteArrays:
        uid = frame["update_id"].to_numpy() if "update_id" in frame.columns else np.zeros(len(frame), dtype=np.int64)
        return cls(frame["ts"].to_numpy(), uid, *(frame[c].to_numpy() for c in QUOTE_COLUMNS[2:]))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({c: getattr(self, c) for c in QUOTE_COLUMNS})

"""Bars as columns of numpy arrays, reading them from files, and the bundled sample.

The engine works on :class:`BarArrays` (one float64/int64 array per field) rather than on lists
of :class:`~btc_quant.core.model.Bar` objects: matching orders against bars is done over arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .model import Bar

COLUMNS = ("ts", "open", "high", "low", "close", "volume")

_TIMEFRAME_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def timeframe_ms(timeframe: str) -> int:
    """``"1m"`` -> 60000, ``"4h"`` -> 14400000 (ccxt notation)."""
    try:
        return int(timeframe[:-1]) * _TIMEFRAME_MS[timeframe[-1]]
    except (KeyError, ValueError):
        raise DataError(f"unknown timeframe {timeframe!r}; use ccxt notation such as 1m, 5m, 1h, 1d") from None


def ms_to_iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class BarArrays:
    """OHLCV columns; ``ts`` is the bar's open time in ms UTC, strictly increasing."""

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, index: slice) -> "BarArrays":
        if not isinstance(index, slice):
            raise TypeError("BarArrays supports slices; use .bar(i) for one bar")
        return BarArrays(*(getattr(self, c)[index] for c in COLUMNS))

    def bar(self, i: int) -> Bar:
        return Bar(int(self.ts[i]), float(self.open[i]), float(self.high[i]), float(self.low[i]), float(self.close[i]), float(self.volume[i]))

    @property
    def start_ms(self) -> int:
        return int(self.ts[0])

    @property
    def end_ms(self) -> int:
        return int(self.ts[-1])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({c: getattr(self, c) for c in COLUMNS})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, source: str = "data") -> "BarArrays":
        """Columns ``ts`` (or ``timestamp``), open, high, low, close, volume; validated."""
        if "ts" not in frame.columns and "timestamp" in frame.columns:
            frame = frame.rename(columns={"timestamp": "ts"})
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{source}: missing column(s) {', '.join(missing)}; need {', '.join(COLUMNS)}")
        ts = frame["ts"]
        if pd.api.types.is_datetime64_any_dtype(ts):
            ts = pd.to_datetime(ts, utc=True).dt.as_unit("ms").astype("int64").to_numpy()
        arrays = cls(
            np.ascontiguousarray(np.asarray(ts, dtype=np.int64)),
            *(np.ascontiguousarray(np.asarray(frame[c], dtype=np.float64)) for c in COLUMNS[1:]),
        )
        arrays.validate(source)
        return arrays

    def validate(self, source: str = "data") -> None:
        """Raise :class:`DataError` naming the first bad row (0-based) and how many are bad."""
        checks = [
            ("timestamps not strictly increasing", np.r_[False, np.diff(self.ts) <= 0]),
            ("non-finite price", ~np.isfinite(self.open + self.high + self.low + self.close)),
            ("non-positive price", (np.minimum(np.minimum(self.open, self.close), self.low) <= 0)),
            ("high below low/open/close", self.high < np.maximum(np.maximum(self.open, self.close), self.low)),
            ("low above open/close", self.low > np.minimum(self.open, self.close)),
            ("negative volume", self.volume < 0),
        ]
        for what, bad in checks:
            if bad.any():
                rows = np.flatnonzero(bad)
                raise DataError(f"{source}: {what} at row {rows[0]} ({len(rows)} row(s) in all)")

    def stretches(self, max_gap_ms: int) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` index ranges with no jump in ``ts`` larger than ``max_gap_ms``."""
        if len(self) == 0:
            return []
        breaks = np.flatnonzero(np.diff(self.ts) > max_gap_ms) + 1
        edges = [0, *breaks.tolist(), len(self)]
        return list(zip(edges[:-1], edges[1:]))

    def between(self, start_ms: int | None, end_ms: int | None) -> "BarArrays":
        lo = 0 if start_ms is None else int(np.searchsorted(self.ts, start_ms, "left"))
        hi = len(self) if end_ms is None else int(np.searchsorted(self.ts, end_ms, "left"))
        return self[lo:hi]


def read_bars_file(path: Path | str) -> BarArrays:
    """Read a parquet or CSV file of bars (columns as in :data:`COLUMNS`)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix in (".csv", ".txt"):
            frame = pd.read_csv(path)
        else:
            raise DataError(f"data file {path}: unsupported format {path.suffix!r}; use .parquet or .csv")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"data file {path}: cannot read it ({type(exc).__name__}: {exc})") from exc
    return BarArrays.from_frame(frame, source=str(path))


@dataclass(frozen=True)
class Sample:
    """A real-data file shipped with the package so the main command works offline."""

    file: str
    exchange: str
    symbol: str
    timeframe: str
    provenance: str

    @property
    def path(self) -> Path:
        return Path(str(resources.files("btc_quant.sample").joinpath(self.file)))


SAMPLE = Sample(
    file="btc_perp_1m_2022-01.parquet",
    exchange="binanceusdm",
    symbol="BTC/USDT:USDT",
    timeframe="1m",
    provenance="BTCUSDT perpetual 1m bars, 2021-12-31 23:01 .. 2022-02-01 05:31 UTC, from "
    "nautechsystems/nautilus_trader tests/test_data (see examples/data/README.md)",
)

"""Bars as columns of numpy arrays, reading them from files, and the bundled sample.

The engine works on :class:`BarArrays` (one float64/int64 array per field) rather than on lists
of :class:`~btc_quant.core.model.Bar` objects: matching orders against bars is done over arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
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


def spacing_ms(ts: np.ndarray) -> int | None:
    """The bars' own spacing: the most common step between consecutive timestamps (gaps do not
    change it), or None for fewer than two bars."""
    if len(ts) < 2:
        return None
    steps, counts = np.unique(np.diff(np.asarray(ts, dtype=np.int64)), return_counts=True)
    return int(steps[np.argmax(counts)])


def check_timeframe(ts: np.ndarray, timeframe: str, source: str) -> None:
    """Raise :class:`DataError` naming both when bars spaced one way are given as another timeframe
    (a file of 1m bars run as ``timeframe=1h`` would otherwise run minutes as hours)."""
    step = spacing_ms(ts)
    if step is not None and step != timeframe_ms(timeframe):
        raise DataError(
            f"{source}: the bars are {_step_name(step)} apart, but timeframe={timeframe}",
            hint=f"set timeframe={_step_name(step)} (or use a file of {timeframe} bars)",
        )


def _step_name(step_ms: int) -> str:
    for unit, ms in sorted(_TIMEFRAME_MS.items(), key=lambda kv: -kv[1]):
        if step_ms % ms == 0:
            return f"{step_ms // ms}{unit}"
    return f"{step_ms} ms"


def ms_to_iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class BarArrays:
    """OHLCV columns; ``ts`` is the bar's open time in ms UTC, strictly increasing.

    ``mark_low`` / ``mark_high`` (optional): the low and high of the mark-price kline that covers
    each bar (:meth:`with_mark`), aligned to the bars; None when the run has no mark prices. The
    ``sim`` broker triggers liquidation on them (its ``sim/venue.py``, ``liquidation_bounds``).
    """

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    mark_low: np.ndarray | None = None
    mark_high: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, index: slice) -> BarArrays:
        if not isinstance(index, slice):
            raise TypeError("BarArrays supports slices; use .bar(i) for one bar")
        mark = (None, None) if self.mark_low is None else (self.mark_low[index], self.mark_high[index])
        return BarArrays(*(getattr(self, c)[index] for c in COLUMNS), *mark)

    def with_mark(self, mark: BarArrays, bar_ms: int, mark_ms: int) -> BarArrays:
        """These bars with ``mark_low`` / ``mark_high`` from mark-price klines of ``mark_ms``
        aligned to bars of ``bar_ms`` (see :func:`align_mark`); raises :class:`DataError` when
        the mark klines do not cover every bar."""
        low, high = align_mark(self.ts, bar_ms, mark, mark_ms)
        return BarArrays(*(getattr(self, c) for c in COLUMNS), low, high)

    def bar(self, i: int) -> Bar:
        return Bar(
            int(self.ts[i]), float(self.open[i]), float(self.high[i]), float(self.low[i]), float(self.close[i]), float(self.volume[i])
        )

    @property
    def start_ms(self) -> int:
        return int(self.ts[0])

    @property
    def end_ms(self) -> int:
        return int(self.ts[-1])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({c: getattr(self, c) for c in COLUMNS})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, source: str = "data") -> BarArrays:
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

    def between(self, start_ms: int | None, end_ms: int | None) -> BarArrays:
        lo = 0 if start_ms is None else int(np.searchsorted(self.ts, start_ms, "left"))
        hi = len(self) if end_ms is None else int(np.searchsorted(self.ts, end_ms, "left"))
        return self[lo:hi]


def align_mark(ts: np.ndarray, bar_ms: int, mark: BarArrays, mark_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """The mark price's low and high over each bar opening at ``ts`` (bars of ``bar_ms``).

    * Mark klines as long as the bars or longer (a whole multiple, e.g. 1h mark under 1m bars):
      each bar gets the low/high of the one mark kline that contains it. Without an intrabar mark
      path that is all that is known: the mark reached that low somewhere in its kline.
    * Shorter mark klines (a whole divisor, e.g. 1m mark under 1h bars): the min/max over the
      mark klines inside the bar, all of which must exist.

    Raises :class:`DataError` naming the first bar the mark klines do not cover (the caller then
    triggers liquidation on the last price and says so)."""
    if len(mark) == 0:
        raise DataError("no mark-price klines")
    if mark_ms >= bar_ms:
        if mark_ms % bar_ms:
            raise DataError(f"mark klines of {mark_ms // 60_000} min do not split into bars of {bar_ms // 60_000} min")
        h = np.searchsorted(mark.ts, ts, side="right") - 1
        ok = (h >= 0) & (ts + bar_ms <= mark.ts[np.maximum(h, 0)] + mark_ms)
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise DataError(f"no mark kline covers the bar at {ms_to_iso(int(ts[bad]))} ({int((~ok).sum()):,} bar(s) uncovered)")
        return mark.low[h].copy(), mark.high[h].copy()
    if bar_ms % mark_ms:
        raise DataError(f"bars of {bar_ms // 60_000} min do not split into mark klines of {mark_ms // 60_000} min")
    first = np.searchsorted(mark.ts, ts, side="left")
    stop = np.searchsorted(mark.ts, ts + bar_ms, side="left")
    ok = (stop - first) == bar_ms // mark_ms
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise DataError(f"no mark kline covers the bar at {ms_to_iso(int(ts[bad]))} ({int((~ok).sum()):,} bar(s) uncovered)")
    inside = first[:, None] + np.arange(bar_ms // mark_ms)[None, :]  # exactly these klines: ts are increasing
    return mark.low[inside].min(axis=1), mark.high[inside].max(axis=1)


def step_ms(bars: BarArrays) -> int:
    """The bars' timeframe in ms, taken as the smallest step between two bars (a file carries none)."""
    if len(bars) < 2:
        raise DataError("cannot tell the timeframe of fewer than two bars")
    return int(np.diff(bars.ts).min())


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

SAMPLE_MARK = Sample(
    file="binance_btcusdt_perp_mark_1h_2022-01.parquet",
    exchange="binanceusdm",
    symbol="BTC/USDT:USDT",
    timeframe="1h",
    provenance="Binance USD-M BTCUSDT mark-price klines 1h, 2021-12-31 23:00 .. 2022-02-01 05:00 UTC "
    "(the bundled sample's span; see examples/data/README.md)",
)

SAMPLE_FUNDING = Sample(
    file="binance_btcusdt_perp_funding_8h.parquet",
    exchange="binanceusdm",
    symbol="BTC/USDT:USDT",
    timeframe="8h",
    provenance="Binance USD-M BTCUSDT funding rates, every funding time 2019-09-10 08:00 .. 2026-05-17 00:00 UTC "
    "(see examples/data/README.md)",
)


@lru_cache(maxsize=1)
def _bundled_funding_columns() -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_parquet(SAMPLE_FUNDING.path, columns=["ts", "rate"])
    ts, rate = frame["ts"].to_numpy(np.int64), frame["rate"].to_numpy(np.float64)
    ts.flags.writeable = rate.flags.writeable = False  # shared by every run of the process
    return ts, rate


def bundled_funding_arrays(
    exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`bundled_funding` as read-only arrays ``(ts, rate)``: what a run reads, without a
    frame built per run (a sweep over many stretches reads it once per stretch)."""
    if (exchange, symbol) != (SAMPLE_FUNDING.exchange, SAMPLE_FUNDING.symbol):
        return None
    ts, rate = _bundled_funding_columns()
    lo = 0 if start_ms is None else int(np.searchsorted(ts, start_ms, "left"))
    hi = len(ts) if end_ms is None else int(np.searchsorted(ts, end_ms, "left"))
    return ts[lo:hi], rate[lo:hi]


def bundled_funding(exchange: str, symbol: str, start_ms: int | None = None, end_ms: int | None = None) -> pd.DataFrame | None:
    """The bundled funding history (columns ``ts``, ``rate``, as ``Store.read_funding``) with
    ``start_ms <= ts < end_ms``, for the market it is of (Binance USDⓈ-M BTC/USDT:USDT); None for
    any other market."""
    arrays = bundled_funding_arrays(exchange, symbol, start_ms, end_ms)
    if arrays is None:
        return None
    return pd.DataFrame({"ts": arrays[0].copy(), "rate": arrays[1].copy()})

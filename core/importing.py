"""Reading bar files for ``quant data import``: parquet, CSV and Binance public-archive zips.

Every row is checked; a bad row is never silently dropped or "fixed". :func:`read_import_file`
returns the good rows and a :class:`BadRow` for each rejected one, naming its line (CSV, 1-based,
counting the header) or row (parquet, 1-based) and what is wrong, so the caller can refuse the
whole file or, with ``--skip-bad``, keep the good rows and save the rejected ones.

Binance archive zips (https://data.binance.vision, ``BTCUSDT-1m-2024-01.zip``) hold one CSV:
open_time, open, high, low, close, volume, close_time, quote_volume, trades, taker_base,
taker_quote, ignore; without a header in older files, with one in newer futures files. Spot files
from 2025 on give times in microseconds; times are normalised to milliseconds by magnitude.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import COLUMNS, BarArrays, check_timeframe, timeframe_ms
from .errors import DataError

TIME_COLUMNS = ("ts", "timestamp", "open_time", "time", "date", "datetime")
ARCHIVE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "trades",
    "taker_buy_base",
    "taker_buy_quote",
    "ignore",
)


@dataclass(frozen=True)
class BadRow:
    where: str  # "line 17" / "row 17"
    problem: str
    raw: dict


class RowChecks:
    """The row-by-row checks of an imported file: each row keeps the first problem found for it,
    and a row already found bad is not flagged again (used by bar and trade/quote imports)."""

    def __init__(self, rows: int) -> None:
        self.problems: dict[int, str] = {}
        self.bad = np.zeros(rows, dtype=bool)  # updated in place: callers may hold it

    def flag(self, mask: np.ndarray, problem: str) -> None:
        for i in np.flatnonzero(mask & ~self.bad):
            self.problems[int(i)] = problem
        self.bad[mask] = True

    def bad_rows(self, frame: pd.DataFrame, unit: str, first_line: int) -> list[BadRow]:
        """One :class:`BadRow` per flagged row, in file order, named as the file numbers it."""
        return [
            BadRow(f"{unit} {i + first_line}", self.problems[i], {k: _plain(v) for k, v in frame.iloc[i].items()})
            for i in sorted(self.problems)
        ]


def missing_columns(path: Path, frame: pd.DataFrame, missing: list[str], hint: str) -> None:
    """Raise the one-line error for a file that lacks columns, naming what it has."""
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns)) or 'none'}", hint=hint)


@dataclass
class ImportRead:
    path: Path
    bars: BarArrays
    bad: list[BadRow]
    rows: int  # rows in the file


def _ms_from_numbers(values: np.ndarray) -> np.ndarray:
    """Epoch numbers in s, ms, us or ns (decided per value by magnitude) -> ms."""
    out = values.astype("float64").copy()
    absval = np.abs(out)
    out = np.where(absval < 1e11, out * 1000, out)  # seconds until year 5138
    out = np.where((absval >= 1e14) & (absval < 1e17), out / 1000, out)  # microseconds
    out = np.where(absval >= 1e17, out / 1e6, out)  # nanoseconds
    return out


def _frame_of(path: Path) -> tuple[pd.DataFrame, int, str]:
    """The raw frame, the line number of its first data row, and 'line'/'row'."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path), 1, "row"
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path, dtype=str, keep_default_na=False), 2, "line"
        if suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.lower().endswith(".csv")]
                if len(names) != 1:
                    raise DataError(f"{path}: expected one CSV inside the zip (a Binance archive file), found {len(names)}")
                text = archive.read(names[0]).decode("utf-8", errors="replace")
            first = text.split("\n", 1)[0]
            has_header = not first.split(",")[0].strip().lstrip("-").isdigit()
            frame = pd.read_csv(io.StringIO(text), header=0 if has_header else None, dtype=str, keep_default_na=False)
            if not has_header:
                frame.columns = list(ARCHIVE_COLUMNS[: frame.shape[1]]) + [
                    f"extra{i}" for i in range(frame.shape[1] - len(ARCHIVE_COLUMNS))
                ]
            return frame, 2 if has_header else 1, "line"
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from exc
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .parquet, .csv or a Binance archive .zip")


def read_import_file(path: Path | str, timeframe: str = "1m") -> ImportRead:
    """Parse and check every row of a bar file (see module doc)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    step = timeframe_ms(timeframe)
    frame, first_line, unit = _frame_of(path)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    time_col = next((c for c in TIME_COLUMNS if c in frame.columns), None)
    missing = ([] if time_col else ["ts"]) + [c for c in COLUMNS[1:] if c not in frame.columns]
    missing_columns(path, frame, missing, "need ts (or timestamp/open_time/date), open, high, low, close, volume")
    n = len(frame)
    checks = RowChecks(n)
    flag, bad_mask = checks.flag, checks.bad

    # Timestamps: numbers (s/ms/us/ns) or date strings.
    raw_ts = frame[time_col]
    if pd.api.types.is_datetime64_any_dtype(raw_ts):
        ts = pd.to_datetime(raw_ts, utc=True).dt.as_unit("ms").astype("int64").to_numpy().astype("float64")
    else:
        numeric = pd.to_numeric(raw_ts, errors="coerce")
        if numeric.notna().sum() >= max(1, n // 2):
            ts = _ms_from_numbers(numeric.to_numpy(dtype="float64", na_value=np.nan))
        else:
            parsed = pd.to_datetime(raw_ts, utc=True, errors="coerce", format="mixed")
            ts = np.array([np.nan if pd.isna(p) else p.value // 1_000_000 for p in parsed], dtype="float64")
    flag(~np.isfinite(ts), f"{time_col} is not a time")
    # A file of 1m bars imported as 1h (or 1h bars as 1m) is a wrong setting, not 59 bad rows in 60.
    check_timeframe(ts[np.isfinite(ts)].astype(np.int64), timeframe, str(path))

    values = {}
    for column in COLUMNS[1:]:
        col = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        flag(~np.isfinite(col), f"{column} is not a number")
        values[column] = col
    o, h, low, c, v = (values[k] for k in COLUMNS[1:])
    with np.errstate(invalid="ignore"):
        flag(np.minimum(np.minimum(o, c), np.minimum(h, low)) <= 0, "non-positive price")
        flag(h < low, "high below low")
        flag(h < np.maximum(o, c), "high below open/close")
        flag(low > np.minimum(o, c), "low above open/close")
        flag(v < 0, "negative volume")
        flag(np.isfinite(ts) & (np.mod(ts, step) != 0), f"time not on a {timeframe} boundary")
    # Order: each good row must come after every earlier good row.
    good_idx = np.flatnonzero(~bad_mask)
    if len(good_idx):
        tg = ts[good_idx]
        before = np.r_[-np.inf, np.maximum.accumulate(tg)[:-1]]
        dup = np.zeros(n, dtype=bool)
        dup[good_idx[tg == before]] = True
        flag(dup, "duplicate timestamp")
        unsorted = np.zeros(n, dtype=bool)
        unsorted[good_idx[tg < before]] = True
        flag(unsorted, "timestamp before an earlier row's (unsorted)")
    bad = checks.bad_rows(frame, unit, first_line)
    good = ~bad_mask
    bars = BarArrays(
        np.ascontiguousarray(ts[good].astype(np.int64)),
        *(np.ascontiguousarray(values[k][good]) for k in COLUMNS[1:]),
    )
    return ImportRead(path, bars, bad, n)


def _plain(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    return value if isinstance(value, (int, float, str)) or value is None else str(value)


# -- overwriting stored bars ------------------------------------------------------------------


@dataclass(frozen=True)
class Changes:
    """How the bars of a file differ from the ones already stored at the same times."""

    overlapping: int  # bars of the file whose time is already stored
    differing: int  # of those, bars with any of open/high/low/close/volume different
    max_price_diff: float  # largest |file - stored| over open/high/low/close
    max_price_diff_pct: float  # the same, relative to the stored price, in percent
    volume_differs: int
    first_ms: int | None  # time of the first differing bar

    def describe(self) -> str:
        from .data import ms_to_iso

        return (
            f"{self.differing:,} of the {self.overlapping:,} bars already stored at the file's times differ "
            f"(largest price difference {self.max_price_diff:,.8g} = {self.max_price_diff_pct:.4g}%, "
            f"volume differs on {self.volume_differs:,}; first at {ms_to_iso(self.first_ms)} UTC)"
        )


def changes_against(stored: BarArrays, new: BarArrays) -> Changes:
    """Compare ``new`` with ``stored`` on the timestamps both have (exactly: a re-import of the same
    file, or a re-fetch of the same bars, differs nowhere)."""
    _, i_new, i_old = np.intersect1d(new.ts, stored.ts, assume_unique=True, return_indices=True)
    if len(i_new) == 0:
        return Changes(0, 0, 0.0, 0.0, 0, None)
    price_diff = np.zeros(len(i_new))
    price_pct = np.zeros(len(i_new))
    for column in ("open", "high", "low", "close"):
        a, b = getattr(new, column)[i_new], getattr(stored, column)[i_old]
        d = np.abs(a - b)
        price_diff = np.maximum(price_diff, d)
        price_pct = np.maximum(price_pct, d / np.abs(b) * 100)
    volume_differs = new.volume[i_new] != stored.volume[i_old]
    differs = (price_diff > 0) | volume_differs
    first = int(new.ts[i_new][differs][0]) if differs.any() else None
    return Changes(len(i_new), int(differs.sum()), float(price_diff.max()), float(price_pct.max()), int(volume_differs.sum()), first)


# -- interrupted imports ----------------------------------------------------------------------


class ImportJournal:
    """An import in progress, as a small JSON file under ``<data dir>/imports/``.

    Written before the first chunk goes to the store and removed after the last one, so an import
    that was killed leaves it behind: ``quant data ls`` and ``quant data gaps`` then show that series
    as incomplete, and running the same import again resumes after the chunks already written
    (bars are keyed by time, so writing one twice never duplicates it). The file names the store by
    :meth:`where` (never with a password), so an import into another store does not count.
    """

    def __init__(self, folder: Path, store_where: str, exchange: str, symbol: str, timeframe: str, source: Path):
        import hashlib

        self.folder = folder
        self.entry = {
            "store": store_where,
            "exchange": exchange,
            "symbol": symbol,
            "timeframe": timeframe,
            "file": str(source.resolve()),
            "size": source.stat().st_size,
            "mtime_ns": source.stat().st_mtime_ns,
        }
        key = "|".join(str(self.entry[k]) for k in ("store", "exchange", "symbol", "timeframe", "file"))
        self.path = folder / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"

    def resume_from(self) -> int:
        """Rows already written by an earlier, interrupted import of this same (unchanged) file."""
        previous = _read_entry(self.path)
        if previous is None or any(previous.get(k) != v for k, v in self.entry.items()):
            return 0
        return int(previous.get("written", 0))

    def update(self, written: int, rows: int, first_ms: int, last_ms: int) -> None:
        import json
        import os

        self.folder.mkdir(parents=True, exist_ok=True)
        entry = dict(self.entry, written=written, rows=rows, first_ms=first_ms, last_ms=last_ms)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, self.path)  # atomic: a kill leaves the old entry or the new one

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def _read_entry(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def unfinished_imports(folder: Path, store_where: str) -> list[dict]:
    """Imports into this store that were started and never finished (see :class:`ImportJournal`)."""
    if not folder.is_dir():
        return []
    entries = (_read_entry(p) for p in sorted(folder.glob("*.json")))
    return [e for e in entries if e is not None and e.get("store") == store_where]

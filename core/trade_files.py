"""Reading trade and best bid/offer files for ``quant data import ... kind=trades|quotes``.

Formats (what https://data.binance.vision publishes, and the parquet tapes in ``shared/data/trades``):

* Binance ``trades`` CSV: ``id, price, qty, quote_qty, time, is_buyer_maker[, is_best_match]``
  (spot files have no header and the 7th column; USD-M files have a header in newer months).
* Binance ``aggTrades`` CSV: ``agg_trade_id, price, quantity, first_trade_id, last_trade_id,
  transact_time, is_buyer_maker[, is_best_match]``. Stored with ``trade_id`` = first trade id and
  ``last_id`` = last trade id, so trades and aggTrades share Binance's trade id space.
* Binance ``bookTicker`` CSV (USD-M): ``update_id, best_bid_price, best_bid_qty, best_ask_price,
  best_ask_qty, transaction_time, event_time``.
* Any of those zipped (one CSV inside), or parquet/CSV with named columns: trades need ``ts`` (or
  ``time``/``timestamp``), ``price``, ``qty`` (or ``quantity``), ``side`` ("buy"/"sell", the taker)
  or ``is_buyer_maker``, and ``trade_id`` (or ``id``); quotes need ``ts``, ``bid_px``, ``bid_qty``,
  ``ask_px``, ``ask_qty`` (``update_id`` optional).

``is_buyer_maker`` true means the seller was the taker (Binance: "m: Was the buyer the maker?"),
so ``side`` = sell. Times in s/ms/us/ns are normalised to ms by magnitude (Binance spot archives
from 2025 on are in microseconds). Every row is checked as bar imports are
(:mod:`btc_quant.core.importing`): a bad row is reported by line/row and never silently dropped.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .importing import BadRow, RowChecks, _ms_from_numbers, missing_columns
from .trades import QuoteArrays, TradeArrays, side_codes

KINDS = ("trades", "quotes")
#: Headerless Binance archive layouts, by (kind, number of columns).
_HEADERLESS = {
    "trades": {
        6: ("trade_id", "price", "qty", "quote_qty", "ts", "is_buyer_maker"),
        7: ("trade_id", "price", "qty", "quote_qty", "ts", "is_buyer_maker", "is_best_match"),
    },
    "aggtrades": {
        7: ("agg_id", "price", "qty", "trade_id", "last_id", "ts", "is_buyer_maker"),
        8: ("agg_id", "price", "qty", "trade_id", "last_id", "ts", "is_buyer_maker", "is_best_match"),
    },
    "quotes": {7: ("update_id", "bid_px", "bid_qty", "ask_px", "ask_qty", "ts", "event_ts")},
}
#: Header names -> ours.
_ALIASES = {
    "id": "trade_id",
    "first_trade_id": "trade_id",
    "last_trade_id": "last_id",
    "quantity": "qty",
    "time": "ts",
    "timestamp": "ts",
    "transact_time": "ts",
    "transaction_time": "ts",
    "agg_trade_id": "agg_id",
    "best_bid_price": "bid_px",
    "best_bid_qty": "bid_qty",
    "best_ask_price": "ask_px",
    "best_ask_qty": "ask_qty",
    "event_time": "event_ts",
}


@dataclass
class TradeImportRead:
    path: Path
    kind: str  # "trades" or "quotes"
    data: TradeArrays | QuoteArrays
    bad: list[BadRow]
    rows: int


def detect_kind(path: Path) -> str | None:
    """``trades``/``quotes`` from a Binance archive name (``BTCUSDT-aggTrades-2024-01.zip``,
    ``BTCUSDT-bookTicker-...``) or our tape names (``..._trades.parquet``, ``..._bookticker``)."""
    name = path.name.lower()
    if "bookticker" in name or "quotes" in name:
        return "quotes"
    if "trades" in name:
        return "trades"
    return None


def _read_text(path: Path) -> str:
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.lower().endswith(".csv")]
            if len(names) != 1:
                raise DataError(f"{path}: expected one CSV inside the zip (a Binance archive file), found {len(names)}")
            return archive.read(names[0]).decode("utf-8", errors="replace")
    return path.read_text(errors="replace")


def _frame_of(path: Path, kind: str) -> tuple[pd.DataFrame, int, str]:
    """The frame with our column names, the number of its first data row, and 'line'/'row'."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
            frame.columns = [_ALIASES.get(str(c).strip().lower(), str(c).strip().lower()) for c in frame.columns]
            return frame, 1, "row"
        if suffix not in (".csv", ".txt", ".zip"):
            raise DataError(f"{path}: unsupported file type {suffix!r}; use .parquet, .csv or a Binance archive .zip")
        text = _read_text(path)
        first = text.split("\n", 1)[0]
        has_header = not first.split(",")[0].strip().lstrip("-").isdigit()
        # Types inferred by the C parser (fast); a column with a bad value comes back as strings and
        # is checked row by row below like any other.
        frame = pd.read_csv(io.StringIO(text), header=0 if has_header else None, keep_default_na=False, low_memory=False)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from exc
    if has_header:
        frame.columns = [_ALIASES.get(str(c).strip().lower(), str(c).strip().lower()) for c in frame.columns]
        return frame, 2, "line"
    layout = kind
    if kind == "trades":
        # aggTrades or trades? The name says (Binance names its files ...-aggTrades-...); else column 5
        # is a time in aggTrades and is_buyer_maker (true/false) in spot trades.
        if "aggtrades" in path.name.lower():
            layout = "aggtrades"
        elif frame.shape[1] == 8 or (frame.shape[1] == 7 and str(frame.iloc[0, 5]).strip().lower() not in ("true", "false")):
            layout = "aggtrades"
    names = _HEADERLESS[layout].get(frame.shape[1])
    if names is None:
        raise DataError(
            f"{path}: a headerless CSV with {frame.shape[1]} columns is not a Binance {layout} file",
            hint="give the CSV a header (ts, price, qty, side, trade_id) or use the archive file as published",
        )
    frame.columns = list(names)
    return frame, 1, "line"


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def read_trade_file(path: Path | str, kind: str | None = None) -> TradeImportRead:
    """Parse and check every row of a trade or best bid/offer file (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    kind = kind or detect_kind(path)
    if kind not in KINDS:
        raise DataError(f"{path}: cannot tell whether it holds trades or quotes", hint="add kind=trades or kind=quotes")
    frame, first_line, unit = _frame_of(path, kind)
    need = ("ts", "price", "qty", "trade_id") if kind == "trades" else ("ts", "bid_px", "bid_qty", "ask_px", "ask_qty")
    missing = [c for c in need if c not in frame.columns]
    if kind == "trades" and "side" not in frame.columns and "is_buyer_maker" not in frame.columns:
        missing.append("side (or is_buyer_maker)")
    missing_columns(path, frame, missing, "trades need ts, price, qty, side, trade_id; quotes need ts, bid_px, bid_qty, ask_px, ask_qty")
    n = len(frame)
    checks = RowChecks(n)
    flag, bad_mask = checks.flag, checks.bad

    raw_ts = frame["ts"]
    if pd.api.types.is_datetime64_any_dtype(raw_ts):
        ts = pd.to_datetime(raw_ts, utc=True).dt.as_unit("ms").astype("int64").to_numpy().astype("float64")
    else:
        ts = _ms_from_numbers(_numbers(frame, "ts"))
    flag(~np.isfinite(ts), "ts is not a time")
    ts_i = np.where(np.isfinite(ts), ts, 0).astype(np.int64)
    if kind == "trades":
        ids = _numbers(frame, "trade_id")
        flag(~np.isfinite(ids) | (ids != np.round(ids)), "trade_id is not an integer")
        last = _numbers(frame, "last_id") if "last_id" in frame.columns else ids
        flag(~np.isfinite(last) | (last < ids), "last_id is not an integer >= trade_id")
        price, qty = _numbers(frame, "price"), _numbers(frame, "qty")
        with np.errstate(invalid="ignore"):
            flag(~(price > 0), "price is not a positive number")
            flag(~(qty > 0), "qty is not a positive number")
        if "side" in frame.columns:
            side = side_codes(frame["side"].to_numpy())
            flag(side == 0, "side is not buy or sell")
        elif frame["is_buyer_maker"].dtype == bool:
            # The buyer was the maker -> the seller took liquidity.
            side = np.where(frame["is_buyer_maker"].to_numpy(), -1, 1).astype(np.int8)
        else:
            maker = pd.Series(frame["is_buyer_maker"], dtype="string").str.strip().str.lower()
            flag(~maker.isin(["true", "false", "1", "0"]).to_numpy(), "is_buyer_maker is not true or false")
            side = np.where(maker.isin(["true", "1"]).to_numpy(), -1, 1).astype(np.int8)
        ids_i = np.where(np.isfinite(ids), ids, 0).astype(np.int64)
        good = np.flatnonzero(~bad_mask)
        dup = np.zeros(n, dtype=bool)
        _, first_idx = np.unique(ids_i[good], return_index=True)
        dup[good] = True
        dup[good[first_idx]] = False
        flag(dup, "duplicate trade_id")
        keep = ~bad_mask
        data = TradeArrays(
            ts_i[keep], ids_i[keep], np.where(np.isfinite(last), last, 0).astype(np.int64)[keep], price[keep], qty[keep], side[keep]
        )
        order = np.lexsort((data.trade_id, data.ts))
        if np.any(order != np.arange(len(order))):
            data = data[order]
    else:
        values = {c: _numbers(frame, c) for c in ("bid_px", "bid_qty", "ask_px", "ask_qty")}
        if "update_id" in frame.columns:
            uid = _numbers(frame, "update_id")
        else:  # no update id (snapshots): number the quotes of each millisecond, so none is merged away
            uid = pd.Series(ts_i).groupby(ts_i).cumcount().to_numpy(dtype="float64")
        flag(~np.isfinite(uid), "update_id is not a number")
        with np.errstate(invalid="ignore"):
            for c in ("bid_px", "ask_px"):
                flag(~(values[c] > 0), f"{c} is not a positive number")
            for c in ("bid_qty", "ask_qty"):
                flag(~(values[c] >= 0), f"{c} is not a number >= 0")
            flag(values["bid_px"] > values["ask_px"], "crossed quote (bid above ask)")
        keep = ~bad_mask
        data = QuoteArrays(
            ts_i[keep],
            np.where(np.isfinite(uid), uid, 0).astype(np.int64)[keep],
            *(values[c][keep] for c in ("bid_px", "bid_qty", "ask_px", "ask_qty")),
        )
        order = np.lexsort((data.update_id, data.ts))
        if np.any(order != np.arange(len(order))):
            data = data[order]
    bad = checks.bad_rows(frame, unit, first_line)
    return TradeImportRead(path, kind, data, bad, n)

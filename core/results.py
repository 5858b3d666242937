"""Run results: what a run produced as one typed :class:`RunResult`, built in one place
(:func:`assemble_result`, for every backtest path: the event path, the sim's compiled loops, the
Backtrader adapter, strategy kernels), and kept: every ``quant run`` is saved under
``$QUANT_HOME/runs/<run_id>/`` so that ``quant report <run_id>`` (or :func:`load_run`) can show or
compare it later.

A run directory holds ``run.json`` (summary, metrics, notes, the full config, the instrument, the
scalar facts) and parquet files: ``series.parquet`` (equity and every per-bar series),
``bars.parquet``, ``fills.parquet``, ``orders.parquet``, ``trades.parquet``, ``funding.parquet``
and one ``diag_<name>.parquet`` per DataFrame/Series the strategy's ``diagnostics()`` returned (its
other values go to ``run.json``). Runs saved before the facts were typed (their scalars under
``run.json``'s ``"extra"``) load the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .data import BarArrays
from .errors import DataError
from .model import Instrument, MarginBracket, MarketKind
from .paths import data_dir

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig
    from .metrics import FillColumns

_FRAMES = ("fills", "orders", "trades")
#: the per-bar series of a RunResult, as its fields and as columns of series.parquet
SERIES = ("position", "liquidation_price", "liquidation_price_short", "liquidation_distance")
#: scalar facts kept at the top of run.json (runs saved before this layout kept them under "extra")
_SCALARS = ("rejections", "compiled", "compiled_kernel_s")


@dataclass(frozen=True)
class RunInfo:
    """Identifies a run for observer hooks."""

    run_id: str
    mode: str
    strategy: str
    broker: str
    instrument: Instrument
    config: RunConfig | None


@dataclass
class RunResult:
    """Everything a run produced, as typed fields; ``summary()`` is what ``quant run --json`` prints.

    A backtest's result is built by :func:`assemble_result` whichever path ran it; a saved run is
    read back by :func:`load_run`. The per-bar series share the equity curve's index (each bar's
    close time, UTC)."""

    info: RunInfo
    #: how many bars the run covered
    bars: int
    start_ms: int
    end_ms: int
    #: account equity at each bar's close
    equity: pd.Series
    fills: pd.DataFrame
    orders: pd.DataFrame
    trades: pd.DataFrame
    metrics: dict[str, Any]
    initial_equity: float
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: the bars the run was on (ts, open, high, low, close, volume arrays)
    bar_arrays: BarArrays | None = None
    #: net position at each bar's close (base units; > 0 long, < 0 short)
    position: pd.Series | None = None
    #: the position's liquidation price at each bar's close; NaN when flat or out of reach (hedge
    #: mode: the LONG position's while it is open, else the SHORT one's)
    liquidation_price: pd.Series | None = None
    #: hedge mode (``broker.position_mode=hedge``): the SHORT position's liquidation price per bar
    liquidation_price_short: pd.Series | None = None
    #: how far the close is from the liquidation price, as a fraction of the close, positive while
    #: safe: (close - liq) / close for a long, (liq - close) / close for a short; NaN when flat
    #: (hedge mode: the nearer of the two positions')
    liquidation_distance: pd.Series | None = None
    #: one row per funding payment: ts, bar, rate, mark, position, amount (> 0 = paid)
    funding: pd.DataFrame | None = None
    #: orders the broker or the risk checks refused
    rejections: int = 0
    #: what the strategy's ``diagnostics()`` returned after the run
    diagnostics: dict[str, Any] = field(default_factory=dict)
    #: what triggered liquidations: "mark" (mark-price klines cover the run) or "last" (bar prices)
    liquidation_price_source: str | None = None
    #: where the funding rates came from: "store", "bundled", "constant" or "off"
    funding_source: str | None = None
    #: True when a compiled loop ran the backtest (False: the event path, or another engine)
    compiled: bool = False
    #: seconds spent in the compiled loop alone (the rest of ``elapsed_s`` builds the result)
    compiled_kernel_s: float | None = None
    #: the ``prob`` fill model's calibration: its name and sample size
    fill_calibration: dict[str, Any] | None = None
    #: ``quant run --fill-band``: ``{"columns": [...], "rows": {metric: [one value per column]}}``
    fill_band: dict[str, Any] | None = None
    #: the run's settings as ``run.json`` keeps them (a loaded run has no ``info.config``)
    saved_config: dict[str, Any] | None = None
    #: the strategy object the run used (``btc_quant.sdk.testing.run_strategy`` sets it; not saved)
    strategy_object: Any = None
    #: a plugin's own free-form additions (core code never reads them): scalars are saved in
    #: ``run.json``, Series as long as the run in ``series.parquet``; everything else is not saved
    extra: dict[str, Any] = field(default_factory=dict)

    def take_sources(self, broker: Any) -> RunResult:
        """Copy the broker's ``liquidation_price_source``, ``funding_source`` and
        ``fill_calibration`` (the sim has them)."""
        for key in ("liquidation_price_source", "funding_source"):
            value = getattr(broker, key, None)
            if isinstance(value, str) and getattr(self, key) is None:
                setattr(self, key, value)
        calibration = getattr(broker, "fill_calibration", None)  # fill model prob: its name and sample size
        if isinstance(calibration, dict) and self.fill_calibration is None:
            self.fill_calibration = dict(calibration)
        return self

    def summary(self) -> dict[str, Any]:
        def iso(ms: int) -> str:
            return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")

        out: dict[str, Any] = {
            "run_id": self.info.run_id,
            "strategy": self.info.strategy,
            "broker": self.info.broker,
            "exchange": self.info.instrument.exchange,
            "symbol": self.info.instrument.symbol,
            "bars": self.bars,
            "start": iso(self.start_ms),
            "end": iso(self.end_ms),
            "initial_equity": self.initial_equity,
        }
        for key in ("liquidation_price_source", "funding_source"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.metrics)
        out["elapsed_s"] = round(self.elapsed_s, 3)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def assemble_result(
    info: RunInfo,
    bars: BarArrays,
    equity: np.ndarray,
    fills: pd.DataFrame,
    orders: pd.DataFrame,
    *,
    initial_equity: float,
    funding: pd.DataFrame | None = None,
    rejections: int = 0,
    liquidation_price: np.ndarray | None = None,
    liquidation_price_short: np.ndarray | None = None,
    diagnostics: dict[str, Any] | None = None,
    compiled: bool = False,
    compiled_kernel_s: float | None = None,
    fill_columns: FillColumns | None = None,
) -> RunResult:
    """The RunResult of a backtest from what every path has: the equity at each bar's close, the
    fills (with their ``bar``) and orders frames, the funding payments, the rejection count, the
    liquidation price per bar (NaN when flat; in hedge mode the LONG position's, and the SHORT's as
    ``liquidation_price_short``: the result's ``liquidation_price`` is then the LONG's while it is
    open, else the SHORT's) and the strategy's diagnostics. Trades, the position
    per bar, the metrics and the distance to liquidation are derived here, the same way for every
    path. ``fill_columns``: the fills' columns as arrays, from a path that built ``fills`` from them
    (else read from ``fills`` once)."""
    from .bar_series import liquidation_distance
    from .metrics import FillColumns, compute_metrics, position_per_bar, trades_frame

    index = pd.to_datetime(bars.ts, unit="ms", utc=True)
    equity = pd.Series(equity, index=index, name="equity")
    if len(fills) and fill_columns is None:
        fill_columns = FillColumns.read(fills)  # read once: trades, position and metrics
    trades = trades_frame(fills, fill_columns)
    position = position_per_bar(len(bars), fills, fill_columns)
    paid = float(funding["amount"].sum()) if funding is not None and len(funding) else 0.0
    metrics = compute_metrics(equity, fills, trades, initial_equity=initial_equity, position=position, funding=paid, columns=fill_columns)
    liq = liq_short = distance = None
    if liquidation_price is not None:
        hedge = liquidation_price_short is not None  # hedge mode: a LONG and a SHORT line, each NaN while flat
        shown, values = np.empty(len(bars)), np.empty(len(bars))
        line = np.require(liquidation_price, np.float64, "C")
        short_line = np.require(liquidation_price_short, np.float64, "C") if hedge else line
        liquidation_distance(position, np.require(bars.close, np.float64, "C"), line, short_line, hedge, shown, values)
        if hedge:
            liq_short = pd.Series(liquidation_price_short, index=index, name="liquidation_price_short")
        # shown, values and position are this function's own arrays: the series take them as they are
        liq = pd.Series(shown, index=index, name="liquidation_price", copy=False)
        distance = pd.Series(values, index=index, name="liquidation_distance", copy=False)
    return RunResult(
        info=info,
        bars=len(bars),
        start_ms=bars.start_ms,
        end_ms=bars.end_ms,
        equity=equity,
        fills=fills,
        orders=orders,
        trades=trades,
        metrics=metrics,
        initial_equity=initial_equity,
        bar_arrays=bars,
        position=pd.Series(position, index=index, name="position", copy=False),
        liquidation_price=liq,
        liquidation_price_short=liq_short,
        liquidation_distance=distance,
        funding=funding,
        rejections=int(rejections),
        diagnostics=dict(diagnostics or {}),
        compiled=bool(compiled),
        compiled_kernel_s=compiled_kernel_s,
    )


def runs_dir() -> Path:
    path = data_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value if isinstance(value, (int, float, str, bool, type(None), list, dict)) else str(value)


def save_run(result: RunResult, root: Path | None = None) -> Path:
    """Write ``result`` to ``runs/<run_id>/``; returns the directory."""
    folder = (root or runs_dir()) / result.info.run_id
    folder.mkdir(parents=True, exist_ok=True)
    series = {"equity": result.equity}
    for name in SERIES:
        if getattr(result, name) is not None:
            series[name] = getattr(result, name)
    for name, value in result.extra.items():  # a plugin's own per-bar series
        if isinstance(value, pd.Series) and len(value) == len(result.equity) and name not in series:
            series[name] = value
    pd.DataFrame(series).to_parquet(folder / "series.parquet")
    if result.bar_arrays is not None:
        result.bar_arrays.to_frame().to_parquet(folder / "bars.parquet")
    for name in _FRAMES:
        getattr(result, name).to_parquet(folder / f"{name}.parquet")
    if result.funding is not None:
        result.funding.to_parquet(folder / "funding.parquet")
    other = {}
    for name, value in result.diagnostics.items():
        if isinstance(value, pd.Series):
            value = value.to_frame(name=value.name or name)
        if isinstance(value, pd.DataFrame):
            value.to_parquet(folder / f"diag_{name}.parquet")
        else:
            other[name] = _plain(value) if not isinstance(value, dict) else {k: _plain(v) for k, v in value.items()}
    info = result.info
    instrument = asdict(info.instrument)
    instrument["kind"] = info.instrument.kind.value
    doc = {
        "summary": result.summary(),
        "metrics": result.metrics,
        "notes": result.notes,
        "info": {"run_id": info.run_id, "mode": info.mode, "strategy": info.strategy, "broker": info.broker},
        "instrument": instrument,
        "config": info.config.to_dict() if info.config is not None else result.saved_config,
        "bars": result.bars,
        "start_ms": result.start_ms,
        "end_ms": result.end_ms,
        "initial_equity": result.initial_equity,
        "elapsed_s": result.elapsed_s,
        **{name: getattr(result, name) for name in _SCALARS},
        "fill_calibration": result.fill_calibration,
        "fill_band": result.fill_band,
        "diagnostics": other,
        "extra": {k: _plain(v) for k, v in result.extra.items() if isinstance(v, (int, float, str, bool))},
    }
    (folder / "run.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    return folder


def list_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """Summaries of the saved runs, newest first."""
    folders = sorted((root or runs_dir()).glob("*/run.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [json.loads(p.read_text())["summary"] for p in folders]


def load_run(run_id: str, root: Path | None = None) -> RunResult:
    """The saved run ``run_id`` (a unique prefix is enough) as a :class:`RunResult`."""
    root = root or runs_dir()
    matches = [p for p in root.glob(f"{run_id}*") if (p / "run.json").exists()]
    if not matches:
        raise DataError(f"no saved run {run_id!r} in {root}", hint="quant report --list shows the saved runs")
    if len(matches) > 1:
        raise DataError(f"run id {run_id!r} is ambiguous: {', '.join(sorted(p.name for p in matches))}")
    folder = matches[0]
    doc = json.loads((folder / "run.json").read_text())
    raw = dict(doc["instrument"])
    raw["kind"] = MarketKind(raw["kind"])
    raw["margin_brackets"] = tuple(MarginBracket(**b) for b in raw.get("margin_brackets", ()))
    instrument = Instrument(**raw)
    info = RunInfo(doc["info"]["run_id"], doc["info"]["mode"], doc["info"]["strategy"], doc["info"]["broker"], instrument, None)
    series = pd.read_parquet(folder / "series.parquet")
    frames = {name: pd.read_parquet(folder / f"{name}.parquet") for name in _FRAMES}
    extra = dict(doc.get("extra") or {})
    # runs saved before the facts were typed keep these scalars under "extra": either layout loads
    scalars = {name: doc[name] if name in doc else extra.pop(name) for name in _SCALARS if name in doc or name in extra}
    bars = None
    if (folder / "bars.parquet").exists():
        frame = pd.read_parquet(folder / "bars.parquet")
        bars = BarArrays(*(frame[c].to_numpy() for c in ("ts", "open", "high", "low", "close", "volume")))
    diagnostics = dict(doc.get("diagnostics") or {})
    for path in folder.glob("diag_*.parquet"):
        diagnostics[path.stem[5:]] = pd.read_parquet(path)
    extra.update({name: series[name] for name in series.columns if name != "equity" and name not in SERIES})
    return RunResult(
        info=info,
        bars=doc["bars"],
        start_ms=doc["start_ms"],
        end_ms=doc["end_ms"],
        equity=series["equity"],
        metrics=doc["metrics"],
        initial_equity=doc["initial_equity"],
        elapsed_s=doc["elapsed_s"],
        notes=doc["notes"],
        **frames,
        bar_arrays=bars,
        **{name: series[name] for name in SERIES if name in series.columns},
        funding=pd.read_parquet(folder / "funding.parquet") if (folder / "funding.parquet").exists() else None,
        diagnostics=diagnostics,
        liquidation_price_source=doc["summary"].get("liquidation_price_source"),
        funding_source=doc["summary"].get("funding_source"),
        fill_calibration=doc.get("fill_calibration"),
        fill_band=doc.get("fill_band"),
        saved_config=doc.get("config"),
        extra=extra,
        **scalars,
    )

"""Keeping run results: every ``quant run`` is saved under ``$QUANT_HOME/runs/<run_id>/`` so that
``quant report <run_id>`` (or :func:`load_run`) can show or compare it later.

A run directory holds ``run.json`` (summary, metrics, notes, the full config, the instrument)
and parquet files: ``series.parquet`` (equity and every per-bar series), ``bars.parquet``,
``fills.parquet``, ``orders.parquet``, ``trades.parquet``, ``funding.parquet`` and one
``diag_<name>.parquet`` per DataFrame/Series the strategy's ``diagnostics()`` returned (its other
values go to ``run.json``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .data import BarArrays
from .errors import DataError
from .model import Instrument, MarginBracket, MarketKind
from .paths import data_dir

if TYPE_CHECKING:  # pragma: no cover
    from .engine import RunResult

_FRAMES = ("fills", "orders", "trades")


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


def save_run(result: "RunResult", root: Path | None = None) -> Path:
    """Write ``result`` to ``runs/<run_id>/``; returns the directory."""
    folder = (root or runs_dir()) / result.info.run_id
    folder.mkdir(parents=True, exist_ok=True)
    series = {"equity": result.equity}
    for name, value in result.extra.items():
        if isinstance(value, pd.Series) and len(value) == len(result.equity):
            series[name] = value
    pd.DataFrame(series).to_parquet(folder / "series.parquet")
    bars = result.extra.get("bars")
    if isinstance(bars, BarArrays):
        bars.to_frame().to_parquet(folder / "bars.parquet")
    for name in _FRAMES:
        getattr(result, name).to_parquet(folder / f"{name}.parquet")
    funding = result.extra.get("funding")
    if isinstance(funding, pd.DataFrame):
        funding.to_parquet(folder / "funding.parquet")
    diagnostics, other = result.extra.get("diagnostics") or {}, {}
    for name, value in diagnostics.items():
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
        "config": info.config.to_dict() if info.config is not None else result.extra.get("config"),
        "bars": result.bars, "start_ms": result.start_ms, "end_ms": result.end_ms,
        "initial_equity": result.initial_equity, "elapsed_s": result.elapsed_s,
        "diagnostics": other,
        "extra": {k: _plain(v) for k, v in result.extra.items() if isinstance(v, (int, float, str, bool))},
    }
    (folder / "run.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    return folder


def list_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """Summaries of the saved runs, newest first."""
    folders = sorted((root or runs_dir()).glob("*/run.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [json.loads(p.read_text())["summary"] for p in folders]


def load_run(run_id: str, root: Path | None = None) -> "RunResult":
    """The saved run ``run_id`` (a unique prefix is enough) as a :class:`RunResult`."""
    from .engine import RunInfo, RunResult

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
    result = RunResult(
        info=info, bars=doc["bars"], start_ms=doc["start_ms"], end_ms=doc["end_ms"], equity=series["equity"],
        metrics=doc["metrics"], initial_equity=doc["initial_equity"], elapsed_s=doc["elapsed_s"], notes=doc["notes"], **frames,
    )
    for name in series.columns:
        if name != "equity":
            result.extra[name] = series[name]
    if (folder / "bars.parquet").exists():
        frame = pd.read_parquet(folder / "bars.parquet")
        result.extra["bars"] = BarArrays(*(frame[c].to_numpy() for c in ("ts", "open", "high", "low", "close", "volume")))
    if (folder / "funding.parquet").exists():
        result.extra["funding"] = pd.read_parquet(folder / "funding.parquet")
    diagnostics = dict(doc.get("diagnostics") or {})
    for path in folder.glob("diag_*.parquet"):
        diagnostics[path.stem[5:]] = pd.read_parquet(path)
    result.extra["diagnostics"] = diagnostics
    result.extra["config"] = doc.get("config")
    result.extra.update(doc.get("extra") or {})
    return result

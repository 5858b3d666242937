"""Saved backtests ($QUANT_HOME/runs) and optimisation studies (``study.db``) as the dashboard shows them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from btc_quant.core.results import list_runs

#: metrics shown side by side when two runs are compared, in this order (others follow)
COMPARE_FIRST = (
    "total_return",
    "final_equity",
    "max_drawdown",
    "sharpe",
    "sortino",
    "calmar",
    "trades",
    "fills",
    "win_rate",
    "profit_factor",
    "fees",
    "funding",
    "liquidations",
    "exposure",
)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def runs(root: Path, query: str = "", strategy: str = "", broker: str = "") -> list[dict[str, Any]]:
    """Summaries of the saved runs, newest first, filtered (``query``: any part of id, strategy, broker, symbol)."""
    out = []
    q = query.lower().strip()
    for s in list_runs(root) if root.is_dir() else []:
        if strategy and s.get("strategy") != strategy or broker and s.get("broker") != broker:
            continue
        hay = " ".join(str(s.get(k, "")) for k in ("run_id", "strategy", "broker", "symbol", "exchange")).lower()
        if q and q not in hay:
            continue
        out.append({k: _plain(v) for k, v in s.items() if isinstance(v, (int, float, str, bool, type(None)))})
    return out


def run_folder(root: Path, run_id: str) -> Path | None:
    matches = [p for p in root.glob(f"{run_id}*") if (p / "run.json").exists()] if run_id and "/" not in run_id else []
    return matches[0] if len(matches) == 1 else None


def run_detail(folder: Path, points: int = 400) -> dict[str, Any]:
    """A run's summary, metrics and its equity curve (at most ``points`` points, last value kept)."""
    doc = json.loads((folder / "run.json").read_text())
    equity = pd.read_parquet(folder / "series.parquet", columns=["equity"])["equity"]
    step = max(1, math.ceil(len(equity) / points))
    sampled = equity.iloc[::step]
    if len(equity) and sampled.index[-1] != equity.index[-1]:
        sampled = pd.concat([sampled, equity.iloc[-1:]])
    ts = [int(pd.Timestamp(t).value // 1_000_000) if not isinstance(t, (int, float)) else int(t) for t in sampled.index]
    summary = {k: _plain(v) for k, v in doc["summary"].items() if isinstance(v, (int, float, str, bool, type(None)))}
    metrics = {k: _plain(v) for k, v in (doc.get("metrics") or {}).items() if isinstance(v, (int, float, str, bool, type(None)))}
    return {
        "run_id": doc["info"]["run_id"],
        "summary": summary,
        "metrics": metrics,
        "equity": {"ts_ms": ts, "equity": [float(v) for v in sampled.to_numpy()]},
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{metric, a, b}`` for the union of both runs' metrics and summaries."""
    values_a, values_b = {**a["summary"], **a["metrics"]}, {**b["summary"], **b["metrics"]}
    names = [n for n in COMPARE_FIRST if n in values_a or n in values_b]
    names += sorted((set(values_a) | set(values_b)) - set(names) - {"run_id"})
    return [{"metric": n, "a": values_a.get(n), "b": values_b.get(n)} for n in names]


_STUDY_CACHE: dict[Path, tuple[tuple, list[dict[str, Any]]]] = {}


def studies(folder: Path) -> list[dict[str, Any]]:
    """Every Optuna study in ``folder/*/study.db`` (what ``quant optimize`` writes): trials by
    state and the best value as ``quant optimize`` picks it (:func:`best_trial`: complete trials
    meeting every constraint). A study is read again only when its files changed."""
    out = []
    for path in sorted(folder.glob("*/study.db")) if folder.is_dir() else []:
        stamp = tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (path, path.with_name("study.db-wal")))
        cached = _STUDY_CACHE.get(path)
        if cached is None or cached[0] != stamp:
            try:
                cached = (stamp, _read_studies(path))
            except Exception as exc:  # noqa: BLE001 - a study being created or locked: shown as such, read next time
                out.append({"study": path.parent.name, "folder": path.parent.name, "error": type(exc).__name__})
                continue
            _STUDY_CACHE[path] = cached
        out += cached[1]
    return out


def _read_studies(path: Path) -> list[dict[str, Any]]:
    import optuna

    from btc_quant.core.optimize.runner import best_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{path}"
    out = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
        trials = study.get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        best = best_trial(study, direction)
        out.append(
            {
                "study": name,
                "folder": path.parent.name,
                "direction": direction,
                "trials": len(trials),
                "complete": counts.get("COMPLETE", 0),
                "running": counts.get("RUNNING", 0),
                "failed": counts.get("FAIL", 0),
                "pruned": counts.get("PRUNED", 0),
                "best_value": None if best is None else _plain(best.value),
                "best_params": None if best is None else {k: _plain(v) for k, v in best.params.items()},
            }
        )
    return out

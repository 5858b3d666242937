"""Files a study leaves in its output folder.

* ``trials.csv`` -- one row per trial (parameters, every metric, feasible, error, worker);
* ``best.toml`` -- the best parameters as a run config ``quant run --config best.toml`` accepts
  (walk-forward: the best of the last train window, the one to trade next);
* ``report.html`` -- optimisation history, parameter importance and slice plots (plotly, self-contained);
* walk-forward also ``walk_forward.csv`` (windows, in- and out-of-sample results) and ``oos_equity.csv``.
"""

from __future__ import annotations

import html
import json
import logging
from typing import TYPE_CHECKING

import optuna
import plotly.graph_objects as go

from ..config import config_toml

if TYPE_CHECKING:  # pragma: no cover
    from .space import SearchSpace
    from .study import OptimizeResult

log = logging.getLogger(__name__)


def write_outputs(result: OptimizeResult, space: SearchSpace) -> None:
    out = result.out
    trials_path = out / "trials.csv"
    result.trials.to_csv(trials_path, index=False)
    result.files["trials"] = trials_path
    if result.best_config is not None:
        path = out / "best.toml"
        header = (
            f"# best parameters of study {result.study_name}: {result.objective} = {result.best_value}\n"
            f"# run it: quant run --config {path}\n"
        )
        path.write_text(header + config_toml(result.best_config))
        result.files["best"] = path
    if result.walk_forward is not None:
        path = out / "walk_forward.csv"
        result.walk_forward.to_csv(path, index=False)
        result.files["walk_forward"] = path
    if result.oos_equity is not None:
        path = out / "oos_equity.csv"
        result.oos_equity.to_csv(path)
        result.files["oos_equity"] = path
    path = out / "report.html"
    path.write_text(render_html(result, space))
    result.files["report"] = path


def _figures(result: OptimizeResult) -> list[tuple[str, go.Figure | str]]:
    """(title, figure or a sentence why there is none) for the report."""
    figures: list[tuple[str, go.Figure | str]] = []
    if result.oos_equity is not None:
        fig = go.Figure(go.Scatter(x=result.oos_equity.index, y=result.oos_equity.values, name="out-of-sample equity"))
        fig.update_layout(title="Stitched out-of-sample equity", yaxis_title="equity")
        figures.append(("Out-of-sample equity", fig))
    for i, study in enumerate(result.studies):
        suffix = f" (window {i})" if len(result.studies) > 1 else ""
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete:
            figures.append((f"Optimisation history{suffix}", "no complete trial yet"))
            continue
        figures.append((f"Optimisation history{suffix}", optuna.visualization.plot_optimization_history(study)))
        try:
            figures.append((f"Parameter importance{suffix}", optuna.visualization.plot_param_importances(study)))
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:
            figures.append((f"Parameter importance{suffix}", f"not computable: {exc}"))
        figures.append((f"Parameter slices{suffix}", optuna.visualization.plot_slice(study)))
    return figures


def render_html(result: OptimizeResult, space: SearchSpace) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>btc-quant study {html.escape(result.study_name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>",
        f"<h1>Study {html.escape(result.study_name)}</h1>",
    ]
    summary = result.summary()
    summary["search space"] = space.describe()
    summary.pop("files", None)
    parts.append("<table>")
    for key, value in summary.items():
        shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
        parts.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(shown)}</td></tr>")
    parts.append("</table>")
    for note in result.notes:
        parts.append(f"<p>note: {html.escape(note)}</p>")
    if result.walk_forward is not None and len(result.walk_forward):
        parts.append("<h2>Walk-forward windows</h2>")
        parts.append(result.walk_forward.to_html(index=False, na_rep="-"))
    plotly_js = True  # embed plotly.js once so the report opens offline
    for title, fig in _figures(result):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(fig, str):
            parts.append(f"<p>{html.escape(fig)}</p>")
            continue
        parts.append(fig.to_html(full_html=False, include_plotlyjs=plotly_js))
        plotly_js = False
    parts.append("</body></html>")
    return "\n".join(parts)

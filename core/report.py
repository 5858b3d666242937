"""Run reports: a self-contained Plotly HTML page and a matplotlib PNG summary.

The page is a list of :class:`ReportSection`: the standard ones (metrics, price with fills,
equity and drawdown, position and leverage, liquidation price and distance, funding) and any
that plugins return from the ``quant_report_sections`` hook (a strategy's own diagnostics)::

    from btc_quant.sdk import ReportSection, hookimpl

    @hookimpl
    def quant_report_sections(result):
        if result.info.strategy == "my_grid":
            return ReportSection("Grid levels", figure=my_plotly_figure, order=200)

The HTML embeds plotly.js once (no network needed to view it) and records script errors in the
``data-report-errors`` attribute of ``<html>`` so that a headless browser can check it rendered.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from .engine import RunResult
    from .plugins import PluginManager


@dataclass
class ReportSection:
    """One section of a report: a Plotly figure and/or an HTML fragment under a title."""

    title: str
    figure: Any = None  # a plotly.graph_objects.Figure
    html: str | None = None
    order: int = 100  # standard sections use 0..60


_ERROR_COLLECTOR = (
    "<script>window.addEventListener('error',function(e){var h=document.documentElement;"
    "h.setAttribute('data-report-errors',(h.getAttribute('data-report-errors')||'')+String(e.message)+' | ');});</script>"
)


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if key in ("total_return", "cagr", "max_drawdown", "win_rate", "exposure"):
            return f"{value:.2%}"
        return f"{value:,.2f}" if math.isfinite(value) and abs(value) >= 1000 else f"{value:.4g}"
    return html.escape(str(value))


def _metrics_section(result: "RunResult") -> ReportSection:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(k, v)}</td></tr>" for k, v in result.summary().items() if k != "notes")
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in result.notes)
    return ReportSection("Summary", html=f"<table class='metrics'>{rows}</table>{notes}", order=0)


def _price_section(result: "RunResult") -> ReportSection | None:
    import plotly.graph_objects as go

    bars = result.extra.get("bars")
    if bars is None:
        return None
    index = pd.to_datetime(bars.ts, unit="ms", utc=True)
    fig = go.Figure()
    fig.add_trace(go.Scattergl(x=index, y=bars.close, mode="lines", name="close", line=dict(width=1, color="#555")))
    liq = result.extra.get("liquidation_price")
    if liq is not None and np.isfinite(liq.to_numpy()).any():
        fig.add_trace(go.Scattergl(x=liq.index, y=liq.to_numpy(), mode="lines", name="liquidation price", line=dict(width=1, color="#c00", dash="dot")))
    fills = result.fills
    for side, symbol, color in (("buy", "triangle-up", "#1a9850"), ("sell", "triangle-down", "#d73027")):
        part = fills[(fills.side == side) & ~fills.is_liquidation] if len(fills) else fills
        if len(part):
            fig.add_trace(go.Scattergl(
                x=part.ts, y=part.price, mode="markers", name=f"{side} fills",
                marker=dict(symbol=symbol, size=7, color=color),
                text=[f"{q:g} @ {p:,.2f} fee {f:.4f} {t or ''}" for q, p, f, t in zip(part.quantity, part.price, part.fee, part.tag)],
            ))
    if len(fills) and fills.is_liquidation.any():
        part = fills[fills.is_liquidation]
        fig.add_trace(go.Scattergl(x=part.ts, y=part.price, mode="markers", name="liquidations", marker=dict(symbol="x", size=12, color="black")))
    fig.update_layout(height=450, margin=dict(l=50, r=20, t=30, b=30), yaxis_title="price")
    return ReportSection("Price and fills", figure=fig, order=10)


def _equity_section(result: "RunResult") -> ReportSection:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .metrics import drawdown

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.04)
    fig.add_trace(go.Scattergl(x=result.equity.index, y=result.equity.to_numpy(), mode="lines", name="equity"), row=1, col=1)
    dd = drawdown(result.equity)
    fig.add_trace(go.Scattergl(x=dd.index, y=-dd.to_numpy(), mode="lines", name="drawdown", fill="tozeroy", line=dict(color="#d73027")), row=2, col=1)
    fig.update_yaxes(title_text="equity", row=1, col=1)
    fig.update_yaxes(title_text="drawdown", tickformat=".0%", row=2, col=1)
    fig.update_layout(height=500, margin=dict(l=50, r=20, t=30, b=30))
    return ReportSection("Equity and drawdown", figure=fig, order=20)


def _position_section(result: "RunResult") -> ReportSection | None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    position = result.extra.get("position")
    bars = result.extra.get("bars")
    if position is None or bars is None:
        return None
    equity = result.equity.to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        leverage = np.where(equity > 0, np.abs(position.to_numpy()) * bars.close / equity, np.nan)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.05)
    fig.add_trace(go.Scattergl(x=position.index, y=position.to_numpy(), mode="lines", name="position", line=dict(shape="hv")), row=1, col=1)
    fig.add_trace(go.Scattergl(x=position.index, y=leverage, mode="lines", name="effective leverage"), row=2, col=1)
    fig.update_yaxes(title_text="position", row=1, col=1)
    fig.update_yaxes(title_text="notional / equity", row=2, col=1)
    fig.update_layout(height=420, margin=dict(l=50, r=20, t=30, b=30))
    return ReportSection("Position and leverage", figure=fig, order=30)


def _liquidation_section(result: "RunResult") -> ReportSection | None:
    import plotly.graph_objects as go

    distance = result.extra.get("liquidation_distance")
    if distance is None or not np.isfinite(distance.to_numpy()).any():
        return None
    fig = go.Figure(go.Scattergl(x=distance.index, y=distance.to_numpy(), mode="lines", name="distance to liquidation"))
    fig.update_layout(height=300, margin=dict(l=50, r=20, t=30, b=30), yaxis=dict(title="(close - liq) / close", tickformat=".0%"))
    low = float(np.nanmin(distance.to_numpy()))
    return ReportSection("Distance to liquidation", figure=fig, html=f"<p>closest: {low:.2%} of the price</p>", order=40)


def _funding_section(result: "RunResult") -> ReportSection | None:
    import plotly.graph_objects as go

    funding = result.extra.get("funding")
    if funding is None or len(funding) == 0:
        return None
    fig = go.Figure(go.Scatter(x=funding.ts, y=-funding.amount.cumsum(), mode="lines", line=dict(shape="hv"), name="funding received"))
    fig.update_layout(height=280, margin=dict(l=50, r=20, t=30, b=30), yaxis_title="cumulative funding (received > 0)")
    return ReportSection("Funding", figure=fig, html=f"<p>{len(funding)} payments, net paid {funding.amount.sum():,.4f}</p>", order=50)


def sections(result: "RunResult", plugins: "PluginManager | None" = None) -> list[ReportSection]:
    """The standard sections plus those the ``quant_report_sections`` hook returns, in order."""
    found = [s for s in (f(result) for f in (_metrics_section, _price_section, _equity_section, _position_section, _liquidation_section, _funding_section)) if s]
    if plugins is not None:
        for answer in plugins.hook.quant_report_sections(result=result):
            if answer is None:
                continue
            found.extend(answer if isinstance(answer, (list, tuple)) else [answer])
    return sorted(found, key=lambda s: (s.order, s.title))


def render_html(result: "RunResult", plugins: "PluginManager | None" = None) -> str:
    parts = []
    first = True
    for section in sections(result, plugins):
        body = f"<h2>{html.escape(section.title)}</h2>"
        if section.html:
            body += section.html
        if section.figure is not None:
            body += section.figure.to_html(full_html=False, include_plotlyjs=first, config={"responsive": True})
            first = False
        parts.append(f"<section>{body}</section>")
    info = result.info
    title = html.escape(f"{info.strategy} on {info.instrument.exchange} {info.instrument.symbol} - run {info.run_id}")
    style = (
        "body{font-family:sans-serif;margin:1.5em;max-width:1400px}table.metrics{border-collapse:collapse}"
        "table.metrics th{text-align:left;padding:2px 12px 2px 0;font-weight:normal;color:#555}"
        "table.metrics td{text-align:right;font-family:monospace}p.note{color:#777;font-size:0.85em}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>{_ERROR_COLLECTOR}"
        f"<style>{style}</style></head><body><h1>{title}</h1>{''.join(parts)}</body></html>"
    )


def write_html(result: "RunResult", path: Path | str, plugins: "PluginManager | None" = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result, plugins), encoding="utf-8")
    return path


def write_png(result: "RunResult", path: Path | str) -> Path:
    """A static summary (price with fills, equity, drawdown, distance to liquidation) via matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import drawdown

    distance = result.extra.get("liquidation_distance")
    has_liq = distance is not None and np.isfinite(distance.to_numpy()).any()
    rows = 4 if has_liq else 3
    fig, axes = plt.subplots(rows, 1, figsize=(12, 2.6 * rows), sharex=True)
    bars = result.extra.get("bars")
    ax = axes[0]
    if bars is not None:
        ax.plot(pd.to_datetime(bars.ts, unit="ms", utc=True), bars.close, lw=0.7, color="#555")
    fills = result.fills
    if len(fills):
        for side, marker, color in (("buy", "^", "#1a9850"), ("sell", "v", "#d73027")):
            part = fills[fills.side == side]
            ax.scatter(part.ts, part.price, marker=marker, s=12, color=color, label=side)
        if fills.is_liquidation.any():
            part = fills[fills.is_liquidation]
            ax.scatter(part.ts, part.price, marker="x", s=40, color="black", label="liquidation")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_ylabel("price")
    axes[1].plot(result.equity.index, result.equity.to_numpy(), lw=0.9)
    axes[1].set_ylabel("equity")
    dd = drawdown(result.equity)
    axes[2].fill_between(dd.index, -dd.to_numpy(), 0, color="#d73027", alpha=0.5)
    axes[2].set_ylabel("drawdown")
    if has_liq:
        axes[3].plot(distance.index, distance.to_numpy(), lw=0.8)
        axes[3].set_ylabel("to liquidation")
    m = result.metrics
    fig.suptitle(
        f"{result.info.strategy} {result.info.instrument.symbol}  return {m.get('total_return') or 0:.2%}  "
        f"max dd {m.get('max_drawdown') or 0:.2%}  trades {m.get('trades')}  fees {m.get('fees') or 0:,.2f}  funding {m.get('funding') or 0:,.2f}"
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

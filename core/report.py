"""Run reports: a self-contained Plotly HTML page and a matplotlib PNG summary.

The page is a list of :class:`ReportSection`: the standard ones (metrics, price with fills,
equity and drawdown, position and leverage, liquidation price and distance, funding) and any
that plugins return from the ``quant_report_sections`` hook (a strategy's own diagnostics)::

    from btc_quant.sdk import ReportSection, hookimpl

    @hookimpl
    def quant_report_sections(result):
        if result.info.strategy == "my_grid":
            return ReportSection("Grid levels", figure=my_plotly_figure, order=200)

The HTML embeds plotly.js and the figures gzipped (no network needed to view it; the browser
inflates them), and records script errors in the ``data-report-errors`` attribute of ``<html>``
(``data-report-rendered`` once every figure is drawn) so that a headless browser can check it.

Size: per-bar lines are drawn with :data:`BUCKETS` time buckets' first, last, lowest and highest
points (:func:`minmax_indices`), the price panel adds each bucket's full high-low range, and beyond
:data:`MAX_FILL_MARKERS` fills of a side they are grouped one marker per bucket with exact counts;
liquidations are always drawn one by one. The page links the run's parquet files (every bar and
fill). A year of 1-minute bars makes a page of about 3 MB (was ~250 MB).
"""

from __future__ import annotations

import base64
import gzip
import html
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from .plugins import PluginManager
    from .results import RunResult


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


#: Points per series across the page's width: a report stays small (and quick in a browser) for
#: any run length, while each bucket keeps its first, last, lowest and highest point.
BUCKETS = 2000
#: Above this many fills of one side, fills are drawn one marker per bucket with exact counts.
MAX_FILL_MARKERS = 2000


def minmax_indices(y: np.ndarray, buckets: int = BUCKETS) -> np.ndarray:
    """Indices of ``y`` to draw: all of them for a short series; otherwise, for each of ``buckets``
    equal runs of points, its first, last, minimum and maximum (so no spike disappears and a line
    drawn through them has the same envelope), sorted. NaNs are kept where they break the line."""
    y = np.asarray(y, dtype="float64")
    n = len(y)
    if n <= 4 * buckets:
        return np.arange(n)
    size = -(-n // buckets)  # points per bucket; the last bucket may be shorter
    rows = -(-n // size)
    low = np.full(rows * size, np.inf)
    high = np.full(rows * size, -np.inf)
    finite = ~np.isnan(y)
    low[:n][finite] = y[finite]
    high[:n][finite] = y[finite]
    starts = np.arange(rows) * size
    keep = np.concatenate(
        [
            starts,
            np.minimum(starts + size, n) - 1,
            starts + low.reshape(rows, size).argmin(axis=1),
            starts + high.reshape(rows, size).argmax(axis=1),
        ]
    )
    return np.unique(keep[keep < n])


def as_ms(x: Any) -> np.ndarray:
    """Times (DatetimeIndex, datetime Series or ms numbers) as int64 ms since the epoch: plotly
    draws numbers on a date axis as UTC milliseconds, and they travel as compact typed arrays."""
    if isinstance(x, (pd.DatetimeIndex, pd.Series)) and pd.api.types.is_datetime64_any_dtype(x):
        return pd.DatetimeIndex(x).as_unit("ms").asi8.copy()
    return np.asarray(x, dtype=np.int64)


def downsampled(index: Any, values: Any, buckets: int = BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """``(x in ms, y)`` of a per-bar series reduced by :func:`minmax_indices`."""
    y = np.asarray(values, dtype="float64")
    keep = minmax_indices(y, buckets)
    return as_ms(index)[keep], y[keep]


def bucket_ranges(ts_ms: np.ndarray, buckets: int = BUCKETS) -> tuple[np.ndarray, np.ndarray] | None:
    """``(starts, start times)`` of the runs of bars :func:`minmax_indices` uses, or None when the
    series is short enough to draw whole."""
    n = len(ts_ms)
    if n <= 4 * buckets:
        return None
    starts = np.arange(0, n, -(-n // buckets))
    return starts, np.asarray(ts_ms, dtype=np.int64)[starts]


def fill_markers(part: pd.DataFrame, edges_ms: np.ndarray | None) -> tuple[Any, np.ndarray, list[str]]:
    """One marker per fill, or, for many fills, one per time bucket at the bucket's volume-weighted
    price with the exact number of fills, quantity, price range and fees in its hover text."""
    if len(part) <= MAX_FILL_MARKERS or edges_ms is None:
        text = [f"{q:g} @ {p:,.2f} fee {f:.4f} {t or ''}" for q, p, f, t in zip(part.quantity, part.price, part.fee, part.tag)]
        return as_ms(part.ts), part.price.to_numpy(), text
    ts_ms = as_ms(part.ts)
    bucket = np.searchsorted(edges_ms, ts_ms, side="right") - 1
    frame = pd.DataFrame(
        {
            "bucket": bucket,
            "q": part.quantity.to_numpy(),
            "pq": part.price.to_numpy() * part.quantity.to_numpy(),
            "price": part.price.to_numpy(),
            "fee": part.fee.to_numpy(),
            "ts": ts_ms,
        }
    )
    g = frame.groupby("bucket", sort=True).agg(
        n=("q", "size"), q=("q", "sum"), pq=("pq", "sum"), lo=("price", "min"), hi=("price", "max"), fee=("fee", "sum"), ts=("ts", "first")
    )
    vwap = (g.pq / g.q).to_numpy()
    text = [
        f"{n:,} fills, {q:g} total @ {p:,.2f} (VWAP), {lo:,.2f} .. {hi:,.2f}, fees {f:.4f}"
        for n, q, p, lo, hi, f in zip(g.n, g.q, vwap, g.lo, g.hi, g.fee)
    ]
    return g.ts.to_numpy(), vwap, text


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if key in ("total_return", "cagr", "max_drawdown", "win_rate", "exposure"):
            return f"{value:.2%}"
        return f"{value:,.2f}" if math.isfinite(value) and abs(value) >= 1000 else f"{value:.4g}"
    return html.escape(str(value))


def _metrics_section(result: RunResult) -> ReportSection:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(k, v)}</td></tr>" for k, v in result.summary().items() if k != "notes")
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in result.notes)
    return ReportSection("Summary", html=f"<table class='metrics'>{rows}</table>{notes}", order=0)


def _price_section(result: RunResult) -> ReportSection | None:
    import plotly.graph_objects as go

    bars = result.bar_arrays
    if bars is None:
        return None
    index = np.asarray(bars.ts, dtype=np.int64)
    fig = go.Figure()
    ranges = bucket_ranges(np.asarray(bars.ts))
    if ranges is not None:  # many bars: each bucket's full high-low range behind the close line
        starts, edges_ms = ranges
        fig.add_trace(
            go.Scatter(
                x=edges_ms,
                y=np.maximum.reduceat(bars.high, starts),
                mode="lines",
                name="bar high",
                line=dict(width=0.5, color="#bbb"),
                legendgroup="range",
                showlegend=False,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=edges_ms,
                y=np.minimum.reduceat(bars.low, starts),
                mode="lines",
                name="bar low",
                line=dict(width=0.5, color="#bbb"),
                fill="tonexty",
                fillcolor="rgba(150,150,150,0.25)",
                legendgroup="range",
                showlegend=True,
            )
        )
    edges_ms = None if ranges is None else ranges[1]
    x, y = downsampled(index, bars.close)
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="close", line=dict(width=1, color="#555")))
    liq = result.liquidation_price
    if liq is not None and np.isfinite(liq.to_numpy()).any():
        x, y = downsampled(liq.index, liq.to_numpy())
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="liquidation price", line=dict(width=1, color="#c00", dash="dot")))
    fills = result.fills
    for side, symbol, color in (("buy", "triangle-up", "#1a9850"), ("sell", "triangle-down", "#d73027")):
        part = fills[(fills.side == side) & ~fills.is_liquidation] if len(fills) else fills
        if len(part):
            x, y, text = fill_markers(part, edges_ms)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="markers",
                    name=f"{side} fills" + (f" ({len(part):,}, grouped)" if len(x) < len(part) else ""),
                    marker=dict(symbol=symbol, size=7, color=color),
                    text=text,
                )
            )
    if len(fills) and fills.is_liquidation.any():  # every liquidation is its own marker, however many fills
        part = fills[fills.is_liquidation]
        fig.add_trace(
            go.Scatter(
                x=as_ms(part.ts),
                y=part.price.to_numpy(),
                mode="markers",
                name="liquidations",
                marker=dict(symbol="x", size=12, color="black"),
            )
        )
    fig.update_xaxes(type="date")
    fig.update_layout(height=450, margin=dict(l=50, r=20, t=30, b=30), yaxis_title="price")
    return ReportSection("Price and fills", figure=fig, order=10)


def _equity_section(result: RunResult) -> ReportSection:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .metrics import drawdown

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.04)
    x, y = downsampled(result.equity.index, result.equity.to_numpy())
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="equity"), row=1, col=1)
    dd = drawdown(result.equity)
    x, y = downsampled(dd.index, -dd.to_numpy())
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="drawdown", fill="tozeroy", line=dict(color="#d73027")), row=2, col=1)
    fig.update_yaxes(title_text="equity", row=1, col=1)
    fig.update_yaxes(title_text="drawdown", tickformat=".0%", row=2, col=1)
    fig.update_xaxes(type="date")
    fig.update_layout(height=500, margin=dict(l=50, r=20, t=30, b=30))
    return ReportSection("Equity and drawdown", figure=fig, order=20)


def _position_section(result: RunResult) -> ReportSection | None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    position = result.position
    bars = result.bar_arrays
    if position is None or bars is None:
        return None
    equity = result.equity.to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        leverage = np.where(equity > 0, np.abs(position.to_numpy()) * bars.close / equity, np.nan)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.05)
    x, y = downsampled(position.index, position.to_numpy())
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="position", line=dict(shape="hv")), row=1, col=1)
    x, y = downsampled(position.index, leverage)
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="effective leverage"), row=2, col=1)
    fig.update_yaxes(title_text="position", row=1, col=1)
    fig.update_yaxes(title_text="notional / equity", row=2, col=1)
    fig.update_xaxes(type="date")
    fig.update_layout(height=420, margin=dict(l=50, r=20, t=30, b=30))
    return ReportSection("Position and leverage", figure=fig, order=30)


def _liquidation_section(result: RunResult) -> ReportSection | None:
    import plotly.graph_objects as go

    distance = result.liquidation_distance
    if distance is None or not np.isfinite(distance.to_numpy()).any():
        return None
    x, y = downsampled(distance.index, distance.to_numpy())
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines", name="distance to liquidation"))
    fig.update_xaxes(type="date")
    fig.update_layout(height=300, margin=dict(l=50, r=20, t=30, b=30), yaxis=dict(title="(close - liq) / close", tickformat=".0%"))
    low = float(np.nanmin(distance.to_numpy()))
    return ReportSection("Distance to liquidation", figure=fig, html=f"<p>closest: {low:.2%} of the price</p>", order=40)


def _funding_section(result: RunResult) -> ReportSection | None:
    import plotly.graph_objects as go

    funding = result.funding
    if funding is None or len(funding) == 0:
        return None
    fig = go.Figure(
        go.Scatter(x=as_ms(funding.ts), y=-funding.amount.cumsum().to_numpy(), mode="lines", line=dict(shape="hv"), name="funding received")
    )
    fig.update_xaxes(type="date")
    fig.update_layout(height=280, margin=dict(l=50, r=20, t=30, b=30), yaxis_title="cumulative funding (received > 0)")
    return ReportSection("Funding", figure=fig, html=f"<p>{len(funding)} payments, net paid {funding.amount.sum():,.4f}</p>", order=50)


def _fill_band_section(result: RunResult) -> ReportSection | None:
    """``quant run --fill-band --report``: the same run under each fill model (pessimistic /
    calibrated with its sample size / optimistic), one column each (``result.fill_band``)."""
    band = result.fill_band
    if not band:
        return None
    head = "".join(f"<th>{html.escape(c)}</th>" for c in band["columns"])
    body = "".join(
        f"<tr><th>{html.escape(k)}</th>" + "".join(f"<td>{_fmt(k, v)}</td>" for v in values) + "</tr>" for k, values in band["rows"].items()
    )
    note = "<p class='note'>The report's charts are of the calibrated run (the pessimistic one without a calibration).</p>"
    return ReportSection("Fill-model band", html=f"<table class='metrics fill-band'><tr><th></th>{head}</tr>{body}</table>{note}", order=5)


def sections(result: RunResult, plugins: PluginManager | None = None) -> list[ReportSection]:
    """The standard sections plus those the ``quant_report_sections`` hook returns, in order."""
    found = [
        s
        for s in (
            f(result)
            for f in (
                _metrics_section,
                _fill_band_section,
                _price_section,
                _equity_section,
                _position_section,
                _liquidation_section,
                _funding_section,
            )
        )
        if s
    ]
    if plugins is not None:
        for answer in plugins.hook.quant_report_sections(result=result):
            if answer is None:
                continue
            found.extend(answer if isinstance(answer, (list, tuple)) else [answer])
    return sorted(found, key=lambda s: (s.order, s.title))


def _full_data_section(result: RunResult, folder: Path | None, page: Path | None) -> ReportSection | None:
    """Where the undecimated data is: the run's parquet files, linked relative to the page."""
    if folder is None or not Path(folder).is_dir():
        return None
    import os

    links = []
    for file in sorted(Path(folder).glob("*.parquet")):
        href = os.path.relpath(file, page.parent) if page is not None else file.resolve().as_uri()
        links.append(f"<a href='{html.escape(Path(href).as_posix() if page is not None else href)}'>{html.escape(file.name)}</a>")
    bars = result.bar_arrays
    thinned = bars is not None and len(bars) > 4 * BUCKETS
    text = (
        f"Lines are drawn with each of {BUCKETS:,} time buckets' first, last, lowest and highest point "
        f"({len(bars):,} bars in all), fills grouped per bucket with exact counts when there are more than "
        f"{MAX_FILL_MARKERS:,}; liquidations are always shown one by one. "
        if thinned
        else ""
    )
    return ReportSection(
        "Full data",
        html=f"<p class='note'>{text}Every bar, fill, order and trade of this run: "
        f"{', '.join(links)} (folder {html.escape(str(folder))}).</p>",
        order=1,
    )


@lru_cache(maxsize=1)
def _plotly_js_gz() -> str:
    """plotly.js from the installed plotly package, gzipped and base64-encoded (4.8 MB -> ~1.9 MB)."""
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), compresslevel=6, mtime=0)).decode("ascii")


def _figure_loader(figures_json: str) -> str:
    """plotly.js and the figures, gzipped in the page (so it stays self-contained and small) and
    inflated by the browser's DecompressionStream; script errors land in ``data-report-errors``
    and a drawn page gets ``data-report-rendered``."""
    data = base64.b64encode(gzip.compress(figures_json.encode("utf-8"), compresslevel=6, mtime=0)).decode("ascii")
    return (
        f"<script type='application/octet-stream' id='plotly-gz'>{_plotly_js_gz()}</script>"
        f"<script type='application/octet-stream' id='figures-gz'>{data}</script>"
        "<script>(async function(){"
        "async function inflate(id){var b=atob(document.getElementById(id).textContent),a=new Uint8Array(b.length);"
        "for(var i=0;i<b.length;i++)a[i]=b.charCodeAt(i);"
        "return await new Response(new Blob([a]).stream().pipeThrough(new DecompressionStream('gzip'))).text();}"
        "var h=document.documentElement;"
        "try{var s=document.createElement('script');s.text=await inflate('plotly-gz');document.head.appendChild(s);"
        "var figs=JSON.parse(await inflate('figures-gz'));"
        "for(var i=0;i<figs.length;i++){await Plotly.newPlot('figure-'+i,figs[i].data,figs[i].layout||{},{responsive:true});}"
        "h.setAttribute('data-report-rendered','1');"
        "}catch(e){h.setAttribute('data-report-errors',(h.getAttribute('data-report-errors')||'')+String(e&&e.message||e)+' | ');}"
        "})();</script>"
    )


def render_html(
    result: RunResult,
    plugins: PluginManager | None = None,
    *,
    data_folder: Path | None = None,
    page: Path | None = None,
    extra: list[ReportSection] | tuple[ReportSection, ...] = (),
) -> str:
    """The report page; ``data_folder`` is the saved run's folder (linked from the page, relative
    to ``page`` when the page is written to a file); ``extra`` sections are the caller's own (a
    command's, e.g. ``quant compare``'s bot-vs-sim section), placed by their ``order``."""
    parts = []
    figures = []
    found = sorted([*sections(result, plugins), *extra], key=lambda s: s.order)
    full = _full_data_section(result, data_folder, page)
    if full is not None:
        found = sorted([*found, full], key=lambda s: (s.order, s.title))
    for section in found:
        body = f"<h2>{html.escape(section.title)}</h2>"
        if section.html:
            body += section.html
        if section.figure is not None:
            body += f"<div class='figure' id='figure-{len(figures)}'></div>"
            figures.append(section.figure.to_json(validate=False))
        parts.append(f"<section>{body}</section>")
    if figures:
        parts.append(_figure_loader("[" + ",".join(figures) + "]"))
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


def write_html(
    result: RunResult,
    path: Path | str,
    plugins: PluginManager | None = None,
    *,
    data_folder: Path | None = None,
    extra: list[ReportSection] | tuple[ReportSection, ...] = (),
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result, plugins, data_folder=data_folder, page=path.resolve(), extra=extra), encoding="utf-8")
    return path


def write_png(result: RunResult, path: Path | str) -> Path:
    """A static summary (price with fills, equity, drawdown, distance to liquidation) via matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import drawdown

    distance = result.liquidation_distance
    has_liq = distance is not None and np.isfinite(distance.to_numpy()).any()
    rows = 4 if has_liq else 3
    fig, axes = plt.subplots(rows, 1, figsize=(12, 2.6 * rows), sharex=True)
    bars = result.bar_arrays
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

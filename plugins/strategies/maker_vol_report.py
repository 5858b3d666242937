"""Report figures of ``maker_vol``'s diagnostics (Plotly), for the run report's section hook.

:func:`grid_figures` turns the dict of :meth:`MakerVol.diagnostics` (DataFrames, or the plain
lists/dicts a saved run gives back) into ``(title, figure)`` pairs: fills per level (bars and a time x level heatmap), take-profit
occupancy with live vs virtual orders, distance to liquidation, saturation closes and the PnL
attribution.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def _frame(value: Any) -> pd.DataFrame:
    return value if isinstance(value, pd.DataFrame) else pd.DataFrame(value if value is not None else [])


def _time(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame["ts_ms"], unit="ms", utc=True)


def grid_figures(diagnostics: dict) -> list[tuple[str, Any]]:
    import plotly.graph_objects as go

    figures: list[tuple[str, Any]] = []
    levels = _frame(diagnostics.get("fills_per_level"))
    if len(levels):
        fig = go.Figure()
        fig.add_bar(x=levels["price"], y=levels["entry_fills"], name="entry fills")
        fig.add_bar(x=levels["price"], y=levels["tp_fills"], name="take-profit fills")
        fig.update_layout(barmode="group", xaxis_title="level price", yaxis_title="fills")
        figures.append(("Grid: fills per level", fig))
    entries = _frame(diagnostics.get("entries"))
    if len(entries):
        fig = go.Figure(go.Histogram2d(x=_time(entries), y=entries["price"], colorscale="Viridis", colorbar_title="entries"))
        fig.update_layout(xaxis_title="time", yaxis_title="level price")
        figures.append(("Grid: entries per level over time (heatmap)", fig))
    samples = _frame(diagnostics.get("samples"))
    if len(samples):
        t = _time(samples)
        fig = go.Figure()
        fig.add_scatter(x=t, y=samples["tp_levels_occupied"], name="take-profit levels occupied")
        fig.add_scatter(x=t, y=samples["live_orders"], name="live orders")
        fig.add_scatter(x=t, y=samples["virtual_orders"], name="virtual orders")
        figures.append(("Grid: take-profit occupancy, live vs virtual orders", fig))
        fig = go.Figure()
        fig.add_scatter(x=t, y=samples["distance_to_liquidation"], name="(price - liquidation) / price")
        fig.update_layout(yaxis_tickformat=".0%")
        figures.append(("Grid: distance to the lots' liquidation price", fig))
    saturations = _frame(diagnostics.get("saturations"))
    if len(saturations):
        fig = go.Figure()
        fig.add_scatter(x=_time(saturations), y=saturations["pnl"], mode="markers", name="realised PnL of each close")
        figures.append((f"Grid: saturation closes ({len(saturations)}, {saturations['pnl'].sum():,.2f} USDT)", fig))
    attribution = {k: v for k, v in (diagnostics.get("pnl_attribution") or {}).items() if k != "open_lots"}
    if attribution:
        fig = go.Figure(go.Bar(x=list(attribution), y=list(attribution.values())))
        fig.update_layout(yaxis_title="USDT")
        figures.append(("Grid: PnL attribution", fig))
    return figures

"""``quant report``: the HTML report (and PNG summary) of a saved run; ``--list`` shows saved runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..plugins import PluginManager
from .lazy import lazy

write_html = lazy("btc_quant.core.report", "write_html")
write_png = lazy("btc_quant.core.report", "write_png")
list_runs = lazy("btc_quant.core.results", "list_runs")
load_run = lazy("btc_quant.core.results", "load_run")
runs_dir = lazy("btc_quant.core.results", "runs_dir")


def keep(result, plugins: PluginManager, report: Optional[Path], png: Optional[Path]) -> Path:
    """Save a finished run under QUANT_HOME and write the reports asked for; returns the run dir."""
    from ..results import save_run

    folder = save_run(result)
    if report is not None:
        typer.echo(f"report: {write_html(result, report, plugins, data_folder=folder)}", err=True)
    if png is not None:
        typer.echo(f"png: {write_png(result, png)}", err=True)
    return folder


def register(app: typer.Typer, plugins: PluginManager) -> None:
    @app.command("report")
    def report(
        run_id: Optional[str] = typer.Argument(None, help="id of a saved run (a unique prefix is enough)"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default: report.html in the run's folder)"),
        png: Optional[Path] = typer.Option(None, "--png", help="also write a PNG summary here"),
        list_: bool = typer.Option(False, "--list", help="list the saved runs, newest first"),
        as_json: bool = typer.Option(False, "--json", help="with --list: print JSON"),
    ) -> None:
        """Write the Plotly HTML report of a saved run (every quant run is saved under QUANT_HOME/runs)."""
        if list_ or run_id is None:
            runs = list_runs()
            if as_json:
                typer.echo(json.dumps(runs, default=str))
                return
            for s in runs:
                typer.echo(
                    f"{s['run_id']}  {s['start']} .. {s['end']}  {s['strategy']:<12} {s['broker']:<10} return {s.get('total_return') or 0:+.2%}  trades {s.get('trades')}"
                )
            if not runs:
                typer.echo(f"no saved runs in {runs_dir()}")
            return
        result = load_run(run_id)
        folder = runs_dir() / result.info.run_id
        path = write_html(result, out or folder / "report.html", plugins, data_folder=folder)
        typer.echo(str(path))
        if png is not None:
            typer.echo(str(write_png(result, png)))

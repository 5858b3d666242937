"""``quant run``: a backtest (broker=sim) or, with a live-capable broker, a paper/live run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..config import load_run_config
from ..plugins import PluginManager
from ..run import backtest
from . import report_cmd

out = Console()


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if key in ("total_return", "cagr", "max_drawdown", "win_rate", "exposure"):
            return f"{value:.2%}"
        if math.isfinite(value) and abs(value) >= 1000:
            return f"{value:,.2f}"
        return f"{value:.4g}"
    return str(value)


def print_summary(summary: dict) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary.items():
        if key == "notes":
            continue
        table.add_row(key, _fmt(key, value))
    out.print(table)


def register(app: typer.Typer, plugins: PluginManager) -> None:
    @app.command("run", context_settings={"allow_extra_args": False})
    def run(
        settings: Optional[list[str]] = typer.Argument(None, help="key=value settings, e.g. strategy=sma_cross strategy.fast=5 data.start=2022-01-10"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file (default: ./quant.toml if present)"),
        as_json: bool = typer.Option(False, "--json", help="print a machine-readable summary on stdout"),
        report: Optional[Path] = typer.Option(None, "--report", help="write the run's HTML report to this file"),
        png: Optional[Path] = typer.Option(None, "--png", help="write a PNG summary of the run to this file"),
    ) -> None:
        """Run a strategy. With broker=sim (default) this is a backtest on stored or bundled bars."""
        cfg = load_run_config(settings or [], plugins.registry, config_path=config)
        result = backtest(cfg, plugins=plugins)
        report_cmd.keep(result, plugins, report, png)  # saved under QUANT_HOME/runs/<run_id>
        for note in result.notes:
            typer.echo(f"note: {note}", err=True)
        if as_json:
            typer.echo(json.dumps(result.summary(), default=str))
        else:
            print_summary(result.summary())

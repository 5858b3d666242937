"""``quant run``: a backtest (broker=sim) or, with a live-capable broker, a paper/live run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from typer import BadParameter
from rich.console import Console
from rich.table import Table

from ..config import load_run_config
from ..errors import ConfigError
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


#: The fill models of ``--fill-band``: the pessimistic one first (a buy fills only if the bar trades
#: below it), then the optimistic one (a touch is enough). Real queue position lies in between.
FILL_BAND = ("through", "touch")


def diagnostics_summary(result) -> dict:
    """The strategy's one-line diagnostics (``Strategy.diagnostics()["summary"]``), if it has any."""
    diag = result.extra.get("diagnostics") or {}
    return dict(diag.get("summary") or {})


def with_diagnostics(result) -> dict:
    summary = result.summary()
    diag = diagnostics_summary(result)
    attribution = (result.extra.get("diagnostics") or {}).get("pnl_attribution")
    if attribution:
        diag.update({f"pnl.{k}": v for k, v in attribution.items()})
    if diag:
        summary["diagnostics"] = diag
    return summary


def register(app: typer.Typer, plugins: PluginManager) -> None:
    @app.command("run", context_settings={"allow_extra_args": False})
    def run(
        settings: Optional[list[str]] = typer.Argument(None, help="key=value settings, e.g. strategy=sma_cross strategy.fast=5 data.start=2022-01-10"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file (default: ./quant.toml if present)"),
        as_json: bool = typer.Option(False, "--json", help="print a machine-readable summary on stdout"),
        report: Optional[Path] = typer.Option(None, "--report", help="write the run's HTML report to this file"),
        png: Optional[Path] = typer.Option(None, "--png", help="write a PNG summary of the run to this file"),
        fill_band: bool = typer.Option(False, "--fill-band", help="backtest twice, with the through and touch fill models, and show both side by side"),
        testnet: bool = typer.Option(False, "--testnet", help="broker=live: trade on the exchange's sandbox (ccxt sandbox mode)"),
        real_money: bool = typer.Option(False, "--i-understand-this-trades-real-money", help="broker=live: allow trading real funds"),
        max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="paper/live: stop cleanly after this many seconds"),
    ) -> None:
        """Run a strategy. With broker=sim (default) this is a backtest on stored or bundled bars;
        broker=paper or broker=live runs it on live bars until Ctrl-C, SIGTERM or `quant stop`."""
        if fill_band:
            return _fill_band(list(settings or []), config, as_json)
        cfg = load_run_config(settings or [], plugins.registry, config_path=config)
        runner = getattr(plugins.registry.get("broker", cfg.broker.name, key="broker").factory, "run_live", None)
        if runner is not None:
            summary = runner(cfg, plugins, testnet=testnet, real_money=real_money, max_seconds=max_seconds)
            paper_report = summary.pop("report", None)
            if as_json:
                typer.echo(json.dumps({**summary, "report": paper_report}, default=str))
            else:
                print_summary(paper_report or {k: v for k, v in summary.items() if not isinstance(v, (dict, list))})
            return
        if testnet or real_money:
            raise ConfigError(f"--testnet and --i-understand-this-trades-real-money are for broker=live, not broker={cfg.broker.name}")
        result = backtest(cfg, plugins=plugins)
        report_cmd.keep(result, plugins, report, png)  # saved under QUANT_HOME/runs/<run_id>
        for note in result.notes:
            typer.echo(f"note: {note}", err=True)
        if as_json:
            typer.echo(json.dumps(with_diagnostics(result), default=str))
        else:
            print_summary(result.summary())
            diag = with_diagnostics(result).get("diagnostics")
            if diag:
                out.print("[bold]strategy diagnostics[/bold]")
                print_summary(diag)

    def _fill_band(pairs: list[str], config: Optional[Path], as_json: bool) -> None:
        if any(p.split("=", 1)[0].strip() == "broker.fill_model" for p in pairs):
            raise BadParameter("--fill-band runs both fill models itself: drop broker.fill_model=...")
        results = {}
        for model in FILL_BAND:
            cfg = load_run_config([*pairs, f"broker.fill_model={model}"], plugins.registry, config_path=config)
            results[model] = backtest(cfg, plugins=plugins)
        for note in dict.fromkeys(n for r in results.values() for n in r.notes):
            typer.echo(f"note: {note}", err=True)
        rows = {model: {**with_diagnostics(r)} for model, r in results.items()}
        if as_json:
            typer.echo(json.dumps(rows, default=str))
            return
        table = Table(title="fill-model band: the same run with each fill model", box=None, pad_edge=False)
        table.add_column("", style="bold")
        for model in FILL_BAND:
            table.add_column(model, justify="right")
        flat = {m: {**{k: v for k, v in row.items() if k not in ("diagnostics", "notes", "run_id")}, **(row.get("diagnostics") or {})} for m, row in rows.items()}
        keys = list(dict.fromkeys(k for m in FILL_BAND for k in flat[m]))
        for key in keys:
            table.add_row(key, *(_fmt(key, flat[m].get(key)) for m in FILL_BAND))
        out.print(table)

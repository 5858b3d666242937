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
from ..errors import ConfigError
from ..plugins import PluginManager
from ..run import backtest

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
        testnet: bool = typer.Option(False, "--testnet", help="broker=live: trade on the exchange's sandbox (ccxt sandbox mode)"),
        real_money: bool = typer.Option(False, "--i-understand-this-trades-real-money", help="broker=live: allow trading real funds"),
        max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="paper/live: stop cleanly after this many seconds"),
    ) -> None:
        """Run a strategy. With broker=sim (default) this is a backtest on stored or bundled bars;
        broker=paper or broker=live runs it on live bars until Ctrl-C, SIGTERM or `quant stop`."""
        cfg = load_run_config(settings or [], plugins.registry, config_path=config)
        runner = getattr(plugins.registry.get("broker", cfg.broker.name, key="broker").factory, "run_live", None)
        if runner is not None:
            summary = runner(cfg, plugins, testnet=testnet, real_money=real_money, max_seconds=max_seconds)
            report = summary.pop("report", None)
            if as_json:
                typer.echo(json.dumps({**summary, "report": report}, default=str))
            else:
                print_summary(report or {k: v for k, v in summary.items() if not isinstance(v, (dict, list))})
            return
        if testnet or real_money:
            raise ConfigError(f"--testnet and --i-understand-this-trades-real-money are for broker=live, not broker={cfg.broker.name}")
        result = backtest(cfg, plugins=plugins)
        for note in result.notes:
            typer.echo(f"note: {note}", err=True)
        if as_json:
            typer.echo(json.dumps(result.summary(), default=str))
        else:
            print_summary(result.summary())

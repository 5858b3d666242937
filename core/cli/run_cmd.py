"""``quant run``: a backtest (broker=sim) or, with a live-capable broker, a paper/live run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from typer import BadParameter

from ..errors import ConfigError
from ..plugins import PluginManager
from . import report_cmd
from .lazy import lazy
from .progress import compile_notice, slow_step

load_run_config = lazy("btc_quant.core.config", "load_run_config")
backtest = lazy("btc_quant.core.run", "backtest")

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
#: below it), then the optimistic one (a touch is enough). Real queue position lies in between;
#: with a calibration (``broker.calibration=NAME``, or one saved as ``default``) the calibrated
#: ``prob`` line sits between them (:func:`fill_band_lines`).
FILL_BAND = ("through", "touch")
BAND_LABELS = {"through": "pessimistic", "prob": "calibrated", "touch": "optimistic"}


def fill_band_lines(pairs: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """``--fill-band``'s runs: (the settings without ``broker.calibration``, [(fill model, its
    settings)] pessimistic / calibrated / optimistic). The calibrated line is
    ``broker.calibration=NAME`` if given, else the calibration saved as ``default``
    (``quant calibrate``'s default name) if there is one; without either, two lines."""
    from btc_quant.core.paths import data_dir

    name = None
    rest = []
    for p in pairs:
        key, _, value = p.partition("=")
        if key.strip() == "broker.fill_model":
            raise BadParameter("--fill-band runs each fill model itself: drop broker.fill_model=...")
        if key.strip() == "broker.calibration":
            name = value.strip()
        else:
            rest.append(p)
    if name is None and (data_dir() / "calibrations" / "default.json").exists():
        name = "default"
    if name is None:
        return rest, [(m, []) for m in FILL_BAND]
    return rest, [("through", []), ("prob", [f"broker.calibration={name}"]), ("touch", [])]


def diagnostics_summary(result) -> dict:
    """The strategy's one-line diagnostics (``Strategy.diagnostics()["summary"]``), if it has any."""
    return dict(result.diagnostics.get("summary") or {})


def with_diagnostics(result) -> dict:
    summary = result.summary()
    diag = diagnostics_summary(result)
    attribution = result.diagnostics.get("pnl_attribution")
    if attribution:
        diag.update({f"pnl.{k}": v for k, v in attribution.items()})
    if diag:
        summary["diagnostics"] = diag
    return summary


def register(app: typer.Typer, plugins: PluginManager) -> None:
    @app.command("run", context_settings={"allow_extra_args": False})
    def run(
        settings: Optional[list[str]] = typer.Argument(
            None, help="key=value settings, e.g. strategy=sma_cross strategy.fast=5 data.start=2022-01-10"
        ),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file (default: ./quant.toml if present)"),
        as_json: bool = typer.Option(False, "--json", help="print a machine-readable summary on stdout"),
        report: Optional[Path] = typer.Option(None, "--report", help="write the run's HTML report to this file"),
        png: Optional[Path] = typer.Option(None, "--png", help="write a PNG summary of the run to this file"),
        fill_band: bool = typer.Option(
            False,
            "--fill-band",
            help="backtest with the through (pessimistic), prob (calibrated, if a calibration is given or saved as default) and touch (optimistic) fill models side by side",
        ),
        testnet: bool = typer.Option(False, "--testnet", help="broker=live: trade on the exchange's sandbox (ccxt sandbox mode)"),
        real_money: bool = typer.Option(False, "--i-understand-this-trades-real-money", help="broker=live: allow trading real funds"),
        max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="paper/live: stop cleanly after this many seconds"),
    ) -> None:
        """Run a strategy. With broker=sim (default) this is a backtest on stored or bundled bars;
        broker=paper or broker=live runs it on live bars until Ctrl-C, SIGTERM or `quant stop`."""
        if fill_band:
            return _fill_band(list(settings or []), config, as_json, report)
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
        with compile_notice(), slow_step(f"backtesting {cfg.strategy.name} on {cfg.broker.name}"):
            result = backtest(cfg, plugins=plugins)
        with slow_step("saving the run" + (" and writing its report" if report or png else "")):
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

    def _fill_band(pairs: list[str], config: Optional[Path], as_json: bool, report: Optional[Path] = None) -> None:
        rest, lines = fill_band_lines(pairs)
        results = {}
        for model, extra in lines:
            cfg = load_run_config([*rest, f"broker.fill_model={model}", *extra], plugins.registry, config_path=config)
            results[model] = backtest(cfg, plugins=plugins)
        cal = results["prob"].fill_calibration if "prob" in results else None
        if cal is None:
            typer.echo(
                "note: no calibrated line: make one with quant calibrate (saved as default) or give broker.calibration=NAME", err=True
            )
        for note in dict.fromkeys(n for r in results.values() for n in r.notes):
            typer.echo(f"note: {note}", err=True)
        rows = {model: {**with_diagnostics(r)} for model, r in results.items()}
        if cal is not None:
            rows["prob"]["calibration"] = cal
        models = [m for m, _ in lines]
        heads = {m: f"{BAND_LABELS[m]}: {m}" + (f" {cal['name']} (n={cal['samples']})" if m == "prob" else "") for m in models}
        flat = {
            m: {
                **{k: v for k, v in row.items() if k not in ("diagnostics", "notes", "run_id", "calibration")},
                **(row.get("diagnostics") or {}),
            }
            for m, row in rows.items()
        }
        if report is not None:  # the report of the middle line, with the band as a section
            middle = results[models[len(models) // 2]] if cal is not None else results[models[0]]
            middle.fill_band = {
                "columns": [heads[m] for m in models],
                "rows": {k: [flat[m].get(k) for m in models] for k in dict.fromkeys(k for m in models for k in flat[m])},
            }
            report_cmd.keep(middle, plugins, report, None)
        if as_json:
            typer.echo(json.dumps(rows, default=str))
            return
        table = Table(title="fill-model band: the same run with each fill model", box=None, pad_edge=False)
        table.add_column("", style="bold")
        for model in models:
            table.add_column(heads[model].replace(": ", "\n", 1), justify="right")  # two lines: fits 80 columns
        keys = list(dict.fromkeys(k for m in models for k in flat[m]))
        for key in keys:
            table.add_row(key, *(_fmt(key, flat[m].get(key)) for m in models))
        out.print(table)

"""``quant optimize``: search strategy parameters with Optuna on a Dask cluster, optionally walk-forward."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..plugins import PluginManager
from .lazy import lazy
from .run_cmd import _fmt

gather = lazy("btc_quant.core.config", "gather")

out = Console()
err = Console(stderr=True)

WALK_FORWARD_KEYS = ("train", "test", "step")


class ProgressDisplay:
    """A live bar on a terminal (trials done, best so far, ETA); one line per ~10% otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.live = enabled and err.is_terminal
        self.progress: Progress | None = None
        self.task = None
        self.label = None
        self.started = time.monotonic()
        self.last_line = -1

    def __enter__(self) -> ProgressDisplay:
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("best {task.fields[best]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=err,
                refresh_per_second=2,  # the driver's CPU is the workers' on a small machine
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        best = "-" if event.best is None else f"{event.best:.4g}"
        if self.progress is not None:
            if self.label != event.label:
                self.label = event.label
                self.task = self.progress.add_task(event.label, total=event.total, completed=event.done, best=best)
            self.progress.update(self.task, completed=event.done, total=event.total, best=best)
            return
        if self.label != event.label:
            self.label, self.started, self.last_line = event.label, time.monotonic(), -1
        tenth = event.done * 10 // max(event.total, 1)
        if tenth != self.last_line:
            self.last_line = tenth
            elapsed = time.monotonic() - self.started
            eta = f", ETA {elapsed / event.done * (event.total - event.done):.0f}s" if event.done else ""
            err.print(f"{event.label}: trials {event.done}/{event.total}, best {best}{eta}", highlight=False)


def _walk_forward_pairs(settings: list[str]) -> list[str]:
    """With --walk-forward, bare ``train=``/``test=``/``step=`` mean ``walk_forward.train=`` etc."""
    pairs = []
    for pair in settings:
        key = pair.partition("=")[0].strip()
        pairs.append(f"walk_forward.{pair.strip()}" if key in WALK_FORWARD_KEYS else pair)
    return pairs


def _cell(column: str, value) -> str:
    if isinstance(value, str):  # an ISO time: the date alone when it is midnight
        return value[:10] if value[11:16] in ("", "00:00") else value[:16]
    return _fmt(column.removeprefix("oos."), value)


def print_result(result) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    summary = result.summary()
    for key, label in (
        ("study", "study"),
        ("objective", "objective"),
        ("direction", "direction"),
        ("trials", "trials run"),
        ("complete", "complete"),
    ):
        table.add_row(label, str(summary[key]))
    label = "out-of-sample " + result.objective if result.walk_forward is not None else "best " + result.objective
    table.add_row(label, _fmt(result.objective, result.best_value))
    if result.best_params is not None:
        table.add_row("best params" if result.walk_forward is None else "last window params", json.dumps(result.best_params))
    for path in result.files.values():
        table.add_row(path.name, str(path))
    out.print(table)
    frame = result.walk_forward
    if frame is not None and len(frame):
        columns = [
            "window",
            "test_start",
            "in_sample",
            *[c for c in frame if c.startswith("param.")],
            "out_of_sample",
            "oos.total_return",
            "oos.trades",
        ]
        columns = [c for c in columns if c in frame]
        headers = {
            "window": "#",
            "test_start": "test from",
            "in_sample": "IS",
            "out_of_sample": "OOS",
            "oos.total_return": "OOS return",
            "oos.trades": "OOS trades",
        }
        windows = Table(title=f"walk-forward: {result.objective} in sample (IS) and out of sample (OOS)", box=None)
        for column in columns:
            windows.add_column(headers.get(column, column.removeprefix("param.")), no_wrap=True)
        for row in frame[columns].itertuples(index=False):
            windows.add_row(*[_cell(c, v) for c, v in zip(columns, row)])
        out.print(windows)
    if result.oos_metrics:
        oos = Table(show_header=False, box=None, pad_edge=False, title="stitched out-of-sample")
        oos.add_column(style="bold")
        oos.add_column()
        for key, value in result.oos_metrics.items():
            oos.add_row(key, _fmt(key, value))
        out.print(oos)


def register(app: typer.Typer, plugins: PluginManager) -> None:
    @app.command("optimize")
    def optimize_command(
        settings: Optional[list[str]] = typer.Argument(
            None,
            help="key=value settings: the run config plus search.PARAM=LOW:HIGH[:STEP|:log] or a,b,c, objective=, "
            "direction=, constraints=, trials=, sampler=tpe|random|grid, seed=, study=, storage=, out=, cluster=, workers=",
        ),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with the run config and the [search] table"),
        walk_forward: bool = typer.Option(False, "--walk-forward", help="rolling windows: train=180d test=30d [step=30d]"),
        as_json: bool = typer.Option(False, "--json", help="print a machine-readable summary on stdout"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show trials done, best so far and ETA"),
    ) -> None:
        """Search strategy parameters (Optuna) on a Dask cluster; rerun the same command to resume."""
        from ..optimize import optimize

        pairs = list(settings or [])
        if walk_forward:
            pairs = _walk_forward_pairs(pairs)
        raw = gather(pairs, config_path=config)
        if walk_forward and "walk_forward" not in raw:
            raw["walk_forward"] = {}  # --walk-forward without train=/test=: the config names the missing key
        with ProgressDisplay(progress) as display:
            result = optimize(raw, plugins=plugins, progress=display)
        for note in result.notes:
            typer.echo(f"note: {note}", err=True)
        if as_json:
            typer.echo(json.dumps(result.summary(), default=str))
        else:
            print_result(result)
        if result.interrupted:
            done = int((result.trials["state"] == "COMPLETE").sum()) if len(result.trials) else 0
            typer.echo(
                f"interrupted: {done} complete trials kept in {result.out}; run the same command again to resume",
                err=True,
            )
            raise typer.Exit(130)

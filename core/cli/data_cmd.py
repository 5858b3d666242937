"""``quant data fetch|import|ls|gaps|export``: getting bars into the store and looking at them.

Settings are the run's (``exchange=binance symbol=BTC/USDT timeframe=1m store=clickhouse ...``);
``start=`` and ``end=`` are short for ``data.start=`` / ``data.end=``. The store and the data
source are the plugins those settings name (see ``quant plugins``).
"""

from __future__ import annotations

import csv
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..config import RunConfig, load_run_config
from ..data import ms_to_iso, timeframe_ms
from ..errors import ConfigError, DataError, StoreError
from ..importing import read_import_file
from ..paths import data_dir
from ..plugins import PluginManager

out = Console(width=None if Console().is_terminal else 140)  # tables stay on one line in pipes and logs
err = Console(stderr=True)
SHORTHANDS = {"start": "data.start", "end": "data.end"}
#: Bad rows printed one per line before the summary line (all are saved with --skip-bad).
SHOW_BAD = 20
IMPORT_CHUNK = 500_000


class RowsPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        rows = task.fields.get("rows", 0)
        elapsed = task.elapsed or 0.0
        rate = rows / elapsed if elapsed > 0 else 0.0
        return Text(f"{rows:,} rows  {rate:,.0f} rows/s", style="progress.data.speed")


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                    RowsPerSecond(), TimeRemainingColumn(), console=err, transient=False)


def _settings(pairs: list[str]) -> list[str]:
    out_pairs = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        out_pairs.append(f"{SHORTHANDS[key]}={value}" if sep and key in SHORTHANDS else pair)
    return out_pairs


def _split(args: list[str]) -> tuple[list[Path], list[str]]:
    paths = [Path(a) for a in args if "=" not in a]
    return paths, _settings([a for a in args if "=" in a])


def _ms(value) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def open_store(cfg: RunConfig, plugins: PluginManager):
    from ..run import build_runtime

    runtime = build_runtime(cfg, plugins, mode="data")
    return runtime, runtime.store()


def _need(store: Any, *methods: str) -> None:
    for method in methods:
        if not callable(getattr(store, method, None)):
            raise StoreError(f"the {type(store).__name__} store cannot be used by quant data (it has no {method})")


def _when(ms: int | None) -> str:
    return "-" if ms is None else ms_to_iso(ms)


def start_of(cfg: RunConfig, store, exchange: str, command: str) -> int:
    """``data.start``, else the first stored bar of the series (the command then resumes)."""
    if cfg.data.start is not None:
        return _ms(cfg.data.start)
    span = store.first_last(exchange, cfg.symbol, cfg.timeframe)
    if span is None:
        raise ConfigError(f"{command}: nothing stored for {exchange} {cfg.symbol} {cfg.timeframe} yet, so say where to start",
                          hint=f"quant {command} exchange={exchange} symbol={cfg.symbol} timeframe={cfg.timeframe} start=2024-01-01")
    return span[0]


def open_source(cfg: RunConfig, plugins: PluginManager, runtime):
    name = cfg.exchange.name
    if name not in plugins.registry.names("data_source"):
        raise ConfigError(f"exchange: no data source named {name!r}", hint="any ccxt exchange id works, e.g. binance, binanceusdm, coinbase")
    reg = plugins.registry.get("data_source", name, key="exchange")
    return reg.factory(cfg.exchange.config, runtime)


def register(app: typer.Typer, plugins: PluginManager) -> None:
    data = typer.Typer(help="Market data in the store: fetch from an exchange, import files, list, find gaps, export.",
                       no_args_is_help=True)
    app.add_typer(data, name="data")
    config_opt = typer.Option(None, "--config", "-c", help="TOML config file")

    @data.command("fetch")
    def fetch(
        settings: Optional[list[str]] = typer.Argument(None, help="exchange=binance symbol=BTC/USDT timeframe=1m start=2020-01-01 [end=...]"),
        config: Optional[Path] = config_opt,
        funding: bool = typer.Option(True, "--funding/--no-funding", help="also fetch funding-rate history of a perpetual"),
    ) -> None:
        """Fetch closed bars from the exchange into the store: resumes, fills unfetched gaps, records empty ranges."""
        cfg = load_run_config(_settings(settings or []), plugins.registry, config_path=config)
        runtime, store = open_store(cfg, plugins)
        _need(store, "write_bars", "first_last", "gaps", "record_page", "short_pages")
        source = open_source(cfg, plugins, runtime)
        ex, sym, tf = source.exchange_id, cfg.symbol, cfg.timeframe
        start, end = start_of(cfg, store, ex, "data fetch"), _ms(cfg.data.end)
        try:
            total = source.total_ms(store, sym, tf, start, end)
            with progress_bar() as bar:
                task = bar.add_task(f"{ex} {sym} {tf}", total=max(total, 1), rows=0)
                report = source.fetch_bars(store, sym, tf, start, end,
                                           progress=lambda ms, written: bar.update(task, advance=ms, rows=written))
                bar.update(task, completed=max(total, 1), rows=report.written)
            funding_rows = 0
            if funding and source.is_perpetual(sym):
                funding_rows = source.fetch_funding(store, sym, start, end).funding
        finally:
            source.close()
            store.close()
        typer.echo(
            f"{ex} {sym} {tf}: {report.written:,} bars written, {report.requests} requests, {report.retries} retries"
            + (f", {funding_rows:,} funding rates" if funding_rows else "")
        )
        for a, b in report.empty:
            typer.echo(f"  the exchange has no bars for {_when(a)} .. {_when(b)} UTC ({(b - a) // timeframe_ms(tf):,} bars); "
                       "recorded, see quant data gaps")

    @data.command("import")
    def import_(
        args: list[str] = typer.Argument(..., help="FILE... (.parquet, .csv, Binance archive .zip) and settings: exchange=binance symbol=BTC/USDT timeframe=1m"),
        config: Optional[Path] = config_opt,
        skip_bad: bool = typer.Option(False, "--skip-bad", help="import the good rows of a file with bad rows (the bad ones are saved)"),
    ) -> None:
        """Import bar files into the store; a file with bad rows is refused whole unless --skip-bad."""
        paths, pairs = _split(args)
        if not paths:
            raise ConfigError("data import: name at least one file", hint="quant data import BTCUSDT-1m-2024-01.zip exchange=binance symbol=BTC/USDT")
        cfg = load_run_config(pairs, plugins.registry, config_path=config)
        ex, sym, tf = cfg.exchange.name, cfg.symbol, cfg.timeframe
        reads = [read_import_file(p, tf) for p in paths]  # every file is checked before anything is written
        refused = [r for r in reads if r.bad and not skip_bad]
        for r in reads:
            for bad in r.bad[:SHOW_BAD]:
                err.print(f"{r.path}: {bad.where}: {bad.problem}", highlight=False, soft_wrap=True)
            if len(r.bad) > SHOW_BAD:
                err.print(f"{r.path}: ... {len(r.bad) - SHOW_BAD} more bad row(s)", highlight=False)
        if refused:
            first = refused[0]
            raise DataError(
                f"{first.path}: {len(first.bad)} bad row(s) of {first.rows} (first: {first.bad[0].where}, {first.bad[0].problem}); "
                f"nothing imported" + (f" ({len(refused)} file(s) refused)" if len(refused) > 1 else ""),
                hint="fix the rows, or pass --skip-bad to import the good rows (the bad ones are saved to a file)",
            )
        runtime, store = open_store(cfg, plugins)
        _need(store, "write_bars")
        try:
            with progress_bar() as bar:
                for r in reads:
                    task = bar.add_task(r.path.name, total=max(len(r.bars), 1), rows=0)
                    done = 0
                    for lo in range(0, len(r.bars), IMPORT_CHUNK):
                        done += store.write_bars(ex, sym, tf, r.bars[lo: lo + IMPORT_CHUNK])
                        bar.update(task, completed=done, rows=done)
                    bar.update(task, completed=max(len(r.bars), 1))
        finally:
            store.close()
        for r in reads:
            line = f"{r.path}: {len(r.bars):,} bars imported into {ex} {sym} {tf}"
            if r.bad:
                saved = _save_rejected(r)
                line += f"; {len(r.bad)} bad row(s) skipped, saved to {saved}"
            typer.echo(line)

    @data.command("ls")
    def ls(settings: Optional[list[str]] = typer.Argument(None, help="store settings, e.g. store=clickhouse store.url=..."),
           config: Optional[Path] = config_opt) -> None:
        """What is stored: exchange, symbol, timeframe, first, last, rows, gaps (and funding)."""
        cfg = load_run_config(_settings(settings or []), plugins.registry, config_path=config)
        _, store = open_store(cfg, plugins)
        _need(store, "series")
        try:
            series = store.series()
            funding = store.funding_series() if callable(getattr(store, "funding_series", None)) else []
        finally:
            store.close()
        if not series and not funding:
            typer.echo("the store is empty; load bars with quant data fetch or quant data import")
            return
        table = Table("exchange", "symbol", "timeframe", "first (UTC)", "last (UTC)", "rows", "gaps")
        for s in series:
            table.add_row(s.exchange, s.symbol, s.timeframe, _when(s.first_ms), _when(s.last_ms), f"{s.rows:,}", str(s.gaps))
        for exchange, symbol, first, last, rows in funding:
            table.add_row(exchange, symbol, "funding", _when(first), _when(last), f"{rows:,}", "")
        out.print(table)

    @data.command("gaps")
    def gaps(settings: Optional[list[str]] = typer.Argument(None, help="exchange=binance symbol=BTC/USDT timeframe=1m [start=... end=...]"),
             config: Optional[Path] = config_opt) -> None:
        """Each missing range of a stored series, and why (not fetched yet, or the exchange has none)."""
        cfg = load_run_config(_settings(settings or []), plugins.registry, config_path=config)
        _, store = open_store(cfg, plugins)
        _need(store, "gaps")
        ex, sym, tf = cfg.exchange.name, cfg.symbol, cfg.timeframe
        try:
            found = store.gaps(ex, sym, tf, _ms(cfg.data.start), _ms(cfg.data.end))
            span = store.first_last(ex, sym, tf)
        finally:
            store.close()
        if span is None and not found:
            typer.echo(f"nothing stored for {ex} {sym} {tf}")
            return
        if not found:
            typer.echo(f"{ex} {sym} {tf}: no gaps between {_when(span[0])} and {_when(span[1])} UTC")
            return
        table = Table("from (UTC)", "to (UTC, exclusive)", "bars", "why")
        for g in found:
            table.add_row(_when(g.start_ms), _when(g.end_ms), f"{g.bars:,}", g.reason)
        out.print(table)

    @data.command("export")
    def export(
        args: list[str] = typer.Argument(..., help="FILE and settings: exchange=binance symbol=BTC/USDT timeframe=1h [start=... end=...]"),
        fmt: Optional[str] = typer.Option(None, "--format", "-f", help="parquet or csv (default: from the file name)"),
        config: Optional[Path] = config_opt,
    ) -> None:
        """Write stored bars (resampled in SQL for timeframes above 1m) to a parquet or CSV file."""
        paths, pairs = _split(args)
        if len(paths) != 1:
            raise ConfigError("data export: name exactly one output file", hint="quant data export btc_1h.parquet timeframe=1h")
        path = paths[0]
        kind = (fmt or path.suffix.lstrip(".")).lower()
        if kind not in ("parquet", "csv"):
            raise ConfigError(f"data export: --format must be parquet or csv, got {kind!r}")
        cfg = load_run_config(pairs, plugins.registry, config_path=config)
        _, store = open_store(cfg, plugins)
        ex, sym, tf = cfg.exchange.name, cfg.symbol, cfg.timeframe
        with progress_bar() as bar:
            task = bar.add_task(f"export {path.name}", total=3, rows=0)
            try:
                bars = store.read_bars(ex, sym, tf, _ms(cfg.data.start), _ms(cfg.data.end))
            finally:
                store.close()
            bar.update(task, advance=1, rows=len(bars))
            if len(bars) == 0:
                raise DataError(f"nothing stored for {ex} {sym} {tf} in that range; nothing written")
            frame = bars.to_frame()
            bar.update(task, advance=1, rows=len(bars))
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "parquet":
                frame.to_parquet(path, index=False, compression="zstd")
            else:
                frame.to_csv(path, index=False)
            bar.update(task, advance=1, rows=len(bars))
        typer.echo(f"{path}: {len(bars):,} {ex} {sym} {tf} bars, {_when(bars.start_ms)} .. {_when(bars.end_ms)} UTC")


def _save_rejected(read) -> Path:
    """Keep every rejected row, with where it was and why, under the user data dir."""
    folder = data_dir() / "rejected"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = folder / f"{read.path.name}.{stamp}.{int(time.time() * 1000) % 1000:03d}.csv"
    columns = list(read.bad[0].raw)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["where", "problem", *columns])
        for bad in read.bad:
            writer.writerow([bad.where, bad.problem, *(bad.raw.get(c) for c in columns)])
    return path

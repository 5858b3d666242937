"""``quant data fetch|import|ls|gaps|export``: getting bars into the store and looking at them.

Settings are the run's (``exchange=binance symbol=BTC/USDT timeframe=1m store=clickhouse ...``);
``start=`` and ``end=`` are short for ``data.start=`` / ``data.end=``; ``price=mark`` (short for
``data.price=mark``) makes fetch, import, gaps and export work on the mark-price klines of a
perpetual (kept beside the trade klines) instead of the trade klines. The store and the data
source are the plugins those settings name (see ``quant plugins``).
"""

from __future__ import annotations

import csv
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..errors import ConfigError, DataError, QuantError, StoreError
from ..paths import data_dir
from ..plugins import PluginManager
from .lazy import lazy

if TYPE_CHECKING:
    from ..config import RunConfig

load_run_config = lazy("btc_quant.core.config", "load_run_config")
parse_duration = lazy("btc_quant.core.config", "parse_duration")
ms_to_iso = lazy("btc_quant.core.data", "ms_to_iso")
timeframe_ms = lazy("btc_quant.core.data", "timeframe_ms")
ImportJournal = lazy("btc_quant.core.importing", "ImportJournal")
changes_against = lazy("btc_quant.core.importing", "changes_against")
read_import_file = lazy("btc_quant.core.importing", "read_import_file")
unfinished_imports = lazy("btc_quant.core.importing", "unfinished_imports")

out = Console(width=None if Console().is_terminal else 140)  # tables stay on one line in pipes and logs
err = Console(stderr=True)
SHORTHANDS = {"start": "data.start", "end": "data.end", "price": "data.price"}
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
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        RowsPerSecond(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


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
    store = runtime.store()
    if cfg.data.price != "trade":  # price=mark: every klines method of this command on the mark klines
        if not callable(getattr(store, "prices", None)):
            raise StoreError(f"price={cfg.data.price}: the {type(store).__name__} store keeps no mark-price klines")
        store.price = cfg.data.price
    return runtime, store


def _what(cfg: RunConfig, exchange: str) -> str:
    """``binance BTC/USDT 1m``, with ``mark`` after it for mark-price klines."""
    return f"{exchange} {cfg.symbol} {cfg.timeframe}" + ("" if cfg.data.price == "trade" else f" {cfg.data.price}")


def _need(store: Any, *methods: str) -> None:
    for method in methods:
        if not callable(getattr(store, method, None)):
            raise StoreError(f"the {type(store).__name__} store cannot be used by quant data (it has no {method})")


def _where(store: Any) -> str:
    """The store's identity for the import journal (never with a password)."""
    where = getattr(store, "where", None)
    return where() if callable(where) else type(store).__name__


def _has_series(store: Any, exchange: str, symbol: str, timeframe: str) -> bool:
    has = getattr(store, "has_series", None)
    return has(exchange, symbol, timeframe) if callable(has) else True


def _series_key(timeframe: str, price: str) -> str:
    """How the import journal names a series' klines: ``1m``, or ``1m mark`` for mark-price klines."""
    return timeframe if price == "trade" else f"{timeframe} {price}"


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _incomplete(unfinished: list[dict], exchange: str, symbol: str, timeframe: str) -> str | None:
    """Why a series is incomplete (an import of it was interrupted), or None."""
    hits = [e for e in unfinished if (e["exchange"], e["symbol"], e["timeframe"]) == (exchange, symbol, timeframe)]
    return (
        "; ".join(
            f"the import of {e['file']} stopped after {e.get('written', 0):,} of {e.get('rows', 0):,} bars "
            f"({_when(e.get('first_ms'))} .. {_when(e.get('last_ms'))} UTC); run the same import again to finish it"
            for e in hits
        )
        or None
    )


def print_table(console: Console, table: Table) -> None:
    """Print a table at its natural width, wrapping lines rather than cutting numbers to fit the
    terminal (rich would otherwise shrink columns and end them with an ellipsis)."""
    width = console.measure(table, options=console.options.update_width(10_000)).maximum
    if console.width >= width:
        console.print(table)
        return
    wide = Console(
        file=console.file, width=width, force_terminal=console.is_terminal, no_color=console.no_color, color_system=console.color_system
    )
    wide.print(table, soft_wrap=True)


def _when(ms: int | None) -> str:
    return "-" if ms is None else ms_to_iso(ms)


def start_of(cfg: RunConfig, store, exchange: str, command: str) -> int:
    """``data.start``, else the first stored bar of the series (the command then resumes)."""
    if cfg.data.start is not None:
        return _ms(cfg.data.start)
    span = store.first_last(exchange, cfg.symbol, cfg.timeframe)
    if span is None:
        raise ConfigError(
            f"{command}: nothing stored for {exchange} {cfg.symbol} {cfg.timeframe} yet, so say where to start",
            hint=f"quant {command} exchange={exchange} symbol={cfg.symbol} timeframe={cfg.timeframe} start=2024-01-01",
        )
    return span[0]


def open_source(cfg: RunConfig, plugins: PluginManager, runtime):
    name = cfg.exchange.name
    if name not in plugins.registry.names("data_source"):
        raise ConfigError(
            f"exchange: no data source named {name!r}", hint="any ccxt exchange id works, e.g. binance, binanceusdm, coinbase"
        )
    reg = plugins.registry.get("data_source", name, key="exchange")
    return reg.factory(cfg.exchange.config, runtime)


def register(app: typer.Typer, plugins: PluginManager) -> None:
    data = typer.Typer(
        help="Market data in the store: fetch from an exchange, import files, list, find gaps, export.", no_args_is_help=True
    )
    app.add_typer(data, name="data")
    config_opt = typer.Option(None, "--config", "-c", help="TOML config file")

    @data.command("fetch")
    def fetch(
        settings: Optional[list[str]] = typer.Argument(
            None, help="exchange=binance symbol=BTC/USDT timeframe=1m start=2020-01-01 [end=...]"
        ),
        config: Optional[Path] = config_opt,
        funding: bool = typer.Option(True, "--funding/--no-funding", help="also fetch funding-rate history of a perpetual"),
    ) -> None:
        """Fetch closed bars from the exchange into the store: resumes, fills unfetched gaps, records empty ranges.

        kind=trades fetches trade prints instead (paged, resumes after the last stored print)."""
        from .trades_data import fetch_trades_once, split_kind

        kind, pairs = split_kind(_settings(settings or []))
        cfg = load_run_config(pairs, plugins.registry, config_path=config)
        if kind == "trades":
            fetch_trades_once(cfg, plugins)
            return
        if kind == "quotes":
            raise ConfigError(
                "data fetch: exchanges publish no best bid/offer history; record it with quant collect, or import files",
                hint="quant data import BTCUSDT-bookTicker-2024-08-08.zip kind=quotes",
            )
        fetch_once(cfg, plugins, funding=funding)

    @data.command("schedule")
    def schedule_(
        settings: Optional[list[str]] = typer.Argument(None, help="the same settings as data fetch"),
        config: Optional[Path] = config_opt,
        every: str = typer.Option("1h", "--every", help="how often to fetch: 30s, 15m, 1h, 1d"),
        runs: Optional[int] = typer.Option(None, "--runs", min=1, help="stop after this many fetches (default: until Ctrl-C/SIGTERM)"),
        funding: bool = typer.Option(True, "--funding/--no-funding", help="also fetch funding-rate history of a perpetual"),
    ) -> None:
        """Run `data fetch` now and then every --every, in this process (the `schedule` library).

        A failed fetch is reported and retried at the next tick; the store is only open while a
        fetch runs, so `quant run` can read it in between. For cron or Airflow instead, see
        examples/airflow/."""
        cfg = load_run_config(_settings(settings or []), plugins.registry, config_path=config)
        run_schedule(cfg, plugins, every=every, runs=runs, funding=funding)

    @data.command("import")
    def import_(
        args: list[str] = typer.Argument(
            ...,
            help="FILE... (.parquet, .csv, Binance archive .zip) and settings: exchange=binance symbol=BTC/USDT timeframe=1m; kind=trades|quotes for trade prints (Binance trades/aggTrades, tapes) or best bid/offer (bookTicker)",
        ),
        config: Optional[Path] = config_opt,
        skip_bad: bool = typer.Option(False, "--skip-bad", help="import the good rows of a file with bad rows (the bad ones are saved)"),
        replace: bool = typer.Option(False, "--replace", help="overwrite stored bars whose values differ from the file's"),
    ) -> None:
        """Import bar files into the store; a file with bad rows is refused whole unless --skip-bad,
        one that would change stored bars unless --replace. A killed import is shown as incomplete
        by data ls/gaps, and running it again resumes it."""
        paths, pairs = _split(args)
        from .trades_data import import_kind, import_trades, split_kind  # kind=trades|quotes

        kind, pairs = split_kind(pairs)
        if not paths:
            raise ConfigError(
                "data import: name at least one file", hint="quant data import BTCUSDT-1m-2024-01.zip exchange=binance symbol=BTC/USDT"
            )
        cfg = load_run_config(pairs, plugins.registry, config_path=config)
        kind = import_kind(kind, paths)
        if kind != "bars":
            import_trades(paths, kind, cfg, plugins, skip_bad=skip_bad)
            return
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
        _need(store, "write_bars", "read_bars")
        where = _where(store)
        try:
            # Every file is compared with the store before anything is written.
            changes = {}
            for r in reads:
                if len(r.bars) and _has_series(store, ex, sym, tf):
                    stored = store.read_bars(ex, sym, tf, r.bars.start_ms, r.bars.end_ms + 1)
                    changes[r.path] = changes_against(stored, r.bars)
            changing = [(path, c) for path, c in changes.items() if c.differing]
            if changing and not replace:
                path, c = changing[0]
                raise DataError(
                    f"{path}: {c.describe()}; nothing imported", hint="pass --replace to overwrite the stored bars with the file's"
                )
            with progress_bar() as bar:
                for r in reads:
                    journal = ImportJournal(data_dir() / "imports", where, ex, sym, _series_key(tf, cfg.data.price), r.path)
                    done = min(journal.resume_from(), len(r.bars))
                    task = bar.add_task(r.path.name, total=max(len(r.bars), 1), rows=done, completed=done)
                    if done:
                        err.print(f"{r.path}: resuming an interrupted import after {done:,} of {len(r.bars):,} bars", highlight=False)
                    for lo in range(done, len(r.bars), IMPORT_CHUNK):
                        journal.update(lo, len(r.bars), int(r.bars.start_ms), int(r.bars.end_ms))
                        store.write_bars(ex, sym, tf, r.bars[lo : lo + IMPORT_CHUNK])
                        done = min(lo + IMPORT_CHUNK, len(r.bars))
                        journal.update(done, len(r.bars), int(r.bars.start_ms), int(r.bars.end_ms))
                        bar.update(task, completed=done, rows=done)
                    bar.update(task, completed=max(len(r.bars), 1))
                    journal.finish()
        finally:
            store.close()
        for r in reads:
            line = f"{r.path}: {len(r.bars):,} bars imported into {_what(cfg, ex)}"
            if r.path in changes and changes[r.path].differing:
                line += f"; replaced {changes[r.path].describe()}"
            if r.bad:
                saved = _save_rejected(r)
                line += f"; {len(r.bad)} bad row(s) skipped, saved to {saved}"
            typer.echo(line)

    @data.command("ls")
    def ls(
        settings: Optional[list[str]] = typer.Argument(None, help="store settings, e.g. store=clickhouse store.url=..."),
        config: Optional[Path] = config_opt,
        as_json: bool = typer.Option(False, "--json", help="print JSON (one object per series) instead of a table"),
    ) -> None:
        """What is stored: exchange, symbol, timeframe, first, last, rows, gaps (and funding), and
        imports that were interrupted."""
        cfg = load_run_config(_settings(settings or []), plugins.registry, config_path=config)
        _, store = open_store(cfg, plugins)
        _need(store, "series")
        try:
            series = store.series()
            funding = store.funding_series() if callable(getattr(store, "funding_series", None)) else []
            unfinished = unfinished_imports(data_dir() / "imports", _where(store))
            tapes = store.trade_series() if callable(getattr(store, "trade_series", None)) else []
        finally:
            store.close()
        rows = [
            {
                "exchange": s.exchange,
                "symbol": s.symbol,
                "timeframe": s.timeframe,
                "price": getattr(s, "price", "trade"),
                "first": _iso(s.first_ms),
                "last": _iso(s.last_ms),
                "rows": s.rows,
                "gaps": s.gaps,
                "incomplete": _incomplete(unfinished, s.exchange, s.symbol, _series_key(s.timeframe, getattr(s, "price", "trade"))),
            }
            for s in series
        ]
        rows += [
            {
                "exchange": exchange,
                "symbol": symbol,
                "timeframe": "funding",
                "price": None,
                "first": _iso(first),
                "last": _iso(last),
                "rows": n,
                "gaps": None,
                "incomplete": None,
            }
            for exchange, symbol, first, last, n in funding
        ]
        rows += [
            {
                "exchange": exchange,
                "symbol": symbol,
                "timeframe": kind_,
                "price": None,
                "first": _iso(first),
                "last": _iso(last),
                "rows": n,
                "gaps": None,
                "incomplete": None,
            }
            for exchange, symbol, kind_, first, last, n in tapes
        ]
        if as_json:
            typer.echo(json.dumps(rows))
            return
        if not rows:
            typer.echo("the store is empty; load bars with quant data fetch or quant data import")
            return
        table = Table("exchange", "symbol", "timeframe", "first (UTC)", "last (UTC)", "rows", "gaps")
        for row in rows:
            timeframe = row["timeframe"] if row["price"] in ("trade", None) else f"{row['timeframe']} {row['price']}"
            table.add_row(
                row["exchange"],
                row["symbol"],
                timeframe,
                row["first"][:16].replace("T", " "),
                row["last"][:16].replace("T", " "),
                f"{row['rows']:,}",
                "" if row["gaps"] is None else str(row["gaps"]),
            )
        print_table(out, table)
        for row in rows:
            if row["incomplete"]:
                typer.echo(f"incomplete: {row['exchange']} {row['symbol']} {row['timeframe']}: {row['incomplete']}")

    @data.command("gaps")
    def gaps(
        settings: Optional[list[str]] = typer.Argument(None, help="exchange=binance symbol=BTC/USDT timeframe=1m [start=... end=...]"),
        config: Optional[Path] = config_opt,
    ) -> None:
        """Each missing range of a stored series, and why (not fetched yet, or the exchange has none).

        kind=trades: holes in a tape's trade ids (exchanges whose ids are contiguous, like Binance)."""
        from .trades_data import split_kind, trade_gaps

        kind, pairs = split_kind(_settings(settings or []))
        cfg = load_run_config(pairs, plugins.registry, config_path=config)
        if kind == "trades":
            trade_gaps(cfg, plugins)
            return
        _, store = open_store(cfg, plugins)
        _need(store, "gaps")
        ex, sym, tf = cfg.exchange.name, cfg.symbol, cfg.timeframe
        try:
            found = store.gaps(ex, sym, tf, _ms(cfg.data.start), _ms(cfg.data.end))
            span = store.first_last(ex, sym, tf)
            incomplete = _incomplete(unfinished_imports(data_dir() / "imports", _where(store)), ex, sym, _series_key(tf, cfg.data.price))
        finally:
            store.close()
        if incomplete:
            typer.echo(f"incomplete: {ex} {sym} {tf}: {incomplete}")
        if span is None and not found:
            typer.echo(f"nothing stored for {ex} {sym} {tf}")
            return
        if not found:
            typer.echo(
                f"{ex} {sym} {tf}: no gaps between {_when(span[0])} and {_when(span[1])} UTC"
                + (" among the bars imported so far" if incomplete else "")
            )
            return
        table = Table("from (UTC)", "to (UTC, exclusive)", "bars", "why")
        for g in found:
            table.add_row(_when(g.start_ms), _when(g.end_ms), f"{g.bars:,}", g.reason)
        print_table(out, table)

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
        typer.echo(f"{path}: {len(bars):,} {_what(cfg, ex)} bars, {_when(bars.start_ms)} .. {_when(bars.end_ms)} UTC")


def fetch_once(cfg: RunConfig, plugins: PluginManager, *, funding: bool = True) -> None:
    """One ``quant data fetch``: resume from the store, page through the exchange, report."""
    runtime, store = open_store(cfg, plugins)
    _need(store, "write_bars", "first_last", "gaps", "record_page", "short_pages")
    source = open_source(cfg, plugins, runtime)
    ex, sym, tf = source.exchange_id, cfg.symbol, cfg.timeframe
    try:
        start, end = start_of(cfg, store, ex, "data fetch"), _ms(cfg.data.end)
        total = source.total_ms(store, sym, tf, start, end)
        with progress_bar() as bar:
            task = bar.add_task(f"{ex} {sym} {tf}", total=max(total, 1), rows=0)
            report = source.fetch_bars(
                store, sym, tf, start, end, price=cfg.data.price, progress=lambda ms, written: bar.update(task, advance=ms, rows=written)
            )
            bar.update(task, completed=max(total, 1), rows=report.written)
        funding_rows = 0
        if funding and source.is_perpetual(sym):
            funding_rows = source.fetch_funding(store, sym, start, end).funding
    finally:
        source.close()
        store.close()
    typer.echo(
        f"{_what(cfg, ex)}: {report.written:,} bars written, {report.requests} requests, {report.retries} retries"
        + (f", {funding_rows:,} funding rates" if funding_rows else "")
    )
    for a, b in report.empty:
        typer.echo(
            f"  the exchange has no bars for {_when(a)} .. {_when(b)} UTC ({(b - a) // timeframe_ms(tf):,} bars); "
            "recorded, see quant data gaps"
        )


def run_schedule(cfg: RunConfig, plugins: PluginManager, *, every: str, runs: int | None, funding: bool) -> None:
    """Fetch now, then every ``every`` until ``runs`` fetches are done or SIGINT/SIGTERM."""
    import signal
    import threading

    import schedule

    try:
        seconds = parse_duration(every).total_seconds()
    except ValueError as exc:
        raise ConfigError(f"--every: {exc}") from None
    if seconds < 1:
        raise ConfigError(f"--every: {every!r} is shorter than a second")
    stop = threading.Event()
    done = 0

    def job() -> None:
        nonlocal done
        done += 1
        typer.echo(f"schedule: fetch {done}{f'/{runs}' if runs else ''} at {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        try:
            fetch_once(cfg, plugins, funding=funding)
        except QuantError as exc:  # keep the schedule alive; the next tick resumes
            typer.echo(f"schedule: fetch {done} failed: {exc}", err=True)
        if runs is not None and done >= runs:
            stop.set()

    def on_signal(signum, _frame) -> None:
        typer.echo(f"schedule: {signal.Signals(signum).name}, stopping after the current fetch", err=True)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    scheduler = schedule.Scheduler()
    scheduler.every(seconds).seconds.do(job)
    job()
    while not stop.is_set():
        scheduler.run_pending()
        stop.wait(min(1.0, max(scheduler.idle_seconds or 0.0, 0.05)))
    typer.echo(f"schedule: {done} fetches")


def _save_rejected(read) -> Path:
    """Keep every rejected row, with where it was and why, under the user data dir."""
    folder = data_dir() / "rejected"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = folder / f"{read.path.name}.{stamp}.{int(time.time() * 1000) % 1000:03d}.csv"
    columns = list(read.bad[0].raw)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["where", "problem", *columns])
        for bad in read.bad:
            writer.writerow([bad.where, bad.problem, *(bad.raw.get(c) for c in columns)])
    return path

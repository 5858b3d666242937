"""``quant data import|fetch|ls ... kind=trades|quotes``: trade prints and best bid/offer.

``kind=`` picks what a data command handles: ``bars`` (default), ``trades`` or ``quotes``. It is a
command setting, not part of the run config, so :func:`split_kind` takes it off the settings before
they are parsed. ``data import`` also recognises trade and bookTicker files by name (Binance's
``BTCUSDT-aggTrades-2024-01.zip``, ``...-trades-...``, ``...-bookTicker-...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..errors import ConfigError, DataError

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..plugins import PluginManager

#: What ``kind=`` may say (the CLI's words; the files' kinds are core.trade_files.KINDS).
KIND_WORDS = ("bars", "trades", "quotes")

IMPORT_CHUNK = 1_000_000


def split_kind(pairs: list[str]) -> tuple[str | None, list[str]]:
    """``kind=trades`` out of the settings: (kind or None, the other settings)."""
    kind, rest = None, []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if sep and key == "kind":
            if value not in KIND_WORDS:
                raise ConfigError(f"kind: {value!r} is not one of bars, trades, quotes")
            kind = value
        else:
            rest.append(pair)
    return kind, rest


def _plain_prints(cfg: RunConfig, kind: str) -> None:
    """Trade prints and quotes have no price kind: ``price=mark`` with them is an error, not ignored."""
    if cfg.data.price != "trade":
        raise ConfigError(f"kind={kind}: price={cfg.data.price} applies to klines only; drop one of them")


def import_kind(kind: str | None, paths: list[Path]) -> str:
    """What ``data import`` should read: the ``kind=`` given, else what the file names say."""
    from ..trade_files import detect_kind

    if kind is not None:
        return kind
    found = {detect_kind(p) for p in paths}
    if found == {None}:
        return "bars"
    if None in found or len(found) > 1:
        raise ConfigError(
            "data import: these files mix bars, trades and quotes; import each kind on its own",
            hint="quant data import FILE... kind=trades",
        )
    return found.pop()


def import_trades(paths: list[Path], kind: str, cfg: RunConfig, plugins: PluginManager, *, skip_bad: bool) -> None:
    """Check every file, then write trades or quotes into the store (as bar imports do)."""
    from ..trade_files import read_trade_file
    from .data_cmd import SHOW_BAD, _need, _save_rejected, err, open_store, progress_bar

    _plain_prints(cfg, kind)
    ex, sym = cfg.exchange.name, cfg.symbol
    reads = [read_trade_file(p, kind) for p in paths]
    wrong = [r for r in reads if r.kind != kind]
    if wrong:
        raise DataError(f"{wrong[0].path}: holds {wrong[0].kind}, not {kind}")
    for r in reads:
        for bad in r.bad[:SHOW_BAD]:
            err.print(f"{r.path}: {bad.where}: {bad.problem}", highlight=False, soft_wrap=True)
        if len(r.bad) > SHOW_BAD:
            err.print(f"{r.path}: ... {len(r.bad) - SHOW_BAD} more bad row(s)", highlight=False)
    refused = [r for r in reads if r.bad and not skip_bad]
    if refused:
        first = refused[0]
        raise DataError(
            f"{first.path}: {len(first.bad)} bad row(s) of {first.rows} (first: {first.bad[0].where}, {first.bad[0].problem}); "
            "nothing imported" + (f" ({len(refused)} file(s) refused)" if len(refused) > 1 else ""),
            hint="fix the rows, or pass --skip-bad to import the good rows (the bad ones are saved to a file)",
        )
    _, store = open_store(cfg, plugins)
    write = "write_trades" if kind == "trades" else "write_quotes"
    _need(store, write)
    try:
        with progress_bar() as bar:
            for r in reads:
                task = bar.add_task(r.path.name, total=max(len(r.data), 1), rows=0)
                done = 0
                for lo in range(0, len(r.data), IMPORT_CHUNK):
                    done += getattr(store, write)(ex, sym, r.data[lo : lo + IMPORT_CHUNK])
                    bar.update(task, completed=done, rows=done)
                bar.update(task, completed=max(len(r.data), 1))
    finally:
        store.close()
    for r in reads:
        line = f"{r.path}: {len(r.data):,} {kind} imported into {ex} {sym}"
        if r.bad:
            line += f"; {len(r.bad)} bad row(s) skipped, saved to {_save_rejected(r)}"
        typer.echo(line)


def fetch_trades_once(cfg: RunConfig, plugins: PluginManager) -> None:
    """``quant data fetch ... kind=trades``: page the exchange's trades into the store, resuming."""
    from ..data import ms_to_iso
    from .data_cmd import _ms, _need, open_source, open_store, progress_bar

    _plain_prints(cfg, "trades")
    runtime, store = open_store(cfg, plugins)
    _need(store, "write_trades", "trade_span")
    source = open_source(cfg, plugins, runtime)
    fetch = getattr(source, "fetch_trades", None)
    if not callable(fetch):
        store.close()
        raise ConfigError(f"exchange: the {cfg.exchange.name!r} data source cannot fetch trades")
    ex, sym = source.exchange_id, cfg.symbol
    try:
        span = store.trade_span(ex, sym)
        if cfg.data.start is None and span is None:
            raise ConfigError(
                f"data fetch: no {ex} {sym} trades stored yet, so say where to start",
                hint=f"quant data fetch exchange={ex} symbol={sym} kind=trades start=2024-08-08T23:54",
            )
        start = _ms(cfg.data.start) if cfg.data.start is not None else span[0]
        end = _ms(cfg.data.end)
        total = max((end if end is not None else source.now_ms()) - (span[1] if span and span[1] > start else start), 1)
        with progress_bar() as bar:
            task = bar.add_task(f"{ex} {sym} trades", total=total, rows=0)
            report = fetch(store, sym, start, end, progress=lambda ms, written: bar.update(task, advance=ms, rows=written))
            bar.update(task, completed=total, rows=report.written)
    finally:
        source.close()
        store.close()
    span_text = "" if report.first_ms is None else f", {ms_to_iso(report.first_ms)} .. {ms_to_iso(report.last_ms)} UTC"
    typer.echo(f"{ex} {sym} trades: {report.written:,} written, {report.requests} requests{span_text}")


def trade_gaps(cfg: RunConfig, plugins: PluginManager) -> None:
    """``quant data gaps ... kind=trades``: missing trade ids between stored prints."""
    from rich.table import Table

    from ..data import ms_to_iso
    from .data_cmd import _need, open_store, out

    _, store = open_store(cfg, plugins)
    _need(store, "trade_gaps", "trade_span")
    ex, sym = cfg.exchange.name, cfg.symbol
    try:
        span = store.trade_span(ex, sym)
        holes = store.trade_gaps(ex, sym) if span is not None else []
    finally:
        store.close()
    if span is None:
        typer.echo(f"no {ex} {sym} trades stored")
        return
    if not holes:
        typer.echo(f"{ex} {sym} trades: ids {span[3]} .. {span[4]} contiguous, {ms_to_iso(span[0])} .. {ms_to_iso(span[1])} UTC")
        return
    table = Table("first missing id", "last missing id", "ids", "after (UTC)", "before (UTC)")
    for lo, hi, before, after in holes:
        table.add_row(str(lo), str(hi), f"{hi - lo + 1:,}", ms_to_iso(before), ms_to_iso(after))
    out.print(table)


def collect_tape(kind: str, pairs: list[str], plugins: PluginManager, config_path: Path | None) -> None:
    """``quant collect ... kind=trades``: catch up over REST, then follow live prints until stopped."""
    import signal
    import threading

    from ..config import load_run_config
    from .data_cmd import _settings, open_source, open_store

    if kind == "quotes":
        raise ConfigError("collect: kind=quotes is not collected yet; import bookTicker files with quant data import kind=quotes")
    cfg = load_run_config(_settings(pairs), plugins.registry, config_path=config_path)
    _plain_prints(cfg, kind)
    runtime, store = open_store(cfg, plugins)
    source = open_source(cfg, plugins, runtime)
    collect_fn = getattr(source, "collect_trades", None)
    if not callable(collect_fn):
        store.close()
        raise ConfigError(f"exchange: the {cfg.exchange.name!r} data source cannot collect trades")
    ex, sym = source.exchange_id, cfg.symbol
    span = store.trade_span(ex, sym)
    if cfg.data.start is None and span is None:
        store.close()
        raise ConfigError(
            f"collect: no {ex} {sym} trades stored yet, so say where to start",
            hint=f"quant collect exchange={ex} symbol={sym} kind=trades start=2024-08-08",
        )
    start = int(cfg.data.start.timestamp() * 1000) if cfg.data.start is not None else span[0]
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        typer.echo(f"collect: {signal.Signals(signum).name}, stopping", err=True)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stats = collect_fn(store, sym, start, stop, on_event=lambda text: typer.echo(f"collect: {text}", err=True))
    finally:
        source.close()
        store.close()
    typer.echo(f"{ex} {sym} trades: {stats.rest:,} over REST, {stats.websocket:,} over websocket, {stats.reconnects} reconnects")

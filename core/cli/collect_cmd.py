"""``quant collect``: keep the store current from an exchange until stopped (SIGINT/SIGTERM)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ..plugins import PluginManager
from .data_cmd import _settings, load_run_config, open_source, open_store, start_of


def register(app: typer.Typer, plugins: PluginManager) -> None:
    @app.command("collect")
    def collect(
        settings: Optional[list[str]] = typer.Argument(None, help="exchange=binance symbol=BTC/USDT timeframe=1m [start=2024-01-01]"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file"),
    ) -> None:
        """Daemon: catch up over REST, then follow live klines (websocket via ccxt.pro, else REST polling).

        Stop it with Ctrl-C or SIGTERM: closed bars already seen are written first. After any
        downtime (even SIGKILL) the next start fetches the missing range before going live.
        kind=trades collects trade prints instead (websocket trades, REST catch-up after a drop)."""
        from .trades_data import collect_tape, split_kind

        kind, settings = split_kind(list(settings or []))
        if kind in ("trades", "quotes"):
            return collect_tape(kind, settings, plugins, config)

        cfg = load_run_config(_settings(settings or []), plugins.registry, config_path=config)
        if cfg.data.price != "trade":  # live mark klines are not followed: say so rather than store trade klines as marks
            raise ConfigError(
                f"collect: price={cfg.data.price} is not supported (it follows trade klines)",
                hint="keep mark klines current with quant data schedule --every 1h ... price=mark",
            )
        runtime, store = open_store(cfg, plugins)
        source = open_source(cfg, plugins, runtime)
        collect_fn = getattr(source, "collect", None)
        if not callable(collect_fn):
            raise ConfigError(f"exchange: the {cfg.exchange.name!r} data source cannot collect live data")
        ex, sym, tf = source.exchange_id, cfg.symbol, cfg.timeframe
        start = start_of(cfg, store, ex, "collect")
        stop = threading.Event()

        def on_signal(signum, _frame) -> None:
            typer.echo(f"collect: {signal.Signals(signum).name}, writing closed bars and stopping", err=True)
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            stats = collect_fn(store, sym, tf, start, stop, on_event=lambda text: typer.echo(f"collect: {text}", err=True))
        finally:
            source.close()
            store.close()
        typer.echo(f"{ex} {sym} {tf}: {stats.rest:,} bars over REST, {stats.websocket:,} over websocket, {stats.reconnects} reconnects")

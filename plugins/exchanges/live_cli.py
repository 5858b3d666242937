"""``quant status``, ``quant stop``, ``quant flatten``: talk to a running paper/live bot through its journal."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import typer

from btc_quant.core.paths import data_dir
from btc_quant.sdk import ConfigError, hookimpl

from .journal import Journal, journal_path


def _open(bot: str) -> Journal:
    path = journal_path(data_dir(), bot)
    if not path.exists():
        raise ConfigError(
            f"no bot named {bot!r}: {path} does not exist", hint="start one with quant run broker=paper (or live) broker.bot=NAME"
        )
    return Journal(path)


def _ms(ms) -> str:
    return "-" if not ms else datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _running(journal: Journal) -> int | None:
    from .driver import _alive

    pid = journal.get("pid")
    return pid if pid and _alive(pid) else None


def _position_text(pos: dict) -> str:
    """``q @ entry``; hedge mode: each side, ``LONG q @ entry, SHORT q @ entry``."""
    if pos.get("sides"):
        return ", ".join(f"{side} {p['quantity']:g} @ {p['entry_price']:.2f}" for side, p in pos["sides"].items())
    return f"{pos['quantity']:g} @ {pos['entry_price']:.2f}"


def status_text(state: dict, running: int | None) -> str:
    pos, margin = state["position"], state.get("margin") or {}
    lines = [
        f"bot {state['bot']} ({state['mode']}, {state['strategy']} on {state['exchange']} {state['symbol']}): "
        + (f"running, pid {running}" if running else "not running; last known state"),
        f"price {state['price']:.2f}  position {_position_text(pos)}  wallet {state['wallet_balance']:.2f}  equity {state['equity']:.2f}",
    ]
    if margin:
        liq = margin.get("liquidation_price")
        lines.append(
            f"margin {margin['mode']} x{margin['leverage']:g}: position margin {margin['position_margin']:.2f}, "
            f"maintenance {margin['maintenance_margin']:.2f}, available {margin['available']:.2f}, "
            f"liquidation price {'-' if not liq else f'{liq:.2f}'}"
        )
    virtual, live = state["open_orders_virtual"], state["open_orders_live"]
    lines.append(f"open orders: {len(virtual)} virtual (strategy), {len(live)} live (exchange)")
    live_ids = {o["client_id"] for o in live}
    for o in live:
        mark = "" if o["client_id"] in virtual else "  (not in the strategy's view)"
        lines.append(
            f"  {o['client_id']}  {o['side']} {o['qty']:g} @ {o['price'] if o['price'] is not None else 'market'}  {o['status']}{mark}"
        )
    for cid in virtual:
        if cid not in live_ids:
            lines.append(f"  {cid}  virtual only (in flight or awaiting reconcile)")
    lines.append(
        f"fills {state['fills']}, bars {state['bars']}, halted: {state['halted'] or 'no'}, "
        f"last reconcile {_ms(state.get('last_reconcile'))}, snapshot {time.time() - state['updated']:.0f}s old"
    )
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        bot: str = typer.Option("bot", "--bot", help="the bot's name (broker.bot); paper runs are named 'paper'"),
        as_json: bool = typer.Option(False, "--json", help="print the state as JSON"),
    ) -> None:
        """Positions, open orders (virtual vs live), balances, margin, liquidation price, last reconcile."""
        journal = _open(bot)
        state, running = journal.get("state"), _running(journal)
        if state is None:
            raise ConfigError(f"bot {bot!r} has not written its state yet", hint="wait a second after start-up")
        typer.echo(json.dumps({**state, "running": bool(running)}) if as_json else status_text(state, running))

    def _command(bot: str, command: str, wait: float) -> None:
        journal = _open(bot)
        pid = _running(journal)
        if pid is None:
            raise ConfigError(f"bot {bot!r} is not running")
        journal.set("command", command)
        deadline = time.time() + wait
        while time.time() < deadline and _running(journal):
            time.sleep(0.2)
        typer.echo(f"bot {bot}: {command} " + ("done" if not _running(journal) else f"requested (pid {pid} still running)"))

    @app.command("stop")
    def stop(bot: str = typer.Option("bot", "--bot"), wait: float = typer.Option(30.0, help="seconds to wait for the bot to exit")) -> None:
        """Stop placing orders and shut the bot down (its open orders stay on the exchange)."""
        _command(bot, "stop", wait)

    @app.command("flatten")
    def flatten(
        bot: str = typer.Option("bot", "--bot"), wait: float = typer.Option(60.0, help="seconds to wait for the bot to exit")
    ) -> None:
        """Cancel the bot's orders, close its position at market, then shut it down."""
        _command(bot, "flatten", wait)


@hookimpl
def quant_register_commands(cli):
    register(cli)

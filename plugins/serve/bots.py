"""What the dashboard shows of a paper or live bot, read from its journal ($QUANT_HOME/live/<bot>.db).

The bot writes a snapshot of its state to the journal every second (the heartbeat, see
``plugins/exchanges/driver.py``); everything here is computed from that snapshot, the journal's
fills and notes, and whether the bot's process is alive. Nothing is asked of the bot itself,
so a dashboard or a watchdog can never slow it down or stop it.

States: ``running``; ``stopping`` (a ``stop``/``flatten`` was asked and the process still runs);
``halted`` (its kill switch is engaged: it places no new orders); ``dead`` (its process is gone
without a clean exit, or its heartbeat is older than ``stale_s``); ``stopped`` (it exited cleanly);
``starting`` (no snapshot yet).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

#: A heartbeat older than this (seconds) means the bot is dead even if its pid still exists (hung).
STALE_S = 15.0
STOP_REASONS = ("quant stop", "quant flatten")


def live_dir(home: Path) -> Path:
    return Path(home) / "live"


def bot_names(home: Path) -> list[str]:
    folder = live_dir(home)
    return sorted(p.stem for p in folder.glob("*.db")) if folder.is_dir() else []


def pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


class JournalReader:
    """Read-only access to a bot's journal (SQLite opened with ``mode=ro``: never writes)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)

    def close(self) -> None:
        self.db.close()

    def meta(self, key: str, default: Any = None) -> Any:
        try:
            row = self.db.execute("select value from meta where key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:  # tables not created yet
            return default
        return default if row is None else json.loads(row[0])

    def notes(self, limit: int) -> list[dict[str, Any]]:
        try:
            rows = self.db.execute("select rowid, ts, kind, message from log order by rowid desc limit ?", (limit,)).fetchall()
        except sqlite3.OperationalError:
            return []
        return [{"id": r[0], "ts": r[1], "kind": r[2], "message": r[3]} for r in rows[::-1]]

    def fills(self, limit: int, after_rowid: int = 0) -> list[dict[str, Any]]:
        try:
            rows = self.db.execute(
                "select rowid, trade_id, client_id, side, price, quantity, fee, ts_ms, is_maker from fills "
                "where rowid > ? order by rowid desc limit ?",
                (after_rowid, limit),
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        cols = ("id", "trade_id", "client_id", "side", "price", "quantity", "fee", "ts_ms", "is_maker")
        return [dict(zip(cols, r)) for r in rows[::-1]]


def bot_status(state: dict | None, pid: Any, command: Any, now: float, stale_s: float = STALE_S) -> str:
    """One word for the bot's state (see module docstring)."""
    if state is None:
        return "starting" if pid_alive(pid) else "stopped"
    if not pid_alive(state.get("pid")):
        # the driver clears ``pid`` on a clean exit; a pid left behind means it died
        return "dead" if pid else "stopped"
    if now - float(state.get("updated") or 0) > stale_s:
        return "dead"
    if command or state.get("halted") in STOP_REASONS:
        return "stopping"
    if state.get("halted"):
        return "halted"
    return "running"


def order_rows(state: dict) -> list[dict[str, Any]]:
    """The strategy's open orders next to the exchange's, each marked:

    ``live`` (the strategy wants it and the exchange has it), ``waiting`` (the strategy wants it and
    its request is under way), ``missing`` (the strategy wants it, the exchange does not have it and
    no request is under way: the next reconciliation or sync must put it back), ``foreign`` (open
    on the exchange under the bot's prefix but not in the strategy's view).
    """
    virtual = list(state.get("open_orders_virtual") or [])
    live = {o["client_id"]: o for o in state.get("open_orders_live") or []}
    in_flight = set(state.get("in_flight") or [])
    rows = []
    for cid in virtual:
        order = live.get(cid)
        if order is not None:
            rows.append({**order, "status": "live", "exchange_status": order.get("status")})
        else:
            waiting = f"place {cid}" in in_flight
            rows.append(
                {
                    "client_id": cid,
                    "side": None,
                    "qty": None,
                    "price": None,
                    "status": "waiting" if waiting else "missing",
                    "exchange_status": None,
                }
            )
    for cid, order in live.items():
        if cid not in virtual:
            rows.append({**order, "status": "foreign", "exchange_status": order.get("status")})
    return rows


def bot_view(home: Path, bot: str, now: float | None = None, *, events: int = 30, stale_s: float = STALE_S) -> dict[str, Any] | None:
    """Everything the dashboard shows of one bot (a plain dict of explicit fields: no config,
    no keys), or None when there is no such journal."""
    path = live_dir(home) / f"{bot}.db"
    if not path.exists():
        return None
    now = time.time() if now is None else now
    reader = JournalReader(path)
    try:
        state, pid, command, run = reader.meta("state"), reader.meta("pid"), reader.meta("command"), reader.meta("run") or {}
        notes, fills = reader.notes(events), reader.fills(events)
    finally:
        reader.close()
    status = bot_status(state, pid, command, now, stale_s)
    view: dict[str, Any] = {
        "bot": bot,
        "status": status,
        "mode": run.get("mode"),
        "exchange": run.get("exchange"),
        "symbol": run.get("symbol"),
        "strategy": run.get("strategy"),
        "testnet": run.get("testnet"),
        "started": run.get("started"),
        "pending_command": command,
        "events": notes,
        "fills": fills,
    }
    if state is None:
        return view
    pos = state.get("position") or {}
    margin = state.get("margin") or {}
    price, equity = state.get("price"), state.get("equity")
    liq = margin.get("liquidation_price")
    distance = abs(price - liq) / price if price and liq else None
    start, day = state.get("equity_start"), state.get("equity_day_start")
    rows = order_rows(state)
    view.update(
        {
            "heartbeat_age_s": now - float(state.get("updated") or now),
            "market_age_s": None if state.get("market_s") is None else now - state["market_s"],
            "stream_age_s": None if state.get("stream_s") is None else now - state["stream_s"],
            "price": price,
            "position": {"quantity": pos.get("quantity"), "entry_price": pos.get("entry_price"), "sides": pos.get("sides")},
            "wallet_balance": state.get("wallet_balance"),
            "equity": equity,
            "available": margin.get("available"),
            "margin": {k: margin.get(k) for k in ("mode", "leverage", "position_margin", "maintenance_margin")} if margin else None,
            "liquidation_price": liq,
            "liquidation_distance": distance,
            "pnl_since_start": None if start is None or equity is None else equity - start,
            "pnl_today": None if day is None or equity is None else equity - day,
            "orders": rows,
            "orders_wanted": len(state.get("open_orders_virtual") or []),
            "orders_live": sum(1 for r in rows if r["status"] == "live"),
            "orders_missing": sum(1 for r in rows if r["status"] == "missing"),
            "bars": state.get("bars"),
            "fill_count": state.get("fills"),
            "halted": state.get("halted"),
            "risk_refusals": state.get("risk_refusals"),
            "last_risk_refusal": state.get("last_risk_refusal"),
            "last_reconcile_ms": state.get("last_reconcile"),
            "last_settled_reconcile_ms": state.get("last_settled_reconcile"),
            "requests_in_flight": state.get("requests_in_flight"),
        }
    )
    return view

"""The live bot's journal: one SQLite file (WAL) per bot under ``$QUANT_HOME/live/<bot>.db``.

It holds what a restart needs and what ``quant status`` shows:

* ``orders``: every order the bot sent (client id, side, quantity, price, flags, last known
  status and cumulative filled quantity). A restart reloads the open ones and asks the exchange
  for their fate; the exchange is the truth, the journal only remembers what was asked.
* ``fills``: every fill found on the exchange, keyed by ``trade_id``, so a fill found again (a
  websocket replay, a REST poll, a restart: the same order's cumulative filled quantity) is never
  handed to the strategy twice; ``undelivered``: the fills of those the strategy has not handled
  yet (written in the same transaction, removed once it has), handed to it after a restart, so
  a bot killed between the two does not lose one.
* ``meta``: the bot's pid, mode, exchange, symbol, the last exchange snapshot (JSON: position,
  balances, margin, open orders virtual vs live, last reconcile) and the command channel used by
  ``quant stop`` / ``quant flatten`` (a row the running bot polls).
* ``log``: disagreements between journal and exchange found by reconciliation.

WAL mode lets ``quant status`` read while the bot writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from btc_quant.sdk import Fill, Order, OrderStatus, OrderType, Side

SCHEMA = """
create table if not exists orders (
    client_id text primary key, symbol text, side text, type text, quantity real, price real,
    post_only integer, reduce_only integer, status text, filled_qty real, avg_fill_price real,
    exchange_id text, tag text, created_ms integer, updated_ms integer
);
create table if not exists fills (
    trade_id text primary key, client_id text, side text, price real, quantity real, fee real,
    ts_ms integer, is_maker integer
);
create table if not exists undelivered (trade_id text primary key);
create table if not exists meta (key text primary key, value text);
create table if not exists log (ts real, kind text, message text);
"""


def journal_path(home: Path, bot: str) -> Path:
    return Path(home) / "live" / f"{bot}.db"


class Journal:
    """A bot's SQLite journal (see module docstring). Not shared between threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma synchronous=normal")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- orders ---------------------------------------------------------------------------
    def save_order(self, order: Order) -> None:
        self.db.execute(
            "insert or replace into orders values (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (order.client_id, order.symbol, order.side.value, order.type.value, order.quantity, order.price,
             int(order.post_only), int(order.reduce_only), order.status.value, order.filled_qty,
             order.avg_fill_price, order.exchange_id, order.tag, order.created_ms, order.updated_ms),
        )

    def orders(self, open_only: bool = False) -> list[Order]:
        sql = "select * from orders"
        if open_only:
            sql += " where status in ('pending', 'new', 'partially_filled')"
        rows = self.db.execute(sql + " order by created_ms, rowid").fetchall()
        return [
            Order(client_id=r[0], symbol=r[1], side=Side(r[2]), type=OrderType(r[3]), quantity=r[4], price=r[5],
                  post_only=bool(r[6]), reduce_only=bool(r[7]), status=OrderStatus(r[8]), filled_qty=r[9],
                  avg_fill_price=r[10], exchange_id=r[11], tag=r[12], created_ms=r[13], updated_ms=r[14])
            for r in rows
        ]

    # --- fills ----------------------------------------------------------------------------
    def record_fill(self, fill: Fill, order: Order) -> bool:
        """Store a fill and its order's new state atomically; False if the fill was already delivered."""
        self.db.execute("begin immediate")
        try:
            cur = self.db.execute(
                "insert or ignore into fills values (?,?,?,?,?,?,?,?)",
                (fill.trade_id, fill.client_id, fill.side.value, fill.price, fill.quantity, fill.fee, fill.ts_ms, int(fill.is_maker)),
            )
            if cur.rowcount:
                self.save_order(order)
                self.db.execute("insert or ignore into undelivered values (?)", (fill.trade_id,))
            self.db.execute("commit")
        except BaseException:
            self.db.execute("rollback")
            raise
        return bool(cur.rowcount)

    def delivered(self, trade_id: str) -> None:
        """The strategy (and every observer) has handled this fill."""
        self.db.execute("delete from undelivered where trade_id = ?", (trade_id,))

    def undelivered(self) -> list[dict[str, Any]]:
        """Fills recorded but not yet handled by the strategy (the bot died in between), oldest first."""
        cols = ("trade_id", "client_id", "side", "price", "quantity", "fee", "ts_ms", "is_maker")
        rows = self.db.execute("select f.* from fills f join undelivered u on u.trade_id = f.trade_id order by f.rowid")
        return [dict(zip(cols, r)) for r in rows]

    def fees_booked(self, client_id: str) -> float:
        """The fees of the fills of one order delivered so far."""
        return float(self.db.execute("select coalesce(sum(fee), 0) from fills where client_id = ?", (client_id,)).fetchone()[0])

    def position_sum(self) -> float:
        """The signed sum of every fill delivered (the position the bot's own orders built)."""
        row = self.db.execute("select coalesce(sum(case when side = 'buy' then quantity else -quantity end), 0) from fills").fetchone()
        return float(row[0])

    def fills(self) -> list[dict[str, Any]]:
        cols = ("trade_id", "client_id", "side", "price", "quantity", "fee", "ts_ms", "is_maker")
        return [dict(zip(cols, r)) for r in self.db.execute("select * from fills order by rowid")]

    # --- meta, snapshot, commands ----------------------------------------------------------
    def set(self, key: str, value: Any) -> None:
        self.db.execute("insert or replace into meta values (?, ?)", (key, json.dumps(value)))

    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("select value from meta where key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def take_command(self) -> str | None:
        """The pending ``quant stop``/``quant flatten`` command, removed as it is read."""
        self.db.execute("begin immediate")
        row = self.db.execute("select value from meta where key = 'command'").fetchone()
        if row is not None:
            self.db.execute("delete from meta where key = 'command'")
        self.db.execute("commit")
        return None if row is None else json.loads(row[0])

    def note(self, kind: str, message: str) -> None:
        self.db.execute("insert into log values (?, ?, ?)", (time.time(), kind, message))

    def notes(self, limit: int = 20) -> list[tuple[float, str, str]]:
        return self.db.execute("select * from log order by rowid desc limit ?", (limit,)).fetchall()[::-1]

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
* ``sent``: per order, the wall-clock time (ms) until which a request placing it may still be
  executed by the exchange (its ``timestamp + recvWindow``, plus the clock uncertainty), written
  before each request leaves: until then a look-up that does not find the order proves nothing,
  also for the next life after a kill; and whether the bot ended the order by inference (a
  look-up found nothing) rather than on the exchange's word.
* ``meta``: the bot's pid, mode, exchange, symbol, the last exchange snapshot (JSON: position,
  balances, margin, open orders virtual vs live, last reconcile) and the command channel used by
  ``quant stop`` / ``quant flatten`` (a row the running bot polls).
* ``log``: disagreements between journal and exchange found by reconciliation.

WAL mode lets ``quant status`` read while the bot writes.

:class:`BotLock` is what makes a bot name and a client-id prefix one bot's: an exclusive
``flock`` on ``$QUANT_HOME/live/<bot>.lock`` (taken before the journal is opened and before any
network call, held until the process ends, released by the kernel even after SIGKILL) plus one
lease per client-id prefix and account (``live/leases/<account>-<prefix>.lock``), so a second bot
with the same name, or one claiming a prefix another bot on the same account trades under, is
refused at once. The journal remembers the account it belongs to (a fingerprint of the exchange
and API key, never the key) and refuses to serve another.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from btc_quant.sdk import ConfigError, Fill, Order, OrderStatus, OrderType, PositionSide, Side

SCHEMA = """
create table if not exists orders (
    client_id text primary key, symbol text, side text, type text, quantity real, price real,
    post_only integer, reduce_only integer, status text, filled_qty real, avg_fill_price real,
    exchange_id text, tag text, created_ms integer, updated_ms integer, position_side text not null default 'BOTH'
);
create table if not exists fills (
    trade_id text primary key, client_id text, side text, price real, quantity real, fee real,
    ts_ms integer, is_maker integer
);
create table if not exists undelivered (trade_id text primary key);
create table if not exists sent (client_id text primary key, unknown_until_ms integer not null default 0, inferred integer not null default 0);
create table if not exists meta (key text primary key, value text);
create table if not exists log (ts real, kind text, message text);
create table if not exists funding (id text primary key, ts_ms integer, symbol text, amount real);
"""


def journal_path(home: Path, bot: str) -> Path:
    return Path(home) / "live" / f"{bot}.db"


def account_fingerprint(exchange_id: str, api_key: str | None) -> str:
    """A short stable name for one exchange account (a hash: the key itself never leaves memory)."""
    return hashlib.sha256(f"{exchange_id}\0{api_key or ''}".encode()).hexdigest()[:12]


class BotLock:
    """The bot's exclusive lock and its client-id prefix leases (see module docstring).

    ``BotLock(home, bot, account, prefixes)`` raises :class:`ConfigError` (one line, naming the
    holder's pid when it can) if another process holds the bot's lock or a lease of one of the
    prefixes on this account. Non-blocking: a second bot is refused at once, not queued."""

    def __init__(self, home: Path, bot: str, account: str, prefixes: tuple[str, ...] = ()) -> None:
        self._files: list[int] = []
        live = Path(home) / "live"
        try:
            self._take(live / f"{bot}.lock", f"bot {bot!r} is already running", "quant stop it first, or pick another broker.bot")
            for prefix in prefixes:
                name = re.sub(r"[^A-Za-z0-9_-]", lambda m: f"%{ord(m.group()):02x}", prefix)
                self._take(
                    live / "leases" / f"{account}-{name}.lock",
                    f"client-id prefix {prefix!r} is leased by another running bot on this account",
                    "give each bot on one account its own broker.bot (and strategy.strategy_id)",
                )
        except BaseException:
            self.release()
            raise

    def _take(self, path: Path, refusal: str, hint: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"{refusal}{f' (pid {holder})' if holder else ''}", hint=hint) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._files.append(fd)

    def release(self) -> None:
        for fd in self._files:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._files = []


class Journal:
    """A bot's SQLite journal (see module docstring). Not shared between threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma synchronous=normal")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("pragma table_info(orders)")}
        if "position_side" not in columns:  # a journal written before hedge mode: every order was one-way
            self.db.execute("alter table orders add column position_side text not null default 'BOTH'")

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # --- orders ---------------------------------------------------------------------------
    def save_order(self, order: Order) -> None:
        self.db.execute(
            "insert or replace into orders values (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                order.client_id,
                order.symbol,
                order.side.value,
                order.type.value,
                order.quantity,
                order.price,
                int(order.post_only),
                int(order.reduce_only),
                order.status.value,
                order.filled_qty,
                order.avg_fill_price,
                order.exchange_id,
                order.tag,
                order.created_ms,
                order.updated_ms,
                order.position_side.value,
            ),
        )

    def orders(self, open_only: bool = False) -> list[Order]:
        where = "where status in ('pending', 'new', 'partially_filled')" if open_only else ""
        return self._rows(f"{where} order by created_ms, rowid", ())

    def order(self, client_id: str) -> Order | None:
        """The journal's last record of one order (None if the bot never sent it)."""
        return next(iter(self._rows("where client_id = ?", (client_id,))), None)

    def _rows(self, where: str, args: tuple) -> list[Order]:
        rows = self.db.execute(f"select * from orders {where}", args).fetchall()
        return [
            Order(
                client_id=r[0],
                symbol=r[1],
                side=Side(r[2]),
                type=OrderType(r[3]),
                quantity=r[4],
                price=r[5],
                post_only=bool(r[6]),
                reduce_only=bool(r[7]),
                status=OrderStatus(r[8]),
                filled_qty=r[9],
                avg_fill_price=r[10],
                exchange_id=r[11],
                tag=r[12],
                created_ms=r[13],
                updated_ms=r[14],
                position_side=PositionSide(r[15] or "BOTH"),
            )
            for r in rows
        ]

    def set_unknown_until(self, client_id: str, until_ms: int) -> None:
        """Until ``until_ms`` (wall clock) a request placing ``client_id`` may still execute."""
        self.db.execute(
            "insert into sent (client_id, unknown_until_ms) values (?, ?) "
            "on conflict (client_id) do update set unknown_until_ms = excluded.unknown_until_ms",
            (client_id, int(until_ms)),
        )

    def unknown_until(self) -> dict[str, int]:
        return dict(self.db.execute("select client_id, unknown_until_ms from sent"))

    def mark_inferred(self, client_id: str) -> None:
        """The bot ended this order because a look-up did not find it (not on the exchange's word)."""
        self.db.execute(
            "insert into sent (client_id, inferred) values (?, 1) on conflict (client_id) do update set inferred = 1", (client_id,)
        )

    def inferred(self, client_id: str) -> bool:
        row = self.db.execute("select inferred from sent where client_id = ?", (client_id,)).fetchone()
        return bool(row and row[0])

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

    def position_sum(self, position_side: PositionSide | str | None = None) -> float:
        """The signed sum of every fill delivered (the position the bot's own orders built); with
        ``position_side`` (hedge mode: LONG or SHORT), of the fills of that side's orders only."""
        signed = "coalesce(sum(case when f.side = 'buy' then f.quantity else -f.quantity end), 0)"
        if position_side is None:
            return float(self.db.execute(f"select {signed} from fills f").fetchone()[0])
        row = self.db.execute(
            f"select {signed} from fills f join orders o on o.client_id = f.client_id where o.position_side = ?",
            (PositionSide(position_side).value,),
        ).fetchone()
        return float(row[0])

    def fills(self) -> list[dict[str, Any]]:
        cols = ("trade_id", "client_id", "side", "price", "quantity", "fee", "ts_ms", "is_maker")
        return [dict(zip(cols, r)) for r in self.db.execute("select * from fills order by rowid")]

    def record_funding(self, rows: list[dict[str, Any]]) -> int:
        """Store the account's funding payments (ccxt funding-history rows: ``id``, ``timestamp``,
        ``symbol``, ``amount``, > 0 received); the number that were new."""
        new = 0
        for row in rows:
            cur = self.db.execute(
                "insert or ignore into funding values (?,?,?,?)",
                (str(row["id"]), int(row["timestamp"]), row.get("symbol"), float(row["amount"])),
            )
            new += cur.rowcount
        return new

    def last_funding_ms(self) -> int | None:
        """The time of the newest funding payment journalled, if any."""
        return self.db.execute("select max(ts_ms) from funding").fetchone()[0]

    def clear_trading(self) -> None:
        """Forget every order and fill (a paper bot's new run: it starts flat with nothing open)."""
        self.db.execute("begin immediate")
        for table in ("orders", "fills", "undelivered", "sent", "funding"):
            self.db.execute(f"delete from {table}")
        self.db.execute("commit")

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

"""Shared pieces of the dashboard tests: a bot journal written the way the live driver writes it,
a webhook receiver on 127.0.0.1, saved runs, and ``quant serve`` as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from btc_quant.plugins.exchanges.journal import Journal, journal_path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_bot(home: Path, bot: str, *, pid: int | None, **state) -> None:
    """A journal with the driver's ``run`` and ``state`` records (``state`` fields override)."""
    now = time.time()
    snapshot = {
        "bot": bot,
        "mode": "live",
        "pid": pid,
        "updated": now,
        "market_s": now,
        "stream_s": now,
        "equity_start": 10_000.0,
        "equity_day_start": 10_050.0,
        "exchange": "binanceusdm",
        "symbol": "BTC/USDT:USDT",
        "strategy": "grid_probe",
        "price": 40_000.0,
        "position": {"quantity": 0.003, "entry_price": 39_990.0},
        "wallet_balance": 10_080.0,
        "equity": 10_100.0,
        "margin": {
            "mode": "isolated",
            "leverage": 10.0,
            "position_margin": 12.0,
            "maintenance_margin": 0.5,
            "available": 9_990.0,
            "liquidation_price": 36_100.0,
        },
        "open_orders_virtual": ["b-1-1", "b-1-2"],
        "open_orders_live": [{"client_id": "b-1-1", "side": "buy", "qty": 0.003, "price": 39_900.0, "status": "new"}],
        "bars": 12,
        "fills": 3,
        "halted": None,
        "last_reconcile": int(now * 1000),
        "last_settled_reconcile": int(now * 1000),
        "requests_in_flight": 0,
        "in_flight": [],
        "stats": {},
    }
    snapshot.update(state)
    journal = Journal(journal_path(home, bot))
    journal.set("pid", pid)
    journal.set(
        "run",
        {
            "mode": "live",
            "exchange": "binanceusdm",
            "symbol": "BTC/USDT:USDT",
            "strategy": "grid_probe",
            "testnet": True,
            "started": now - 60,
        },
    )
    journal.set("state", snapshot)
    journal.close()


class WebhookReceiver:
    """A JSON webhook on 127.0.0.1 (what Apprise's ``json://`` posts to); ``posts`` in arrival order."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    receiver.posts.append({"path": self.path, "at": time.time(), **json.loads(body or b"{}")})
                    receiver.arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, predicate, timeout: float) -> list[dict]:
        """Waits until ``predicate(posts)`` is true; returns the posts (the test asserts on them)."""
        deadline = time.time() + timeout
        with self.arrived:
            while not predicate(self.posts) and time.time() < deadline:
                self.arrived.wait(max(0.0, deadline - time.time()))
            return list(self.posts)


class ServeProcess:
    """``quant serve --port 0`` in a subprocess; ``url`` and ``token`` once it prints its address."""

    def __init__(self, home: Path, *args: str, cwd: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANT_")}
        env["QUANT_HOME"] = str(home)
        self.log = open(Path(home) / "serve.log", "w")
        exe = Path(sys.executable).with_name("quant")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--port", "0", *args], stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=cwd or home
        )
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise AssertionError("quant serve did not start:\n" + (Path(home) / "serve.log").read_text())
        self.info = json.loads(line)
        self.url = self.info["url"].rstrip("/")
        self.token = Path(self.info["token_file"]).read_text().strip()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


KEY, SECRET = "local-test-key", "local-test-secret"


def start_probe_bot(home: Path, exchange_url: str, bot: str, *settings: str) -> subprocess.Popen:
    """``grid_probe`` live (``--testnet``) on the local exchange (tests/live_bot.py): a post-only
    buy and sell around the price, re-placed every bar, no exits of its own; returns once the bot
    has connected and written its first snapshot."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANT_")}
    env.update(QUANT_HOME=str(home), LIVE_BOT_FILLS=str(home / f"{bot}-fills.jsonl"), QUANT_LOAD_PLUGINS="live,sim,ccxt_source")
    log = open(home / f"{bot}.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "live_bot.py"),
            "--testnet",
            f"--url={exchange_url}",
            "strategy=grid_probe",
            "strategy.levels=1",
            "strategy.step=0.0002",
            "strategy.exit_every=100000",
            "broker=live",
            f"broker.api_key={KEY}",
            f"broker.secret={SECRET}",
            f"broker.bot={bot}",
            "broker.leverage=10",
            "broker.margin_mode=isolated",
            "broker.reconcile_s=1",
            *settings,
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    log.close()
    deadline = time.time() + 90
    while time.time() < deadline:
        assert proc.poll() is None, "the bot died:\n" + (home / f"{bot}.log").read_text()[-3000:]
        if journal_path(home, bot).exists():
            journal = Journal(journal_path(home, bot))
            state = journal.get("state")
            journal.close()
            if state and state["pid"] == proc.pid:
                return proc
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("the bot did not start within 90 s")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

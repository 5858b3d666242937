"""Soak: ``maker_vol`` live against the local exchange through >= 1,000 injected faults and 5 SIGKILLs.

The exchange runs as its own process (it keeps its books while the bot dies) at 240x real time
with seeded faults on every trading endpoint, the user-data stream and the matcher (rates in
:data:`FAULTS`). The bot (``tests/live_bot.py`` running the real ``maker_vol`` strategy, set up
to trade often: :data:`MAKER_VOL`, ``side=long`` and ``side=both`` in turn) lives six times: five
lives end with SIGKILL at a random point, the last with ``quant stop``'s command. In every life
the exchange clock is frozen once (no bar closes, nothing matches) and the faults are held off
(their seeded streams go on after), the test waits for a reconciliation that began after the
freeze with no place or cancel of the bot under way from its start to its end (a request under
way, or one that gave up, leaves its order to the next pass by design) and for no request to be
under way, and then checks:

* no orphans: every open order on the exchange with the bot's prefixes is one the journal knows,
  and the bot's mirror shows exactly the exchange's open orders;
* no duplicates: no client order id was ever used by two exchange orders;
* the bot's position and wallet balance equal the exchange's, and no earlier reconciliation found
  its position different from the exchange's (the journal logs every such disagreement);
* every fill reached the strategy exactly once: trade ids in the strategy's log are unique, and
  per order the quantity the strategy saw equals the exchange's executed quantity, so the signed
  sum equals the exchange position.

Each next life's bot process is started while the current life trades (``live_bot.py --wait``:
Python's imports off the clock) and starts its bot - lock, journal, exchange - only when the
current one is dead. It prints the seed, the time it took, the faults injected by kind and per
life the seconds to start, to settle after the freeze and to check. ``BTCQ_SOAK_SEED=N``
replays it with another fault schedule. It runs against the Binance USD-M dialect and against the
Bybit v5 dialect (the same bot settings plus ``exchange=bybit``; three lives there, see :data:`DIALECTS`),
and once more on Binance USD-M in hedge mode (``broker.position_mode=hedge``, ``side=both`` in
both of its two lives: the long grid trades the LONG position and the short grid the SHORT one,
each side's position is checked against the exchange's, and both sides must have traded).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import ccxt
import pytest

from btc_quant.plugins.exchanges.ccxt_client import make_exchange
from btc_quant.plugins.exchanges.journal import Journal, journal_path
from btc_quant.testing.process import ServerProcess

HERE = Path(__file__).parent
#: Fault rates: of every trading request 15% fail with a 5xx before execution, 10% are executed and
#: then answered 503 "execution status unknown", 10% are executed and never answered, 5% are held
#: past the client's timeout (and dropped), 2% are 429 (escalating to 418 when the client does not
#: back off); of every websocket push 3% close the socket and 60% of user-data pushes are delayed
#: (delivered out of order); half of all fills are partial; 5% of orders are canceled "by the user".
FAULTS = {
    "rate_limit": 0.02,
    "server_error": 0.15,
    "timeout": 0.05,
    "accepted_timeout": 0.10,
    "accepted_error": 0.10,
    "partial_fill": 0.5,
    "user_cancel": 0.05,
    "drop": 0.03,
    "ws_delay": 0.6,
}
SPEED = 240  # exchange seconds per real second: a 1m bar every 0.25 s
LIVES = 6  # 5 SIGKILLs, then a clean stop
KEY, SECRET = "local-test-key", "local-test-secret"
BROKER = [
    "broker=live",
    f"broker.api_key={KEY}",
    f"broker.secret={SECRET}",
    "broker.bot=soak",
    'broker.own_prefixes=["mv:"]',
    "broker.leverage=10",
    "broker.margin_mode=isolated",
    "broker.reconcile_s=1",
    "broker.reconcile_timeout_s=15",
    "broker.rate_limit_ms=5",
    "broker.timeout_ms=700",
    "broker.backoff_s=0.1",
    # a failed place waits this (plus the clock's uncertainty) before its look-up is final: the
    # default 5 s only lengthens the settling after each freeze, the rule tested is the same
    "broker.recv_window_ms=2000",
]
GRID_PROBE = ["strategy=grid_probe", "strategy.levels=1"]
#: maker_vol set up to trade often on a 50-minute warm-up: a long ladder from just above the recent
#: high down to 90% of it (with side=both from the mid of the range down, and a short ladder from
#: just above the mid up to 110% of the low), levels and take-profits 0.05% apart, 6 live entries
#: per side, re-sized every 30 exchange minutes. Lives alternate :data:`SIDES`: ``long`` (every take-profit and close
#: reduce-only) and ``both`` (two grids on one net position: a close is reduce-only only while it
#: reduces, and a lot left small by partial fills must still close).
MAKER_VOL = [
    "strategy=maker_vol",
    "strategy.top_ratio=1.01",
    "strategy.bottom_ratio=0.9",
    "strategy.short_top_ratio=0.99",
    "strategy.short_bottom_ratio=1.1",
    "strategy.step_pct=0.0005",
    "strategy.tp_pct=0.0005",
    "strategy.max_live_orders=6",
    "strategy.recompute=30m",
]
SIDES = ("long", "both")


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


class Bot:
    def __init__(self, url: str, home: Path, fills: Path, exchange_id: str = "binanceusdm"):
        self.url, self.home, self.fills, self.exchange_id = url, home, fills, exchange_id
        self.proc: subprocess.Popen | None = None
        self.ready: tuple[list[str], subprocess.Popen] | None = None  # the next life's process, imported and waiting
        self.log = open(home / "bot.log", "a")

    def prepare(self, strategy: list[str] = GRID_PROBE) -> None:
        """Start the next life's process ahead (``live_bot.py --wait``): it imports and reads its
        config while this life trades, and starts the bot (lock, journal, exchange) at :meth:`start`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANT_")}
        env.update(QUANT_HOME=str(self.home), LIVE_BOT_FILLS=str(self.fills))
        env["QUANT_LOAD_PLUGINS"] = "live,sim,ccxt_source,maker_vol"  # start-up in seconds on a busy machine
        proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "live_bot.py"),
                "--testnet",
                "--wait",
                f"--url={self.url}",
                *strategy,
                *BROKER,
                f"exchange={self.exchange_id}",
                "symbol=BTC/USDT:USDT",
            ],
            env=env,
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=self.log,
        )
        self.ready = (strategy, proc)

    def start(self, strategy: list[str] = GRID_PROBE) -> None:
        if self.ready is None or self.ready[0] != strategy:
            self.discard()
            self.prepare(strategy)
        self.proc = self.ready[1]
        self.ready = None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()

    def discard(self) -> None:
        """End a prepared process that will not be used (it exits at the end of its input)."""
        if self.ready is not None:
            proc = self.ready[1]
            self.ready = None
            proc.stdin.close()
            proc.wait(60)

    def wait_running(self) -> None:
        """Until the bot has connected, reconciled and written its first snapshot."""
        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.proc.poll() is None, "the bot died:\n" + (self.home / "bot.log").read_text()[-3000:]
            if journal_path(self.home, "soak").exists():
                journal = self.journal()
                state = journal.get("state")
                journal.close()
                if state and state["pid"] == self.proc.pid:
                    return
            time.sleep(0.1)
        raise AssertionError("the bot did not start within 90 s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def journal(self) -> Journal:
        return Journal(journal_path(self.home, "soak"))


def _patient(fn, *args):
    """The test's own requests go through the same faults: retry them."""
    for _ in range(100):
        try:
            return fn(*args)
        except (ccxt.OperationFailed, ccxt.InvalidNonce):
            time.sleep(0.3)
    raise AssertionError(f"{fn.__name__} kept failing")


def _all_orders(client) -> list[dict]:
    """Every order of the account (allOrders, paged by id), retrying through the faults."""
    if client.id == "bybit":
        return _all_bybit_orders(client)
    out: dict[str, dict] = {}
    since_id = None
    while True:
        params = {"orderId": since_id} if since_id else {}
        page = _patient(client.fetch_orders, "BTC/USDT:USDT", None, 1000, params)
        new = [o for o in page if o["id"] not in out]
        for o in page:
            out[o["id"]] = o
        if len(page) < 1000 or not new:
            return list(out.values())
        since_id = int(max(int(o["id"]) for o in page)) + 1


def _all_bybit_orders(client) -> list[dict]:
    """Bybit: the open orders plus the order history, paged by its cursor (50 a page)."""
    market = client.market("BTC/USDT:USDT")
    out = {o["id"]: o for o in _patient(client.fetch_open_orders, "BTC/USDT:USDT")}
    cursor = None
    while True:
        params = {"category": "linear", "symbol": "BTCUSDT", "limit": 50, **({"cursor": cursor} if cursor else {})}
        page = _patient(client.private_get_v5_order_history, params)["result"]
        for o in client.parse_orders(page["list"], market):
            out[o["id"]] = o
        cursor = page.get("nextPageCursor")
        if not cursor:
            return list(out.values())


def _check(exchange_url: str, bot: Bot, client) -> dict:
    """Freeze the exchange and hold its faults off, wait for a settled reconciliation that began
    after it, compare bot and exchange.

    Why the faults stop while it settles: a settled pass needs every place and cancel the freeze
    caught in flight to have ended, then a whole pass (positions twice, open orders, balance, a
    look-up per order it lost track of) with none started meanwhile. Under these fault rates a
    failed place waits out its recvWindow (3.25 s) after every try, a pass's reads retry through
    timeouts and back-offs (a settled pass took 8 s here: 4-20 s from freeze to settled, load
    5-10), and the strategy answers fills that arrive late with new orders, each a request that
    makes the pass under way unsettled. All of it stretches on a slower machine, so the wait had a
    long tail. Without faults it is bounded: the in-flight orders' waits, then one clean pass
    (2-5 s). The faults still hit every request of the trading, of each start and of its first
    reconciliation; :func:`_trade` keeps each life trading until its share of them is in."""
    _post(exchange_url + "/_control/clock", {"speed": 0})
    _post(exchange_url + "/_control/faults/paused", {"paused": True})
    frozen = time.time() * 1000
    journal = bot.journal()
    try:
        deadline = time.time() + 60
        state = None
        while time.time() < deadline:
            assert bot.proc.poll() is None, "the bot died:\n" + (bot.home / "bot.log").read_text()[-3000:]
            state = journal.get("state")
            # a reconciliation that began after the freeze, with no place or cancel under way while
            # it ran, has finished, and no request is under way
            if state and (state["last_settled_reconcile"] or 0) > frozen and state["requests_in_flight"] == 0:
                break
            time.sleep(0.1)
        settle_s = time.time() - frozen / 1000
        assert state and (state["last_settled_reconcile"] or 0) > frozen and state["requests_in_flight"] == 0, (
            f"the bot did not settle within 60 s of the freeze: {state and {k: state[k] for k in ('stats', 'in_flight', 'open_orders_live', 'last_reconcile', 'last_settled_reconcile', 'updated')}}\n"
            + (bot.home / "bot.log").read_text()[-4000:]
        )
        truth = _get(exchange_url + "/_control/truth")
        known = {o.client_id for o in journal.orders()}
        exchange_open = {o["clientOrderId"] for o in truth["open_orders"]}
        mirror_open = {o["client_id"] for o in state["open_orders_live"]}
        assert exchange_open <= known, f"orphans on the exchange: {sorted(exchange_open - known)}"
        assert mirror_open == exchange_open, f"mirror {sorted(mirror_open)} != exchange {sorted(exchange_open)}"
        # the exchange's position by side: BOTH (one-way), or LONG and SHORT (hedge mode)
        legs = {key.partition("|")[2] or "BOTH": p["amt"] for key, p in truth["positions"].items() if key.startswith("BTCUSDT")}
        amt = sum(legs.values())
        if state["position"].get("sides"):
            for side, held in state["position"]["sides"].items():
                assert held["quantity"] == pytest.approx(legs.get(side, 0.0), abs=1e-9), side
        assert state["position"]["quantity"] == pytest.approx(amt, abs=1e-9)
        # and at every reconciliation so far that could compare them (the exchange's position held
        # still and no answer carrying a fill was pending), the bot's position was the exchange's
        # and no order of its prefix was unknown to its journal
        problems = [f"{kind}: {message}" for _, kind, message in journal.notes(100_000) if kind in ("position", "orphan")]
        assert not problems, problems
        assert state["wallet_balance"] == pytest.approx(truth["wallet"], abs=1e-6)
        # exactly once: the strategy's fills per order equal the exchange's executed quantity
        orders = _all_orders(client)
        ids = Counter(o["clientOrderId"] for o in orders)
        assert not [c for c, n in ids.items() if n > 1], f"duplicate client ids: {[c for c, n in ids.items() if n > 1]}"
        seen_fills = [json.loads(line) for line in bot.fills.read_text().splitlines()]
        trade_ids = Counter(f["trade_id"] for f in seen_fills)
        assert not [t for t, n in trade_ids.items() if n > 1], "a fill reached the strategy twice"
        per_order = Counter()
        for f in seen_fills:
            per_order[f["client_id"]] += f["qty"]
        executed = {o["clientOrderId"]: o["filled"] for o in orders if o["filled"]}
        assert set(per_order) == set(executed), f"fills missing: {set(executed) ^ set(per_order)}"
        for cid, qty in executed.items():
            assert per_order[cid] == pytest.approx(qty, abs=1e-9), cid
        signed = Counter()
        for f in seen_fills:
            signed[f.get("position_side", "BOTH")] += f["qty"] * (1 if f["side"] == "buy" else -1)
        for side in set(signed) | set(legs):
            assert signed[side] == pytest.approx(legs.get(side, 0.0), abs=1e-9), side
        return {"orders": len(orders), "fills": len(seen_fills), "settle_s": settle_s, "check_s": time.time() - frozen / 1000 - settle_s}
    finally:
        journal.close()
        _post(exchange_url + "/_control/faults/paused", {"paused": False})
        _post(exchange_url + "/_control/clock", {"speed": SPEED})


def _faults(exchange_url: str) -> int:
    return sum(_get(exchange_url + "/_control/state")["faults"].values())


def _trade(exchange_url: str, least_s: float, faults: float, most_s: float = 90.0) -> None:
    """Let the bot trade at least ``least_s`` seconds and until ``faults`` faults in all were
    injected (at most ``most_s``: the count is asserted at the end)."""
    started = time.monotonic()
    time.sleep(least_s)
    while _faults(exchange_url) < faults and time.monotonic() - started < most_s:
        time.sleep(0.2)


#: the same soak on each dialect the live broker trades: case -> (exchange id, exchange process
#: arguments, lives, least faults, maker_vol sides by life, more broker settings). Bybit's runs half
#: the lives (2 SIGKILLs, >= 400 faults) and hedge mode (Binance USD-M, ``side=both`` on a LONG and
#: a SHORT position) two (1 SIGKILL and the restart that adopts both positions, >= 300 faults) to
#: keep the suite's time: the invariants checked in every life are the same, per position side.
DIALECTS = {
    "binanceusdm": ("binanceusdm", ["--trading-faults"], LIVES, 1000, SIDES, []),
    "bybit": ("bybit", ["--dialect", "bybit", "--trading-faults"], 3, 400, SIDES, []),
    "hedge": ("binanceusdm", ["--trading-faults"], 2, 300, ("both",), ["broker.position_mode=hedge"]),
}


@pytest.mark.parametrize("case", list(DIALECTS))
def test_soak_faults_and_kills(tmp_path, case):
    seed = int(os.environ.get("BTCQ_SOAK_SEED", "20260601"))
    exchange_id, dialect_args, lives, least_faults, sides, settings = DIALECTS[case]
    args = [
        "--clock-start",
        "2022-01-10T06:00",
        "--speed",
        str(SPEED),
        "--seed",
        str(seed),
        *dialect_args,
        "--timeout-s",
        "1.0",
        "--retry-after",
        "0.2",
        "--ban-s",
        "0.5",
        "--ws-delay-s",
        "0.3",
        "--user-cancel-after-ms",
        "20000",
    ]
    for kind, rate in FAULTS.items():
        args += ["--fault", f"{kind}={rate}"]
    rng = random.Random(seed)
    started = time.monotonic()
    with ServerProcess("btc_quant.testing.exchange", *args) as exchange:
        client = make_exchange(
            exchange_id,
            url=exchange.url,
            timeout_ms=5000,
            credentials={"apiKey": KEY, "secret": SECRET},
            options={"warnOnFetchOpenOrdersWithoutSymbol": False},
        )
        _patient(client.load_markets)
        bot = Bot(exchange.url, tmp_path, tmp_path / "fills.jsonl", exchange_id)
        bot.fills.touch()
        checks, kills = [], 0
        try:
            for life in range(lives):
                t0 = time.monotonic()
                bot.start([*MAKER_VOL, f"strategy.side={sides[life % len(sides)]}", *settings])
                bot.wait_running()
                start_s = time.monotonic() - t0
                if life < lives - 1:
                    bot.prepare([*MAKER_VOL, f"strategy.side={sides[(life + 1) % len(sides)]}", *settings])
                # trades a random while, and on until this life's share of the faults has been
                # injected (they are held off while each check settles)
                _trade(exchange.url, rng.uniform(4, 7), least_faults * (life + 1) / lives)
                checks.append({**_check(exchange.url, bot, client), "start_s": start_s})
                if life < lives - 1:
                    time.sleep(rng.uniform(0.2, 2.5))  # killed at a random point of the trading after the check
                    bot.kill()
                    kills += 1
            # the last life ends cleanly through the journal's command channel (what quant stop does)
            journal = bot.journal()
            journal.set("command", "stop")
            assert bot.proc.wait(60) == 0
            final = journal.get("state")
            journal.close()
            assert final["halted"] == "quant stop" and final["pid"] == bot.proc.pid
        finally:
            if bot.proc and bot.proc.poll() is None:
                bot.kill()
            bot.discard()
        faults = _get(exchange.url + "/_control/state")["faults"]
    took = time.monotonic() - started
    print(
        f"\nsoak (seed {seed}, {took:.0f} s): {kills} SIGKILLs, {len(checks)} checks, {sum(c['fills'] for c in checks[-1:])} fills "
        f"of {checks[-1]['orders']} orders; faults injected: "
        + ", ".join(f"{k}={v}" for k, v in sorted(faults.items()))
        + f"; total {sum(faults.values())}; per life start/settle/check s: "
        + ", ".join(f"{c['start_s']:.1f}/{c['settle_s']:.1f}/{c['check_s']:.1f}" for c in checks)
    )
    assert kills == lives - 1 >= (1 if case == "hedge" else 2) and checks[-1]["fills"] > 0
    if case == "hedge":  # both grids traded, each on its own position side
        traded = {json.loads(line)["position_side"] for line in (tmp_path / "fills.jsonl").read_text().splitlines()}
        assert traded == {"LONG", "SHORT"}, traded
    assert sum(faults.values()) >= least_faults, faults


def test_restart_cancels_only_own_unknown_orders_and_leaves_manual_ones(tmp_path):
    """Reconciliation on start: an open order with the bot's prefix that its journal never recorded
    is canceled; an order placed by hand (another client id) is not touched."""
    with ServerProcess("btc_quant.testing.exchange", "--clock-start", "2022-01-10T06:00", "--speed", "0") as exchange:
        client = make_exchange(
            "binanceusdm",
            url=exchange.url,
            credentials={"apiKey": KEY, "secret": SECRET},
            options={"warnOnFetchOpenOrdersWithoutSymbol": False},
        )
        client.load_markets()
        price = client.fetch_ticker("BTC/USDT:USDT")["last"]
        low = float(client.price_to_precision("BTC/USDT:USDT", price * 0.9))
        client.create_order("BTC/USDT:USDT", "limit", "buy", 0.003, low, {"clientOrderId": "soak-zz-1", "postOnly": True})
        client.create_order("BTC/USDT:USDT", "limit", "buy", 0.003, low, {"clientOrderId": "manual-1", "postOnly": True})
        bot = Bot(exchange.url, tmp_path, tmp_path / "fills.jsonl")
        bot.start()
        try:
            bot.wait_running()
            deadline = time.time() + 30
            while time.time() < deadline:
                open_ids = {o["clientOrderId"] for o in _get(exchange.url + "/_control/truth")["open_orders"]}
                if "soak-zz-1" not in open_ids:
                    break
                time.sleep(0.3)
        finally:
            bot.kill()
        assert "manual-1" in open_ids and "soak-zz-1" not in open_ids
        journal = bot.journal()
        assert any("soak-zz-1" in message for _, kind, message in journal.notes() if kind == "orphan")
        journal.close()


def test_quant_flatten_cancels_the_bots_orders_and_closes_its_position(tmp_path, quant):
    """``quant flatten`` against a running live bot: its orders are canceled and its position is
    closed on the exchange, a manual order stays, and the bot exits."""
    with ServerProcess("btc_quant.testing.exchange", "--clock-start", "2022-01-10T06:00", "--speed", str(SPEED)) as exchange:
        client = make_exchange(
            "binanceusdm",
            url=exchange.url,
            credentials={"apiKey": KEY, "secret": SECRET},
            options={"warnOnFetchOpenOrdersWithoutSymbol": False},
        )
        client.load_markets()
        low = float(client.price_to_precision("BTC/USDT:USDT", client.fetch_ticker("BTC/USDT:USDT")["last"] * 0.8))
        client.create_order("BTC/USDT:USDT", "limit", "buy", 0.003, low, {"clientOrderId": "manual-1", "postOnly": True})
        bot = Bot(exchange.url, tmp_path, tmp_path / "fills.jsonl")
        bot.start([*MAKER_VOL, "strategy.side=long"])
        try:
            bot.wait_running()
            deadline = time.time() + 60
            while time.time() < deadline:  # trading until it holds a position and resting orders
                truth = _get(exchange.url + "/_control/truth")
                mine = [o for o in truth["open_orders"] if o["clientOrderId"] != "manual-1"]
                if truth["positions"].get("BTCUSDT", {}).get("amt") and mine:
                    break
                time.sleep(0.3)
            _post(exchange.url + "/_control/clock", {"speed": 0})  # hold the market still: what is open now must go
            truth = _get(exchange.url + "/_control/truth")
            assert truth["positions"]["BTCUSDT"]["amt"] != 0 and len(truth["open_orders"]) > 1, truth
            proc = quant(
                "flatten", "--bot", "soak", env={"QUANT_HOME": str(tmp_path), "QUANT_LOAD_PLUGINS": "live_cli"}, process=True
            )  # as a user would, beside the bot
            assert proc.returncode == 0 and "bot soak: flatten done" in proc.stdout, proc.stdout + proc.stderr
            assert bot.proc.wait(30) == 0
        finally:
            if bot.proc.poll() is None:
                bot.kill()
        after = _get(exchange.url + "/_control/truth")
    assert [o["clientOrderId"] for o in after["open_orders"]] == ["manual-1"]
    assert after["positions"].get("BTCUSDT", {}).get("amt", 0.0) == 0.0

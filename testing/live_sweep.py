"""Seeded fault sweep of the live broker: many short lives against one local exchange.

Each seed is one bot on its own account of one in-process local exchange (its own
:class:`~btc_quant.testing.exchange.faults.FaultPlan` seeded with the seed, so its faults do not
depend on the other seeds running beside it) and its own journal. Driven by the seed:

* the fault mix: 5xx, executed-but-unanswered (503 -1007 and timeouts), held answers, 429s,
  ``late_execution`` (the order reaches the book after the client gave up and, usually, after its
  look-up said "no such order"; executed within ``timestamp + recvWindow``, refused after it),
  ``recv_window`` rejects, ``clock_skew`` jumps of the exchange clock, and on the user-data stream
  drops, delays and ``silent`` stops;
* a short script of orders: market buys and sells (not reduce-only), post-only buys resting under
  the price, cancels;
* for about half the seeds a SIGKILL: the life dies at the await point of its k-th request
  (before it is sent, or after it was sent but before its answer is read). The journal is cut off
  first, so nothing the dead life would still do reaches it, then every task is dropped; the next
  life starts from the journal, as a restarted process does.

Then the faults stop, the bot is left to settle (every order past its recvWindow, a reconciliation
with nothing under way) and the seed is checked against the exchange's books:

* no order without an owner: every open order of the account is in the journal, and the bot's
  mirror shows exactly the exchange's open orders;
* no client id executed twice (no client id on two exchange orders);
* the bot's position and wallet equal the exchange's;
* every fill reached the "strategy" (what ``deliver`` handed over, marked delivered in the journal
  as the driver does) exactly once: trade ids unique, per order the quantity equals the
  exchange's executed quantity, nothing left undelivered.

The exchange clock is frozen, so only market orders fill (no partial fills, no user cancels).
``python -m btc_quant.testing.live_sweep --seeds 10000`` runs a sweep and prints the figures;
``--seed N`` replays one seed alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import ccxt

from btc_quant.core.config import load_run_config
from btc_quant.core.plugins import load_plugins
from btc_quant.core.run import build_runtime
from btc_quant.plugins.exchanges.ccxt_client import make_exchange
from btc_quant.plugins.exchanges.journal import Journal
from btc_quant.plugins.exchanges.live import LiveBroker, install_gate, retrying
from btc_quant.sdk import ExchangeError, Order, Side

from .exchange import ExchangeServer, FaultPlan, binance_state
from .exchange.faults import TRADING_PATHS

START_MS = 1641794400000  # 2022-01-10 06:00 UTC, inside the bundled real perp sample
SYMBOL = "BTCUSDT"
#: the bot's settings in every life: short timeouts and windows so a seed takes seconds
BROKER = {"timeout_ms": 1500, "backoff_s": 0.05, "max_attempts": 4, "reconcile_s": 3, "reconcile_timeout_s": 10, "recv_window_ms": 1500}
#: a seed that takes longer than this is a failure (something hangs)
SEED_TIMEOUT_S = 600
#: a seed's bot is restarted at most this often (a kill, or a start refused under faults)
MAX_LIVES = 6
#: fault rates (before the seed's own scaling) of the http and websocket channels
MIX = {
    "server_error": 0.06,
    "accepted_error": 0.05,
    "accepted_timeout": 0.05,
    "timeout": 0.02,
    "rate_limit": 0.01,
    "late_execution": 0.08,
    "recv_window": 0.04,
    "clock_skew": 0.03,
    "drop": 0.05,
    "ws_delay": 0.15,
    "silent": 0.05,
}


@dataclass
class SeedResult:
    seed: int
    problems: list[str] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    killed: bool = False
    restarts: int = 0
    orders: int = 0
    fills: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


class Sweep:
    """One local exchange, the loaded markets and the broker's config shared by every seed."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.plugins = load_plugins(env={"QUANT_LOAD_PLUGINS": "live,sim,ccxt_source,sma_cross"})
        cfg = load_run_config(
            ["broker=live", "broker.bot=s", *(f"broker.{k}={v}" for k, v in BROKER.items())], self.plugins.registry, env={}
        )
        self.config = cfg.broker.config
        self.runtime = build_runtime(cfg, self.plugins, mode="live")
        self.server = ExchangeServer(binance_state(clock_start_ms=START_MS, speed=0))
        self.markets = None
        # one TLS context for every client (each would load the CA bundle: ~50 ms of CPU per life,
        # a quarter of a seed's; the local exchange speaks plain HTTP, so it is never used anyway)
        self.ssl_context = ssl.create_default_context()

    def __enter__(self) -> Sweep:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    async def load_markets(self) -> None:
        client = self._client("local-test-key", "local-test-secret")
        try:
            await retrying(client.load_markets, attempts=20)
            self.markets = (client.markets, client.currencies)
        finally:
            await client.close()

    def _client(self, key: str, secret: str):
        client = make_exchange(
            "binanceusdm",
            pro=True,
            url=self.server.url,
            timeout_ms=BROKER["timeout_ms"],
            credentials={"apiKey": key, "secret": secret},
            options={
                "warnOnFetchOpenOrdersWithoutSymbol": False,
                "watchPositions": {"fetchPositionsSnapshot": False, "awaitPositionsSnapshot": False},
            },
        )
        client.ssl_context = self.ssl_context
        if self.markets is not None:
            client.set_markets(*self.markets)
        install_gate(client)
        return client

    # --- one seed -------------------------------------------------------------------------
    async def run_seed(self, seed: int) -> SeedResult:
        t0 = time.monotonic()
        result = SeedResult(seed)
        rng = random.Random(f"sweep/{seed}")
        key, secret = f"sweep-{seed}", f"secret-{seed}"
        scale = rng.uniform(0.5, 1.5)
        plan = FaultPlan(
            seed=seed,
            rates={k: v * scale for k, v in MIX.items()},
            paths=TRADING_PATHS,
            timeout_s=0.5,
            slow_s=0.1,
            retry_after_s=0.2,
            ban_s=0.3,
            ws_delay_s=0.1,
            late_s=rng.uniform(0.05, 2.0),
            skew_step_ms=rng.choice((1200, 2500)),
            skew_max_ms=4000,
        )
        trading = self.server.state.trading
        with trading.lock:
            trading.add_account(key, secret)
            trading.plans[key] = plan
        config = self.config.model_copy(update={"bot": f"s{seed}"})
        journal_file = self.home / f"s{seed}.db"
        delivered: list[tuple[str, str, float]] = []
        kill_at = rng.randint(1, 15) if rng.random() < 0.5 else None
        kill_before = rng.random() < 0.5
        websocket = rng.random() < 0.4  # the rest run on REST reconciliation alone (cheaper; a silent stream is like none)
        script = [rng.choice(("buy", "sell", "rest", "rest", "cancel")) for _ in range(rng.randint(2, 5))]
        life = None
        try:
            # lives until one runs its script to the end: a killed life, or one that could not
            # start (the bot refuses to trade before a first reconciliation), is restarted as a
            # supervisor would restart the process
            for generation in range(1, MAX_LIVES + 1):
                life = Life(self, config, key, secret, journal_file, delivered)
                life.websocket = websocket
                first = generation == 1
                if not await life.start(kill_at=kill_at if first else None, kill_before=kill_before):
                    result.killed = result.killed or life.killed.is_set()
                    result.restarts += 1
                    await life.stop()
                    continue
                if not await life.act(script if first else script[:2], rng, generation):
                    break
                result.killed = True
                result.restarts += 1
            else:
                # none got through under the faults (each died or was refused at start): the faults
                # stop and one more life starts from the journal; the checks below hold all the same
                plan.rates = {}
                result.restarts += 1
                life = Life(self, config, key, secret, journal_file, delivered)
                life.websocket = websocket
                if not await life.start():
                    raise RuntimeError(f"the bot could not start even without faults after {MAX_LIVES} lives")
            plan.rates = {}  # the exchange settles down; what is under way plays out
            await life.settle()
            result.problems = self.check(life, key, delivered)
        except Exception as exc:  # noqa: BLE001 - a seed that breaks the bot is a finding, reported with its seed
            result.problems = [f"{type(exc).__name__}: {exc}"]
        finally:
            if life is not None:
                await life.stop()
        with trading.lock:
            orders = list(trading.account(key).orders.values())
        result.orders = len(orders)
        result.fills = len(delivered)
        result.faults = Counter(plan.counts())
        result.seconds = time.monotonic() - t0
        return result

    def check(self, life: Life, key: str, delivered: list) -> list[str]:
        problems = []
        trading = self.server.state.trading
        with trading.lock:
            account = trading.account(key)
            orders = list(account.orders.values())
            exchange_open = {o.client_id for o in account.open_orders()}
            amt, wallet = account.position(SYMBOL).amt, account.wallet
        broker, journal = life.broker, life.journal
        known = {o.client_id for o in journal.orders()}
        if exchange_open - known:
            problems.append(f"orders without owner: {sorted(exchange_open - known)}")
        mirror = {o.client_id for o in broker.open_orders()}
        if mirror != exchange_open:
            problems.append(f"mirror open {sorted(mirror)} != exchange open {sorted(exchange_open)}")
        ids = Counter(o.client_id for o in orders)
        if [c for c, n in ids.items() if n > 1]:
            problems.append(f"client ids used twice: {[c for c, n in ids.items() if n > 1]}")
        if abs(broker.position().quantity - amt) > 1e-9:
            problems.append(f"position: bot {broker.position().quantity:g}, exchange {amt:g}")
        if abs(broker.account().wallet_balance - wallet) > 1e-6:
            problems.append(f"wallet: bot {broker.account().wallet_balance!r}, exchange {wallet!r}")
        trade_ids = Counter(t for t, _, _ in delivered)
        if [t for t, n in trade_ids.items() if n > 1]:
            problems.append(f"fills delivered twice: {[t for t, n in trade_ids.items() if n > 1]}")
        per_order = Counter()
        for _, cid, qty in delivered:
            per_order[cid] += qty
        executed = {o.client_id: o.executed for o in orders if o.executed}
        for cid in set(per_order) | set(executed):
            if abs(per_order.get(cid, 0.0) - executed.get(cid, 0.0)) > 1e-9:
                problems.append(f"order {cid}: strategy got {per_order.get(cid, 0.0):g}, exchange executed {executed.get(cid, 0.0):g}")
        if journal.undelivered():
            problems.append(f"fills never handed over: {[r['trade_id'] for r in journal.undelivered()]}")
        return problems


class Life:
    """One process's life of a seed's bot: its client, broker and journal."""

    def __init__(self, sweep: Sweep, config, key: str, secret: str, journal_file: Path, delivered: list) -> None:
        self.sweep, self.config, self.key, self.secret = sweep, config, key, secret
        self.journal_file, self.delivered = journal_file, delivered
        self.client = self.broker = self.journal = None
        self.tasks: list[asyncio.Task] = []
        self.killed = asyncio.Event()
        self.requests = 0
        self.websocket = True
        self.kill_at: int | None = None

    async def start(self, kill_at: int | None = None, kill_before: bool = False) -> bool:
        """Connect (journal, first reconciliation) and start the watchers; False if the life
        died or the bot refused to start (it could not reconcile under the faults)."""
        self.client = self.sweep._client(self.key, self.secret)
        if kill_at is not None:
            self._arm(kill_at, kill_before)
        self.journal = Journal(self.journal_file)
        self.broker = LiveBroker(self.config, self.sweep.runtime)
        connect = asyncio.ensure_future(self.broker.connect(self.client, self.journal))
        dying = asyncio.ensure_future(self.killed.wait())
        await asyncio.wait({connect, dying}, return_when=asyncio.FIRST_COMPLETED)
        if self.killed.is_set():
            connect.cancel()
            await self.die()
            return False
        dying.cancel()
        try:
            await connect
        except ExchangeError:  # "could not reconcile on start": the process exits
            return False
        self.broker.deliver = self.collect
        self.collect()  # fills an earlier life journalled but never handed over
        self.tasks = [asyncio.ensure_future(self.broker.reconcile_forever(self.collect))]
        if self.websocket:
            self.tasks.append(asyncio.ensure_future(self.broker.watch()))
        return True

    def _arm(self, kill_at: int, before: bool) -> None:
        """Die at the await point of the ``kill_at``-th request: before it leaves, or once sent."""
        fetch = self.client.fetch
        self.kill_at = kill_at

        async def fetch_or_die(*args, **kwargs):
            if self.killed.is_set():  # dead: nothing leaves any more
                await asyncio.Event().wait()
            if self.kill_at is None:
                return await fetch(*args, **kwargs)
            self.requests += 1
            if self.requests == kill_at and before:
                self.killed.set()
                await asyncio.Event().wait()
            answer = await fetch(*args, **kwargs)
            if self.kill_at is not None and self.requests >= kill_at and not self.killed.is_set():
                self.killed.set()
                await asyncio.Event().wait()
            return answer

        self.client.fetch = fetch_or_die

    def collect(self) -> None:
        """The strategy: take the broker's events, mark each fill delivered (the driver's marker)."""
        if self.journal is None or self.journal.db is None:
            return
        for event in self.broker.events():
            fill = getattr(event, "fill", None)
            if fill is not None:
                self.delivered.append((fill.trade_id, fill.client_id, fill.quantity))
                self.journal.delivered(fill.trade_id)

    async def act(self, script: list[str], rng: random.Random, generation: int) -> bool:
        """Run the order script; True if the life was killed on the way."""
        if self.killed.is_set():
            await self.die()
            return True
        acting = asyncio.ensure_future(self._act(script, rng, generation))
        dying = asyncio.ensure_future(self.killed.wait())
        await asyncio.wait({acting, dying}, return_when=asyncio.FIRST_COMPLETED)
        if self.killed.is_set():
            acting.cancel()
            await self.die()
            return True
        dying.cancel()
        self.kill_at = None  # it lived through its script: no kill later
        return False

    async def _act(self, script: list[str], rng: random.Random, generation: int) -> None:
        broker = self.broker
        price = self.sweep.server.state.trading.price(SYMBOL)
        broker.set_market(price, START_MS)
        for n, step in enumerate(script, 1):
            cid = f"{self.config.bot}-{generation}-{n}"
            if step == "buy" or step == "sell":
                broker.submit(Order.create(broker.instrument, cid, Side(step), 0.003, ts_ms=START_MS))
            elif step == "rest":
                broker.submit(Order.create(broker.instrument, cid, Side.BUY, 0.003, price * 0.9, post_only=True, ts_ms=START_MS))
            elif broker.open_orders():
                broker.cancel(rng.choice(sorted(o.client_id for o in broker.open_orders())))
            await asyncio.sleep(rng.uniform(0.0, 0.3))
        # run a while with the faults on: retries, reconciliations, pushes
        await asyncio.sleep(rng.uniform(0.5, 1.5))

    async def die(self) -> None:
        """SIGKILL: the journal is cut off first (nothing more reaches it), then every task dropped."""
        self.journal.close()
        await self.stop()

    async def settle(self, timeout_s: float = 180.0) -> None:
        """Until every order is past its recvWindow and a reconciliation with nothing under way ran."""
        broker = self.broker
        deadline = time.monotonic() + timeout_s
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"did not settle in {timeout_s:g} s: tasks {sorted(t.get_name() for t in broker._tasks)}, "
                    f"open {[(o.client_id, o.status.value) for o in broker.open_orders()]}, "
                    f"last settled {broker.last_settled_reconcile_ms}, stats {broker.stats}"
                )
            now_ms = time.time() * 1000
            waits = [broker._unknown_until.get(o.client_id, 0) - now_ms for o in broker.open_orders()]
            if any(w > 0 for w in waits):
                await asyncio.sleep(max(waits) / 1000 + 0.05)
                continue
            if broker._placing or broker._canceling or broker._commission_lookups:
                await asyncio.sleep(0.05)
                continue
            started = time.time() * 1000
            try:
                await broker.reconcile()
            except Exception:  # noqa: BLE001 - a late fault: try again
                await asyncio.sleep(0.1)
                continue
            self.collect()
            if (broker.last_settled_reconcile_ms or 0) >= int(started) - 1 and not (broker._placing or broker._canceling):
                return

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        # bounded: a request a kill left hanging must not hold the sweep
        if self.broker is not None:
            await asyncio.wait({asyncio.ensure_future(self.broker.close())}, timeout=10)
        await asyncio.wait([asyncio.ensure_future(asyncio.gather(*self.tasks, return_exceptions=True))], timeout=10)
        self.tasks = []
        if self.client is not None:
            client, self.client = self.client, None
            await asyncio.wait({asyncio.ensure_future(client.close())}, timeout=10)
        if self.journal is not None and self.journal.db is not None:
            self.journal.close()


async def run_sweep(seeds, home: Path, concurrency: int = 40, on_result=None, time_limit_s: float | None = None) -> list[SeedResult]:
    """Run ``seeds`` (an iterable of ints), ``concurrency`` at a time; returns their results.
    ``time_limit_s``: start no seed after this long (the results say how many ran)."""
    logging.getLogger("btc_quant.plugins.exchanges.live").setLevel(logging.CRITICAL)  # a killed life's tasks fail loudly by design
    loop = asyncio.get_running_loop()
    default = loop.get_exception_handler()

    def quiet(loop, context):
        # a request abandoned by its bound (or by a kill) may still end in ccxt's own error
        if isinstance(context.get("exception"), (ccxt.BaseError, asyncio.CancelledError, TimeoutError)):
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(quiet)
    with Sweep(home) as sweep:
        await sweep.load_markets()
        gate = asyncio.Semaphore(concurrency)
        results = []

        started = time.monotonic()

        async def one(seed: int) -> None:
            async with gate:
                if time_limit_s is not None and time.monotonic() - started > time_limit_s:
                    return
                try:
                    result = await asyncio.wait_for(sweep.run_seed(seed), SEED_TIMEOUT_S)
                except TimeoutError:
                    result = SeedResult(seed, problems=[f"did not finish within {SEED_TIMEOUT_S} s"])
            results.append(result)
            if on_result is not None:
                on_result(result)

        await asyncio.gather(*(one(seed) for seed in seeds))
    return sorted(results, key=lambda r: r.seed)


def summary(results: list[SeedResult]) -> dict:
    faults = Counter()
    for r in results:
        faults.update(r.faults)
    return {
        "seeds": len(results),
        "failed": [r.seed for r in results if not r.ok],
        "killed": sum(r.killed for r in results),
        "restarts": sum(r.restarts for r in results),
        "orders": sum(r.orders for r in results),
        "fills": sum(r.fills for r in results),
        "faults": dict(sorted(faults.items())),
        "faults_total": sum(faults.values()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m btc_quant.testing.live_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=1000, help="how many seeds (0 .. N-1, from --first)")
    p.add_argument("--first", type=int, default=0, help="first seed")
    p.add_argument("--seed", type=int, default=None, help="replay this one seed alone")
    p.add_argument("--concurrency", type=int, default=40, help="seeds running at once")
    p.add_argument("--home", default=None, help="directory for the journals (default: a temporary one)")
    p.add_argument("--time-limit", type=float, default=None, help="start no seed after this many seconds")
    args = p.parse_args(argv)
    import tempfile

    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        done = []

        def progress(result: SeedResult) -> None:
            done.append(result)
            if not result.ok:
                print(f"seed {result.seed}: {'; '.join(result.problems)}", file=sys.stderr, flush=True)
            if len(done) % 500 == 0:
                print(
                    f"{len(done)} seeds, {sum(not r.ok for r in done)} failed, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True
                )

        results = asyncio.run(run_sweep(seeds, Path(args.home or tmp), args.concurrency, on_result=progress, time_limit_s=args.time_limit))
    out = summary(results)
    out["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out))
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

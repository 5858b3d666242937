"""The live driver: runs a paper or live bot on asyncio until SIGTERM/Ctrl-C or ``quant stop``.

One event loop carries everything; the engine and the strategy are called from it synchronously:

* **bars**: ``watch_ohlcv`` (ccxt.pro) tells when a new candle has begun; the candles that closed
  before it are then read over REST (``fetch_ohlcv``, the exchange's final values) and handed to
  :meth:`Engine.on_bar_closed` in order, each exactly once. When the websocket fails, or the
  exchange has none, the same REST read is polled instead.
* **broker**: the live broker's websocket watchers and its periodic reconciliation (every
  ``broker.reconcile_s``); the engine is pumped every few milliseconds so fills and order
  updates reach the strategy as they arrive.
* **control**: the journal (``$QUANT_HOME/live/<bot>.db``) gets a snapshot every second for
  ``quant status``, and ``quant stop`` / ``quant flatten`` leave a command there that this loop
  picks up.

Safety switches (checked before any request is sent): ``broker=live`` needs ``--testnet``
(ccxt sandbox mode) or ``--i-understand-this-trades-real-money`` (real money only on an exchange in
:data:`LIVE_VERIFIED`); a live run refuses a config
file holding secrets that others can read; an exchange lacking what the run needs (post-only
orders, leverage, margin modes, a sandbox for ``--testnet``) fails with one line naming it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from typing import Any

import ccxt

from btc_quant.core import secrets
from btc_quant.core.data import timeframe_ms
from btc_quant.core.engine import Engine, RunInfo
from btc_quant.core.paths import data_dir
from btc_quant.core.run import build_runtime
from btc_quant.sdk import Bar, ConfigError, ExchangeError, hookimpl
from btc_quant.sdk.ordersync import base36

from .ccxt_client import make_exchange, point_at
from .journal import BotLock, Journal, account_fingerprint, journal_path
from .live import LiveBroker, PaperBroker, install_gate, retrying

log = logging.getLogger(__name__)

REAL_MONEY_FLAG = "--i-understand-this-trades-real-money"
#: Exchanges whose live path (order look-up by client id, order/balance/position streams, fees)
#: has been run end to end against a local dialect, soak included (``quant exchanges --tested``,
#: column "live"). Real money is refused elsewhere: ccxt may offer every capability while the
#: broker does not speak that venue's order look-up and streams; its sandbox (``--testnet``) is allowed.
LIVE_VERIFIED = frozenset({"binanceusdm", "bybit"})


def live_capabilities(perpetual: bool, leverage: bool = False, margin_mode: bool = False) -> list[str]:
    """ccxt ``has`` keys ``broker=live`` needs (also what ``quant exchanges`` calls "live")."""
    need = ["fetchOHLCV", "createPostOnlyOrder", "cancelOrder", "fetchOrder", "fetchOpenOrders", "fetchBalance"]
    if leverage or perpetual:
        need += ["setLeverage"]
    if margin_mode or perpetual:
        need += ["setMarginMode", "fetchPositions"]
    return need


def required_capabilities(broker: Any, instrument, testnet: bool) -> list[str]:
    """ccxt ``has`` keys the run needs."""
    need = ["fetchOHLCV"]
    if isinstance(broker, LiveBroker):
        need = live_capabilities(instrument.is_perpetual, bool(broker.config.leverage), bool(broker.config.margin_mode))
        if getattr(broker.config, "position_mode", None):
            need.append("setPositionMode")
    if testnet:
        need.append("sandbox")
    return need


def check_capabilities(exchange: Any, exchange_id: str, need: list[str]) -> None:
    missing = [k for k in need if not exchange.has.get(k)]
    if missing:
        raise ExchangeError(
            f"exchange {exchange_id} lacks what this run needs: {', '.join(missing)}",
            hint="pick an exchange that supports them, or a strategy/broker setting that does not need them",
        )


def exchange_url(config) -> str | None:
    return getattr(config.exchange.config, "url", None)


class LiveRun:
    """One paper or live bot (see module docstring). ``run()`` blocks until it stops."""

    def __init__(
        self,
        config,
        plugins,
        *,
        testnet: bool = False,
        real_money: bool = False,
        url: str | None = None,
        warmup: int = 500,
        max_seconds: float | None = None,
        max_bars: int | None = None,
    ) -> None:
        self.config = config
        self.plugins = plugins
        self.testnet = testnet
        self.url = url or exchange_url(config)
        self.warmup = warmup
        self.max_seconds = max_seconds
        #: stop after this many live bars (tests and scripted runs: a count, not a wall-clock guess)
        self.max_bars = max_bars
        broker_name = config.broker.name
        self.mode = "live" if broker_name == "live" else "paper"
        if self.mode == "live" and not (testnet or real_money):
            raise ConfigError(
                "broker=live trades real money; refusing without a flag",
                hint=f"use --testnet for the exchange's sandbox, or {REAL_MONEY_FLAG} to trade for real",
            )
        if self.mode == "live" and testnet and real_money:
            raise ConfigError(f"--testnet and {REAL_MONEY_FLAG} contradict each other; give one")
        if self.mode == "live" and real_money and config.exchange.name not in LIVE_VERIFIED:
            raise ConfigError(
                f"broker=live with real money on {config.exchange.name}: the live broker has been run end to end only on "
                f"{', '.join(sorted(LIVE_VERIFIED))}",
                hint="try it on the exchange's sandbox with --testnet first; quant exchanges --tested lists what is verified",
            )
        if self.mode == "live" and secrets.insecure_files:
            raise ConfigError(next(iter(secrets.insecure_files.values())), hint="a live bot refuses keys that others can read")
        # One bot per name and per client-id prefix and account, decided before anything else
        # (no network call, no journal write): see journal.BotLock.
        self.bot = getattr(config.broker.config, "bot", None) or "paper"
        strategy_config = _strategy_config_for(config.strategy.config, self.bot) if self.mode == "live" else config.strategy.config
        own = _own_prefixes(config.broker.config, strategy_config, self.bot) if self.mode == "live" else ()
        api_key = getattr(config.broker.config, "api_key", None)
        self.account = (
            account_fingerprint(config.exchange.name, api_key.get_secret_value() if api_key else None) if self.mode == "live" else "paper"
        )
        self.lock = BotLock(data_dir(), self.bot, self.account, own)
        try:
            self._set_up(config, plugins, broker_name, strategy_config, own)
        except BaseException:
            self.lock.release()
            raise

    def _set_up(self, config, plugins, broker_name: str, strategy_config, own: tuple[str, ...]) -> None:
        self.runtime = build_runtime(config, plugins, mode=self.mode)
        registry = self.runtime.registry
        strategy = registry.get("strategy", config.strategy.name, key="strategy").factory(strategy_config)
        self.broker = registry.get("broker", broker_name, key="broker").factory(config.broker.config, self.runtime)
        if not isinstance(self.broker, (LiveBroker, PaperBroker)):
            raise ConfigError(f"broker={broker_name} cannot run live; use broker=paper or broker=live")
        if isinstance(self.broker, LiveBroker):
            self.broker.prefixes = tuple(dict.fromkeys((*self.broker.prefixes, *own)))
        self.journal = Journal(journal_path(data_dir(), self.bot))
        owner = self.journal.get("account")
        if owner is not None and owner != self.account:
            self.journal.close()
            raise ConfigError(f"the journal of bot {self.bot!r} belongs to another account", hint="each account needs its own broker.bot")
        self.journal.set("account", self.account)
        self.journal.set("pid", os.getpid())
        if isinstance(self.broker, PaperBroker):
            # a paper bot starts from broker.initial_cash with nothing open: its journal holds this
            # run's orders and fills only (what quant compare replays), and the broker writes them
            self.journal.clear_trading()
            self.broker.journal = self.journal
        # the generation is never reused, also when the journal was lost: at least the wall clock
        # in tenths of a second (one life per bot at a time, held by the lock above)
        generation = max(int(self.journal.get("generation", 0)) + 1, int(time.time() * 10))
        self.journal.set("generation", generation)
        self.generation = generation
        checks = [(c.name, registry.get("risk_check", c.name, key=f"risk.{c.name}").factory(c.config)) for c in config.risk.checks]
        prefix = f"{self.bot}-{base36(generation)}" if self.mode == "live" else None
        self._marker = None
        if self.mode == "live":
            # a fill leaves the journal's undelivered list once the strategy and every other
            # observer have handled it (trylast: after them); registered before the engine
            # looks for quant_on_fill implementations
            self._marker = _DeliveredMarker(self.journal)
            plugins.pm.register(self._marker)
        info = RunInfo(f"{self.bot}-{generation}", self.mode, config.strategy.name, broker_name, self.runtime.instrument, config)
        self.engine = Engine(
            strategy,
            self.broker,
            plugins=plugins,
            instrument=self.runtime.instrument,
            risk_checks=checks,
            info=info,
            client_id_prefix=prefix,
        )
        self.tf_ms = timeframe_ms(config.timeframe)
        self.stopping: asyncio.Event | None = None
        self.last_bar_ts: int | None = None
        self.bars_seen = 0
        self.result = None
        # heartbeat fields for quant serve and its watchdog (wall-clock seconds): the last market
        # data of any kind, the last kline pushed by the websocket, the equity when this bot
        # (this journal) first ran and at the start of the UTC day (PnL since start / today;
        # kept in the journal so a restart does not reset them)
        self.market_s: float | None = None
        self.stream_s: float | None = None
        self.equity_start: float | None = self.journal.get("equity_start")
        day = self.journal.get("equity_day")
        self.equity_day: tuple[str, float] | None = tuple(day) if day else None

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            return asyncio.run(self._main())
        except ccxt.AuthenticationError as exc:  # no key, or a key the exchange refuses: a setting, not a crash
            given = getattr(self.config.broker.config, "api_key", None) is not None
            raise ConfigError(
                f"broker.api_key: {self.config.exchange.name} "
                + (
                    f"refused the API key ({_exchange_message(exc)})"
                    if given
                    else "needs an API key and secret for a live bot, and none is set"
                ),
                hint="set QUANT_BROKER__API_KEY and QUANT_BROKER__SECRET (or broker.api_key/broker.secret in quant.toml) "
                "to a key with futures trading rights",
            ) from None
        finally:
            if self._marker is not None:
                self.plugins.pm.unregister(self._marker)
            self.close()

    def close(self) -> None:
        """Leave the journal and give up the bot's lock and leases (``run()`` does this itself)."""
        if self.journal.db is not None:
            self.journal.set("pid", None)
            self.journal.close()
        # the next life (which cannot start before the lock is given up) must see a later wall
        # clock than this life's generation, or a lost journal could hand it the same ids
        generation = getattr(self, "generation", None)
        while generation is not None and int(time.time() * 10) <= generation:
            time.sleep(0.01)
        self.lock.release()

    async def _main(self) -> dict:
        cfg = self.config
        self.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        credentials = {}
        if self.mode == "live":
            for key, ccxt_key in (("api_key", "apiKey"), ("secret", "secret")):
                value = getattr(cfg.broker.config, key, None)
                if value is not None:
                    secrets.register(value)
                    credentials[ccxt_key] = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
        timeout_ms = getattr(cfg.broker.config, "timeout_ms", 10_000)
        # positions come from watch_positions' pushes and the broker's own REST reconciliation:
        # ccxt.pro's background snapshot request would only add an unbounded, unretried request
        options = {
            "warnOnFetchOpenOrdersWithoutSymbol": False,
            "watchPositions": {"fetchPositionsSnapshot": False, "awaitPositionsSnapshot": False},
        }
        exchange = make_exchange(
            cfg.exchange.name,
            pro=True,
            credentials=credentials,
            timeout_ms=timeout_ms,
            options=options,
            rate_limit_ms=getattr(cfg.broker.config, "rate_limit_ms", None),
        )
        try:
            check_capabilities(exchange, cfg.exchange.name, required_capabilities(self.broker, self.runtime.instrument, self.testnet))
            if self.testnet:
                exchange.set_sandbox_mode(True)
            if self.url:
                point_at(exchange, self.url)
            install_gate(exchange)
            await retrying(exchange.load_markets, attempts=20)
            if self.runtime.instrument.symbol not in exchange.markets:
                raise ConfigError(f"symbol: {cfg.exchange.name} lists no market {self.runtime.instrument.symbol}")
            self.journal.set("pid", os.getpid())
            self.journal.set(
                "run",
                {
                    "mode": self.mode,
                    "exchange": cfg.exchange.name,
                    "symbol": cfg.symbol,
                    "strategy": cfg.strategy.name,
                    "timeframe": cfg.timeframe,
                    # the strategy's settings the user gave, so quant compare replays the same
                    # strategy without being told them again
                    "strategy_settings": _given_settings(cfg.strategy.config),
                    # a paper bot's sim settings (fill model, cash, margin: those not at their
                    # default), so quant compare replays it with the same rules
                    **({"sim": _sim_settings(cfg.broker.config)} if self.mode == "paper" else {}),
                    "testnet": self.testnet,
                    # whether the account's funding payments are journalled (quant compare)
                    "funding_journalled": isinstance(self.broker, LiveBroker) and journals_funding(exchange),
                    "started": time.time(),
                },
            )
            await self._warm_up(exchange)
            if self.journal.get("first_started_ms") is None:
                # funding is journalled from the bar this journal's first start met (the exchange's clock)
                self.journal.set("first_started_ms", int(self.last_bar_ts + self.tf_ms))
            if isinstance(self.broker, LiveBroker):
                await self.broker.connect(exchange, self.journal)
                # fills journalled from here on reach the strategy at once (fills found while
                # connecting wait in the broker's queue for the first pump after start)
                self.broker.deliver = self.engine.pump
            self.engine.start()
            tasks = [asyncio.create_task(self._bars(exchange)), asyncio.create_task(self._pump())]
            if isinstance(self.broker, LiveBroker):
                tasks += [asyncio.create_task(self.broker.watch()), asyncio.create_task(self._reconcile_loop())]
                if journals_funding(exchange):
                    tasks.append(asyncio.create_task(self._funding_loop(exchange)))
                else:
                    log.info("%s: funding payments are not journalled; quant compare shows the sim's funding only", exchange.id)
            stopper = asyncio.create_task(self.stopping.wait())
            waiting = [stopper, *tasks]
            if self.max_seconds:
                waiting.append(asyncio.create_task(asyncio.sleep(self.max_seconds)))
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception() is not None:
                    raise task.exception()
            self.engine.stop()
            if isinstance(self.broker, LiveBroker):
                await asyncio.sleep(0)  # let cancels queued by on_stop leave
                await self.broker.close()
                if journals_funding(exchange):  # what was paid since the last turn of the loop
                    try:
                        await asyncio.wait_for(self._journal_funding(exchange), 5)
                    except TimeoutError:
                        log.info("funding history: no answer at stop; the next start journals it")
            self._snapshot()
        finally:
            await exchange.close()
        return self.summary()

    async def _warm_up(self, exchange) -> None:
        """History before the first live bar, so indicators do not start cold (on_bar not called)."""
        rows = await retrying(exchange.fetch_ohlcv, self.config.symbol, self.config.timeframe, limit=self.warmup + 1, attempts=20)
        if not rows:
            raise ExchangeError(f"{self.config.exchange.name} returned no {self.config.timeframe} bars for {self.config.symbol}")
        for row in rows[:-1]:  # the last one is still forming
            self.engine.history.append(_bar(row))
            self.last_bar_ts = int(row[0])
        last = rows[-1]
        self.last_bar_ts = self.last_bar_ts if self.last_bar_ts is not None else int(last[0]) - self.tf_ms
        self._set_market(float(last[4]), int(last[0]))

    def _set_market(self, price: float, now_ms: int) -> None:
        self.market_s = time.time()
        if isinstance(self.broker, PaperBroker):
            if self.broker.bar_arrays is None:
                self.broker.seed_price(price, now_ms)
        else:
            self.broker.set_market(price, now_ms)

    async def _bars(self, exchange) -> None:
        symbol, tf = self.config.symbol, self.config.timeframe
        use_ws = bool(exchange.has.get("watchOHLCV"))
        while True:
            newest = None
            if use_ws:
                try:
                    candles = await exchange.watch_ohlcv(symbol, tf)
                    newest = int(candles[-1][0])
                    self.stream_s = time.time()
                    self._set_market(float(candles[-1][4]), newest)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # dropped socket: REST until it comes back
                    log.info("kline stream: %s; polling REST", type(exc).__name__)
                    await asyncio.sleep(0.5)
            if newest is None or newest >= self.last_bar_ts + 2 * self.tf_ms:
                await self._closed_bars_rest(exchange)
            if not use_ws:
                await asyncio.sleep(min(5.0, self.tf_ms / 4000))

    async def _closed_bars_rest(self, exchange) -> None:
        timeout_s = 2 * exchange.timeout / 1000 + 2.0  # ccxt's timeout + its throttle queue and 429 back-off
        try:
            rows = await asyncio.wait_for(
                exchange.fetch_ohlcv(self.config.symbol, self.config.timeframe, since=self.last_bar_ts + self.tf_ms, limit=1000), timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - the next turn tries again
            log.info("fetch_ohlcv: %s", type(exc).__name__)
            return
        if not rows:
            return
        self._set_market(float(rows[-1][4]), int(rows[-1][0]))
        for row in rows[:-1]:
            if int(row[0]) > self.last_bar_ts:
                self._on_bar(_bar(row))

    def _on_bar(self, bar: Bar) -> None:
        self.last_bar_ts = bar.ts_ms
        self.bars_seen += 1
        if self.max_bars is not None and self.bars_seen >= self.max_bars:
            self.stopping.set()  # this bar is still handled; the loop ends at its next await
        if isinstance(self.broker, PaperBroker):
            self.broker.add_bar(bar)
            while not self.broker.step():
                self.engine.pump()
            self.engine.pump()
        else:
            self.broker.set_market(bar.close, bar.ts_ms + self.tf_ms)
        self.engine.on_bar_closed(bar)

    async def _pump(self) -> None:
        turn = 0
        while True:
            self.engine.pump()
            if turn % 20 == 0:  # at once on start (quant status sees the bot up), then every second or so
                command = self.journal.take_command()
                if command:
                    await self._command(command)
                self._snapshot()
            turn += 1
            await asyncio.sleep(0.05)

    async def _command(self, command: str) -> None:
        log.warning("received quant %s", command)
        if command == "flatten":
            # Flat means flat on the exchange: a resting order can fill while its cancel is on the
            # way, after the close was sized. So the bot stops only once a reconciliation that
            # settled after it looked flat agrees; a position found then is closed again (once
            # nothing of the bot's is open or in flight). Up to 60 s, then it stops anyway.
            self.engine.halt("quant flatten", flatten=True)
            lot, flat_since = self.runtime.instrument.lot_size, None
            for _ in range(600):
                await asyncio.sleep(0.1)
                self.engine.pump()
                quiet = not self.broker.open_orders() and not getattr(self.broker, "_tasks", ())
                if not quiet or _held(self.broker) >= lot / 2:
                    flat_since = None
                    if quiet:
                        self.engine.flatten()
                    continue
                flat_since = flat_since or time.time()
                settled_ms = getattr(self.broker, "last_settled_reconcile_ms", None)
                if not isinstance(self.broker, LiveBroker) or (settled_ms and settled_ms / 1000 > flat_since):
                    break
        else:
            self.engine.halt("quant stop")
        self.stopping.set()

    async def _reconcile_loop(self) -> None:
        """Reconcile every ``broker.reconcile_s`` seconds, sooner when a websocket failed; the state
        is written after each pass, so what it found shows without waiting for the next snapshot."""

        def after() -> None:
            self.engine.pump()
            self._snapshot()

        await self.broker.reconcile_forever(after=after)

    async def _funding_loop(self, exchange) -> None:
        """Journal the account's funding payments every :attr:`funding_poll_s` (:meth:`_journal_funding`).
        Never returns (a task of the bot that ends would stop the bot): only cancelled at stop."""
        said = False
        while True:
            await asyncio.sleep(self.funding_poll_s)
            error = await self._journal_funding(exchange)
            if error and not said:  # said once; asked again every turn (it may be a passing fault)
                log.warning("funding history: %s answered %s; asking again every %g s", exchange.id, error, self.funding_poll_s)
                said = True

    @property
    def funding_poll_s(self) -> float:
        """Funding is paid every few hours: a minute between asks is plenty (and at stop)."""
        return max(60.0, self.broker.config.reconcile_s)

    async def _journal_funding(self, exchange) -> str | None:
        """Journal the account's funding payments on the bot's symbol since this journal's first
        start (ccxt ``fetch_funding_history``: Binance USD-M ``GET /fapi/v1/income`` with
        ``incomeType=FUNDING_FEE``), so ``quant compare`` puts the bot's funding beside the sim's.
        A network fault is logged and left to the next turn; the exchange's refusal is returned."""
        since = max(self.journal.get("first_started_ms") or 0, (self.journal.last_funding_ms() or 0) + 1)
        try:
            rows = await exchange.fetch_funding_history(self.runtime.instrument.symbol, since=since, limit=1000)
        except (ccxt.NetworkError, ccxt.InvalidNonce) as exc:
            log.info("funding history: %s; asking again in %g s", type(exc).__name__, self.funding_poll_s)
            return None
        except ccxt.BaseError as exc:
            return _exchange_message(exc)
        self.journal.record_funding(rows)
        return None

    # --- reporting ------------------------------------------------------------------------
    def state(self) -> dict:
        broker, engine = self.broker, self.engine
        pos = broker.position()
        try:
            margin = broker.margin()
            margin_view = {
                "mode": margin.mode,
                "leverage": margin.leverage,
                "position_margin": margin.position_margin,
                "maintenance_margin": margin.maintenance_margin,
                "available": margin.available_balance,
                "liquidation_price": margin.liquidation_price,
            }
        except ExchangeError:
            margin_view = None
        virtual = sorted(cid for cid, o in engine.orders.items() if o.is_open)
        live = [
            {"client_id": o.client_id, "side": o.side.value, "qty": o.quantity, "price": o.price, "status": o.status.value}
            for o in broker.open_orders()
        ]
        # orders the engine refused before sending (its reasons "risk <check>: ..." and "kill
        # switch engaged: ..."); the exchange's own rejections (e.g. a post-only that would cross)
        # are routine for a maker grid and not counted here
        refused = [o for o in engine.rejections if (o.reason or "").startswith(("risk ", "kill switch"))]
        now, equity = time.time(), broker.equity()
        if self.equity_start is None:
            self.equity_start = equity
            self.journal.set("equity_start", equity)
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        if self.equity_day is None or self.equity_day[0] != day:
            self.equity_day = (day, equity)
            self.journal.set("equity_day", list(self.equity_day))
        return {
            "bot": self.bot,
            "mode": self.mode,
            "pid": os.getpid(),
            "updated": now,
            "market_s": self.market_s,
            "stream_s": self.stream_s,
            "equity_start": self.equity_start,
            "equity_day_start": self.equity_day[1],
            "exchange": self.config.exchange.name,
            "symbol": self.config.symbol,
            "strategy": self.config.strategy.name,
            "price": broker.last_price,
            "position": _position_view(broker, pos),
            "wallet_balance": broker.account().wallet_balance,
            "equity": broker.equity(),
            "margin": margin_view,
            "open_orders_virtual": virtual,
            "open_orders_live": live,
            "bars": self.bars_seen,
            "fills": len(engine.fills),
            "halted": None if engine.halted is None else engine.halted.reason,
            "risk_refusals": len(refused),
            "last_risk_refusal": refused[-1].reason if refused else None,
            "last_reconcile": getattr(broker, "last_reconcile_ms", None),
            "last_settled_reconcile": getattr(broker, "last_settled_reconcile_ms", None),
            "requests_in_flight": len(getattr(broker, "_tasks", ())),
            "in_flight": sorted(t.get_name() for t in getattr(broker, "_tasks", ())),
            "stats": dict(getattr(broker, "stats", {})),
        }

    def _snapshot(self) -> None:
        self.journal.set("state", self.state())

    def summary(self) -> dict:
        out = self.state()
        if isinstance(self.broker, PaperBroker) and self.broker.bar_arrays is not None:
            from btc_quant.core.metrics import build_result

            self.result = build_result(self.engine, self.broker.bar_arrays, self.broker)
            out["report"] = self.result.summary()
        return out


def _held(broker) -> float:
    """The largest position the broker holds: the one-way one, or in hedge mode either side's."""
    sides = ("LONG", "SHORT") if getattr(broker, "position_mode", "one_way") == "hedge" else ("BOTH",)
    return max(abs(broker.position(side).quantity) for side in sides)


def _position_view(broker, pos) -> dict:
    """The state's position: quantity and entry (one-way); in hedge mode the net quantity, no
    single entry, and each side under ``sides`` (``LONG``/``SHORT``: quantity, entry)."""
    if getattr(broker, "position_mode", "one_way") != "hedge":
        return {"quantity": pos.quantity, "entry_price": pos.entry_price}
    sides = {side: broker.position(side) for side in ("LONG", "SHORT")}
    return {
        "quantity": sum(p.quantity for p in sides.values()),
        "entry_price": None,
        "sides": {side: {"quantity": p.quantity, "entry_price": p.entry_price} for side, p in sides.items()},
    }


class _DeliveredMarker:
    """Marks each fill delivered in the journal after the strategy and the observers had it."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    @hookimpl(trylast=True)
    def quant_on_fill(self, fill, run) -> None:
        self.journal.delivered(fill.trade_id)


def _bar(row) -> Bar:
    return Bar(int(row[0]), float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5] or 0.0))


def _strategy_config_for(strategy_config, bot: str):
    """A strategy whose client ids carry its own prefix (``strategy_id``, e.g. maker_vol's ``mv``)
    trades live under the bot's name unless the user chose the id: two bots (two names, see
    BotLock) on one account then get distinct prefixes by construction."""
    if strategy_config is None or "strategy_id" not in type(strategy_config).model_fields:
        return strategy_config
    if "strategy_id" in strategy_config.model_fields_set:
        return strategy_config
    return strategy_config.model_copy(update={"strategy_id": bot})


def _own_prefixes(broker_config, strategy_config, bot: str) -> tuple[str, ...]:
    """Every client-id prefix this live bot trades under (each one leased per account)."""
    prefixes = [f"{bot}-", *getattr(broker_config, "own_prefixes", ())]
    strategy_id = getattr(strategy_config, "strategy_id", None)
    if strategy_id:
        prefixes.append(f"{strategy_id}:")
    return tuple(dict.fromkeys(prefixes))


def _given_settings(config, keep=None) -> dict:
    """The settings of a plugin's config the user gave (config file, environment, command line),
    as ``quant run`` values (``key=value`` text), optionally only those named in ``keep``."""
    if config is None:
        return {}
    given = config.model_dump(mode="json", include=set(config.model_fields_set))
    return {k: _as_setting(v) for k, v in given.items() if v is not None and (keep is None or k in keep)}


def _as_setting(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _sim_settings(broker_config) -> dict:
    """The paper broker's settings the user gave that the sim has."""
    from btc_quant.plugins.brokers.sim import SimConfig

    return _given_settings(broker_config, SimConfig.model_fields)


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def journals_funding(exchange) -> bool:
    """Whether a live bot journals this exchange's funding payments: only where the sign of ccxt's
    ``amount`` is known. Binance's income is "> 0 received" (USD-M "Get Income History"); other
    venues' rows (Bybit's are execution fees) are not journalled rather than journalled with a
    guessed sign."""
    return exchange.id == "binanceusdm" and bool(exchange.has.get("fetchFundingHistory"))


def _exchange_message(exc: BaseException) -> str:
    """The exchange's own words from a ccxt error (``binanceusdm {"code": -2015, "msg": "..."}``)."""
    text = secrets.mask(str(exc))
    _, _, body = text.partition(" ")
    try:
        return str(json.loads(body).get("msg", body))
    except (ValueError, AttributeError):
        return text

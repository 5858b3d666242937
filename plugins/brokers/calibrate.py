"""``quant calibrate``: how wrong are bar fills? Replay a strategy's orders on the real tape, fit ``prob``.

For each window of stored trades (a stretch without a gap of more than ``gap`` between prints):

1. 1-minute bars are built from the trades in SQL (:meth:`TradeTables.trade_bars`), and the
   strategy (``maker_vol`` by default, with its settings scaled to a few minutes unless given) is
   backtested on them with the ``through`` fill model. Its limit orders are the sample: each is
   live from the bar after the one it was decided on (``created`` + 1 bar) until its cancel takes
   effect (``updated`` + 1 bar) or the window ends.
2. The same orders are filled three ways: the queue replay on the tape
   (:mod:`.sim_queue`, with the stored best bid/offer when there is one), and on the bars with
   ``through`` and ``touch`` (:data:`~btc_quant.sdk.THROUGH` / :data:`~btc_quant.sdk.TOUCH`, the
   rules the sim uses).
3. ``prob`` is fitted on (a) every bar on which one of those orders was live and reached
   (``touch`` would fill it), labelled by whether the queue replay filled it on that bar, and (b)
   probe orders (:func:`probe_orders`: in every minute, one at each tick from the bar's extreme to
   ``probe_depth`` ticks inside it, resting from the minute's start to its end), because a
   strategy's own orders rarely sit exactly at a bar's extreme. Features: how far the bar traded
   past the order in ticks, and the bar's volume; a logistic regression
   ``p = 1 / (1 + exp(-(b0 + b1 * ticks_past + b2 * ln(1 + volume))))`` fitted by Newton's method.
   Saved as ``<data dir>/calibrations/NAME.json`` with its sample size.

The report is per window and in total: orders, share filled under queue / through / touch, and
the model. Fill rates count an order filled if any of it filled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer

from btc_quant.core.trades import TradeArrays
from btc_quant.sdk import THROUGH, TOUCH, BarArrays, ConfigError, DataError, hookimpl

from .sim_queue import QueueParams, replay_orders

MINUTE_MS = 60_000
#: maker_vol's grid scaled to a window of minutes (its defaults are for months): top at the recent
#: high, 1 % deep, levels and take-profits 2 bp apart, recomputed every minute.
SCALED_MAKER_VOL = (
    "strategy.lookback=5m",
    "strategy.top_ratio=1.0",
    "strategy.bottom_ratio=0.99",
    "strategy.step_pct=0.0002",
    "strategy.tp_pct=0.0002",
    "strategy.recompute=1m",
)


@dataclass
class Calibration:
    """A fitted ``prob`` bar fill model: P(fill on a bar | the bar reached the order)."""

    name: str
    coef: list[float]  # b0, b1 (ticks past), b2 (ln(1 + bar volume))
    samples: int  # bars on which a live order was reached
    fills: int  # of those, bars on which the queue replay filled it
    orders: int
    tick: float
    latency_ms: int
    queue_qty: float | None  # None: each window's median displayed quantity (see windows)
    median_bar_volume: float = 0.0  # of the samples' bars
    extreme_probes: int = 0  # probe orders exactly at a bar's low (buys) / high (sells): touch fills them all
    extreme_probe_fills: int = 0  # of those, filled by the queue replay
    windows: list[dict] = field(default_factory=list)
    created: str = ""

    def probability(self, ticks_past, volume) -> np.ndarray:
        b0, b1, b2 = self.coef
        z = b0 + b1 * np.asarray(ticks_past, float) + b2 * np.log1p(np.asarray(volume, float))
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, folder: Path, name: str) -> Calibration:
        path = folder / f"{name}.json"
        if not path.exists():
            known = sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []
            raise ConfigError(
                f"calibration {name!r}: no {path}", hint=f"known: {', '.join(known)}" if known else "make one with quant calibrate"
            )
        return cls(**json.loads(path.read_text()))


def windows_of(ts: np.ndarray, gap_ms: int) -> list[tuple[int, int]]:
    """``[(first ts, last ts + 1)]`` of stretches with no gap longer than ``gap_ms`` between prints."""
    if len(ts) == 0:
        return []
    cuts = np.flatnonzero(np.diff(ts) > gap_ms)
    starts = np.r_[0, cuts + 1]
    ends = np.r_[cuts, len(ts) - 1]
    return [(int(ts[a]), int(ts[b]) + 1) for a, b in zip(starts, ends)]


def full_minutes(bars: BarArrays, first_ms: int, end_ms: int) -> BarArrays:
    """The bars whose whole minute the tape covers."""
    keep = (bars.ts >= first_ms) & (bars.ts + MINUTE_MS <= end_ms)
    return BarArrays(*(getattr(bars, c)[keep] for c in ("ts", "open", "high", "low", "close", "volume")))


def epoch_ms(times: pd.Series) -> np.ndarray:
    """Timestamps of any unit (results carry microseconds) as int64 ms since the epoch."""
    return ((pd.to_datetime(times, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).to_numpy(np.int64)


def strategy_orders(result, bars: BarArrays) -> pd.DataFrame:
    """The limit orders of a backtest as replay orders: live from the bar after the decision until
    the bar after a cancel (see module doc)."""
    o = result.orders
    o = o[(o["type"] == "limit") & o["price"].notna()].copy()
    created = epoch_ms(o["created"])
    updated = epoch_ms(o["updated"])
    cancelled = o["status"].isin(["canceled", "cancelled", "expired"]).to_numpy()
    return (
        pd.DataFrame(
            {
                "side": np.where(o["side"] == "buy", 1, -1),
                "price": o["price"].to_numpy(float),
                "qty": o["quantity"].to_numpy(float),
                "place_ts": created + MINUTE_MS,
                "cancel_ts": np.where(cancelled, updated + MINUTE_MS, np.iinfo(np.int64).max),
            }
        )
        .query("place_ts <= @bars.ts[-1]")
        .reset_index(drop=True)
    )


def bar_outcomes(orders: pd.DataFrame, bars: BarArrays, tick: float, fills_ts: np.ndarray) -> dict:
    """Per order: filled under through / touch on the bars; and the (order, bar) samples for ``prob``
    (bars where the order was live and reached, label = the queue replay filled it on that bar)."""
    through = np.zeros(len(orders), dtype=bool)
    touch = np.zeros(len(orders), dtype=bool)
    ticks, volume, label = [], [], []
    for k, order in enumerate(orders.itertuples()):
        live = (bars.ts >= order.place_ts // MINUTE_MS * MINUTE_MS) & (bars.ts < order.cancel_ts)
        first_fill = fills_ts[k]
        for j in np.flatnonzero(live):
            if first_fill >= 0 and first_fill < bars.ts[j]:
                break  # the queue replay filled it earlier: no longer resting
            if order.side > 0:
                reached, past = TOUCH.buy_fills(order.price, bars.low[j]), (order.price - bars.low[j]) / tick
                through[k] |= THROUGH.buy_fills(order.price, bars.low[j])
            else:
                reached, past = TOUCH.sell_fills(order.price, bars.high[j]), (bars.high[j] - order.price) / tick
                through[k] |= THROUGH.sell_fills(order.price, bars.high[j])
            if not reached:
                continue
            touch[k] = True
            ticks.append(round(past, 6))
            volume.append(bars.volume[j])
            label.append(bool(first_fill >= 0 and bars.ts[j] <= first_fill < bars.ts[j] + MINUTE_MS))
    return {"through": through, "touch": touch, "ticks": np.array(ticks), "volume": np.array(volume), "label": np.array(label)}


def probe_orders(bars: BarArrays, trades: TradeArrays, tick: float, depth: int) -> pd.DataFrame:
    """Probe orders for the fit: in every minute, a buy at each tick from the bar's low up to
    ``depth`` ticks above it and a sell at each tick from the high down, placed at the minute's
    start where they would rest (below / above the last print before it), cancelled at its end."""
    rows = []
    for j in range(len(bars)):
        t0 = int(bars.ts[j])
        before = int(np.searchsorted(trades.ts, t0, "left")) - 1
        last = float(trades.price[before]) if before >= 0 else float(bars.open[j])
        for k in range(depth + 1):
            buy = round(bars.low[j] + k * tick, 10)
            sell = round(bars.high[j] - k * tick, 10)
            if buy < last - tick / 2:
                rows.append((1, buy, k, t0))
            if sell > last + tick / 2:
                rows.append((-1, sell, k, t0))
    frame = pd.DataFrame(rows, columns=["side", "price", "ticks_past", "place_ts"])
    frame["qty"] = 0.001
    frame["cancel_ts"] = frame["place_ts"] + MINUTE_MS
    return frame


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3, steps: int = 50) -> np.ndarray:
    """Maximum-likelihood logistic regression (Newton's method, a small ridge keeps it finite when
    the classes separate); ``x`` without the intercept column."""
    X = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ w, -30, 30)))
        grad = X.T @ (p - y) + ridge * w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + ridge * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-9:
            break
    return w


@dataclass
class WindowResult:
    start_ms: int
    end_ms: int
    trades: int
    quotes: int
    orders: int
    queue: int
    through: int
    touch: int
    queue_qty: float = 0.0  # quantity assumed ahead at prices no quote showed


def calibrate(
    store,
    exchange: str,
    symbol: str,
    strategy_settings: list[str],
    *,
    name: str,
    tick: float,
    latency_ms: int = 0,
    queue_qty: float | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    gap_ms: int = 5 * MINUTE_MS,
    probe_depth: int = 5,
    plugins=None,
) -> tuple[Calibration, list[WindowResult]]:
    """Everything ``quant calibrate`` does except printing (see module doc). ``queue_qty`` None: the
    median displayed best bid/offer quantity of each window's quotes (1.0 where it has none)."""
    from btc_quant.core.run import backtest

    trades_all = store.read_trades(exchange, symbol, start_ms, end_ms)
    if len(trades_all) == 0:
        raise DataError(
            f"no {exchange} {symbol} trades stored" + ("" if start_ms is None else " in that range"),
            hint=f"quant data import TAPE.parquet exchange={exchange} symbol={symbol} kind=trades",
        )
    quotes_all = store.read_quotes(exchange, symbol, start_ms, end_ms)
    spans = [
        (lo, hi, full_minutes(store.trade_bars(exchange, symbol, "1m", lo, hi), lo, hi)) for lo, hi in windows_of(trades_all.ts, gap_ms)
    ]
    close = getattr(store, "close", None)
    if store.lazy and callable(close):
        close()  # the backtests below open the store themselves (funding history); chDB allows one holder
    results, xs, ys, total_orders, extreme = [], [], [], 0, [0, 0]
    for lo, hi, bars in spans:
        if len(bars) < 2:
            continue
        # the tape inside the full minutes only, so bars and replay see the same prints
        lo, hi = int(bars.ts[0]), int(bars.ts[-1]) + MINUTE_MS
        trades = trades_all[(trades_all.ts >= lo) & (trades_all.ts < hi)]
        quotes = quotes_all[(quotes_all.ts >= lo) & (quotes_all.ts < hi)]
        qq = queue_qty if queue_qty is not None else (float(np.median(np.r_[quotes.bid_qty, quotes.ask_qty])) if len(quotes) else 1.0)
        params = QueueParams(latency_ms=latency_ms, queue_qty=qq, tick=tick)
        run = backtest(
            [f"exchange={exchange}", f"symbol={symbol}", "broker.fill_model=through", *strategy_settings], bars=bars, plugins=plugins
        )
        orders = strategy_orders(run, bars)
        if orders.empty:
            results.append(WindowResult(lo, hi, len(trades), len(quotes), 0, 0, 0, 0, qq))
            continue
        replay = replay_orders(trades, orders, params, quotes if len(quotes) else None)
        first = np.full(len(orders), -1, dtype=np.int64)
        if len(replay.fills):
            firsts = replay.fills.groupby("order")["ts"].min()
            first[firsts.index.to_numpy()] = firsts.to_numpy()
        out = bar_outcomes(replay.orders, bars, tick, first)
        results.append(
            WindowResult(
                lo,
                hi,
                len(trades),
                len(quotes),
                len(orders),
                int((first >= 0).sum()),
                int(out["through"].sum()),
                int(out["touch"].sum()),
                qq,
            )
        )
        total_orders += len(orders)
        if len(out["label"]):
            xs.append(np.column_stack([out["ticks"], np.log1p(out["volume"])]))
            ys.append(out["label"].astype(float))
        if probe_depth >= 0:
            probes = probe_orders(bars, trades, tick, probe_depth)
            filled = replay_orders(trades, probes, params, quotes if len(quotes) else None).orders
            minute = np.searchsorted(bars.ts, filled["place_ts"].to_numpy())
            xs.append(np.column_stack([filled["ticks_past"].to_numpy(float), np.log1p(bars.volume[minute])]))
            ys.append((filled["filled"].to_numpy() > 0).astype(float))
            at = filled["ticks_past"].to_numpy() == 0
            extreme[0] += int(at.sum())
            extreme[1] += int((filled["filled"].to_numpy()[at] > 0).sum())
    if not xs:
        raise DataError(
            f"{exchange} {symbol}: no bar reached any of the strategy's orders; nothing to fit",
            hint="use a longer window, or strategy settings that place orders near the price",
        )
    x, y = np.vstack(xs), np.concatenate(ys)
    coef = fit_logistic(x, y)
    calibration = Calibration(
        name=name,
        coef=[float(c) for c in coef],
        samples=int(len(y)),
        fills=int(y.sum()),
        orders=total_orders,
        tick=tick,
        latency_ms=latency_ms,
        queue_qty=queue_qty,
        median_bar_volume=float(np.expm1(np.median(x[:, 1]))),
        extreme_probes=extreme[0],
        extreme_probe_fills=extreme[1],
        windows=[asdict(r) for r in results],
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return calibration, results


# ----------------------------------------------------------------------------------------------
# From a bot's own fills


def journal_maker_orders(
    orders: pd.DataFrame, fills: pd.DataFrame, *, paper: bool, bar_ms: int = MINUTE_MS
) -> tuple[pd.DataFrame, np.ndarray]:
    """A bot's journalled limit orders that rested (not rejected, not expired on arrival) as replay
    orders (side, price, qty, place_ts, cancel_ts) and the time of each one's first fill (-1: none).

    A paper bot's journal carries the sim's clock, the open of the bar the order was decided on:
    it rests from the next bar, and a cancel takes effect after the bar it was decided on (as
    :func:`strategy_orders`); but one placed inside a bar (a take-profit after a fill) that filled
    on that same bar rested on it, so that bar counts. A live bot's carries the exchange's clock: it
    rests from then."""
    o = orders[(orders["type"] == "limit") & orders["price"].notna() & (orders["status"] != "rejected")]
    o = o[~((o["status"] == "expired") & (o["updated_ms"] <= o["created_ms"]) & (o["filled_qty"].fillna(0) <= 0))]
    shift = bar_ms if paper else 0
    ended = o["status"].isin(["canceled", "cancelled", "expired"]).to_numpy()
    first_by_order = fills.groupby("client_id")["ts_ms"].min() if len(fills) else pd.Series(dtype="int64")
    first = o["client_id"].map(first_by_order).fillna(-1).to_numpy(np.int64)
    created = o["created_ms"].to_numpy(np.int64)
    same_bar = (first >= 0) & (first < created + shift)
    frame = pd.DataFrame(
        {
            "side": np.where(o["side"] == "buy", 1, -1),
            "price": o["price"].to_numpy(float),
            "qty": o["quantity"].to_numpy(float),
            "place_ts": np.where(same_bar, created, created + shift),
            "cancel_ts": np.where(ended, o["updated_ms"].to_numpy(np.int64) + shift, np.iinfo(np.int64).max),
        }
    )
    return frame.reset_index(drop=True), first


def calibrate_from_bot(
    bot: str, orders: pd.DataFrame, first_fill_ts: np.ndarray, bars: BarArrays, *, name: str, tick: float
) -> Calibration:
    """``prob`` fitted on a bot's own maker orders: :func:`bar_outcomes` of each order on each bar it
    rested through (labelled by whether the bot's order filled on that bar), :func:`fit_logistic`."""
    if orders.empty:
        raise DataError(f"bot {bot!r}: its journal has no maker (limit) orders that rested; nothing to fit")
    out = bar_outcomes(orders, bars, tick, first_fill_ts)
    if len(out["label"]) == 0:
        raise DataError(f"bot {bot!r}: no bar reached any of its {len(orders)} maker orders; nothing to fit", hint="let the bot run longer")
    x = np.column_stack([out["ticks"], np.log1p(out["volume"])])
    y = out["label"].astype(float)
    coef = fit_logistic(x, y)
    return Calibration(
        name=name,
        coef=[float(c) for c in coef],
        samples=int(len(y)),
        fills=int(y.sum()),
        orders=len(orders),
        tick=tick,
        latency_ms=0,
        queue_qty=None,
        median_bar_volume=float(np.expm1(np.median(x[:, 1]))),
        windows=[
            {
                "bot": bot,
                "start_ms": int(bars.ts[0]),
                "end_ms": int(bars.ts[-1]) + MINUTE_MS,
                "orders": len(orders),
                "filled": int((first_fill_ts >= 0).sum()),
                "through": int(out["through"].sum()),
                "touch": int(out["touch"].sum()),
            }
        ],
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def bot_calibration(bot: str, name: str, plugins) -> Calibration:
    """``quant calibrate --bot BOT``: the bot's journal and the stored 1m bars of its exchange and
    symbol over its period; see :func:`calibrate_from_bot`."""
    from btc_quant.core.config import load_run_config
    from btc_quant.core.data import ms_to_iso
    from btc_quant.core.instruments import instrument_for
    from btc_quant.core.paths import data_dir
    from btc_quant.core.run import build_runtime, load_bars
    from btc_quant.plugins.exchanges.compare import bot_period, read_journal
    from btc_quant.plugins.exchanges.journal import journal_path

    journal, orders, run = read_journal(journal_path(data_dir(), bot))
    if orders.empty:
        raise DataError(f"bot {bot!r}: its journal has no orders; nothing to fit")
    if not run.get("exchange") or not run.get("symbol"):
        raise DataError(f"bot {bot!r}: its journal does not say its exchange and symbol (no run record)")
    maker, first = journal_maker_orders(orders, journal, paper=run.get("mode") == "paper")
    if maker.empty:
        raise DataError(f"bot {bot!r}: its journal has no maker (limit) orders that rested; nothing to fit")
    start, end = bot_period(orders, journal, run)
    stamp = lambda ms: pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()  # noqa: E731
    cfg = load_run_config(
        [f"exchange={run['exchange']}", f"symbol={run['symbol']}", "timeframe=1m", f"data.start={stamp(start)}", f"data.end={stamp(end)}"],
        plugins.registry,
    )
    runtime = build_runtime(cfg, plugins, mode="data")
    try:
        bars = load_bars(cfg, runtime).bars
    except DataError as e:
        raise DataError(f"bot {bot!r}: {e}", hint=e.hint) from None
    finally:
        runtime.close()
    last = int(max(maker["place_ts"].max(), orders["updated_ms"].max())) // MINUTE_MS * MINUTE_MS
    if len(bars) == 0 or bars.ts[0] > start or bars.ts[-1] < min(last, end - MINUTE_MS):
        have = f"{ms_to_iso(bars.ts[0])} .. {ms_to_iso(bars.ts[-1])}" if len(bars) else "none"
        raise DataError(
            f"bot {bot!r}: the {run['exchange']} {run['symbol']} 1m bars of its period {ms_to_iso(start)} .. {ms_to_iso(end)} "
            f"are not in the store (have {have})",
            hint=f"quant data fetch exchange={run['exchange']} symbol={run['symbol']} timeframe=1m start=... end=...",
        )
    tick = instrument_for(cfg.exchange.name, cfg.symbol, cfg.instrument).tick_size
    return calibrate_from_bot(bot, maker, first, bars, name=name, tick=tick)


# ----------------------------------------------------------------------------------------------
# The command


def register(app) -> None:
    @app.command("calibrate")
    def calibrate_cmd(
        settings: Optional[list[str]] = typer.Argument(
            None, help="exchange=binanceusdm symbol=BTC/USDT:USDT strategy=maker_vol [strategy.*=...] [start= end=]"
        ),
        name: str = typer.Option(
            "default",
            "--name",
            help="name of the calibration (broker.fill_model=prob broker.calibration=NAME; --fill-band picks up 'default' by itself)",
        ),
        latency_ms: int = typer.Option(0, "--latency-ms", min=0, help="order entry and cancel latency of the queue replay"),
        queue_qty: Optional[float] = typer.Option(
            None,
            "--queue-qty",
            min=0,
            help="quantity assumed ahead where no best bid/offer shows it (default: the window's median displayed quantity)",
        ),
        bot: Optional[str] = typer.Option(
            None, "--bot", help="fit on a paper or live bot's own maker orders and fills (its journal) instead of a replay"
        ),
    ) -> None:
        """Replay a strategy's orders on stored trades (queue) and on bars (through, touch); fit and save `prob`.
        With --bot: fit it on a bot's own maker orders and fills over the stored bars of its period."""
        if bot is not None:
            _calibrate_bot_cmd(bot, name, settings or [])
            return
        from btc_quant.core.cli.data_cmd import _settings, open_store
        from btc_quant.core.config import load_run_config
        from btc_quant.core.data import ms_to_iso
        from btc_quant.core.instruments import instrument_for
        from btc_quant.core.paths import data_dir
        from btc_quant.core.plugins import load_plugins

        pairs = _settings(settings or [])
        strategy = [p for p in pairs if p.startswith("strategy")]
        if not strategy:
            strategy = ["strategy=maker_vol", *SCALED_MAKER_VOL]
        elif strategy == ["strategy=maker_vol"]:
            strategy += list(SCALED_MAKER_VOL)
        plugins = load_plugins()
        cfg = load_run_config([p for p in pairs if not p.startswith("strategy")], plugins.registry)
        tick = instrument_for(cfg.exchange.name, cfg.symbol, cfg.instrument).tick_size
        _, store = open_store(cfg, plugins)
        try:
            start = None if cfg.data.start is None else int(cfg.data.start.timestamp() * 1000)
            end = None if cfg.data.end is None else int(cfg.data.end.timestamp() * 1000)
            calibration, windows = calibrate(
                store,
                cfg.exchange.name,
                cfg.symbol,
                strategy,
                name=name,
                tick=tick,
                latency_ms=latency_ms,
                queue_qty=queue_qty,
                start_ms=start,
                end_ms=end,
                plugins=plugins,
            )
        finally:
            store.close()
        path = calibration.save(data_dir() / "calibrations")
        typer.echo(f"maker fills of {strategy[0].split('=')[1]}'s orders: queue replay vs bars (through, touch)")
        typer.echo(
            f"{'window (UTC)':<36} {'trades':>7} {'quotes':>7} {'ahead':>6} {'orders':>6} {'queue':>12} {'through':>12} {'touch':>12}"
        )

        def share(n: int, of: int) -> str:
            return f"{n:>4} {n / of:6.1%}" if of else f"{n:>4}    -  "

        for w in windows:
            span = f"{ms_to_iso(w.start_ms)} .. {ms_to_iso(w.end_ms)[-5:]}"
            typer.echo(
                f"{span:<36} {w.trades:>7,} {w.quotes:>7,} {w.queue_qty:>6.2f} {w.orders:>6} {share(w.queue, w.orders):>12} "
                f"{share(w.through, w.orders):>12} {share(w.touch, w.orders):>12}"
            )
        n = sum(w.orders for w in windows)
        typer.echo(
            f"{'all':<36} {sum(w.trades for w in windows):>7,} {sum(w.quotes for w in windows):>7,} {'':>6} {n:>6} "
            f"{share(sum(w.queue for w in windows), n):>12} {share(sum(w.through for w in windows), n):>12} "
            f"{share(sum(w.touch for w in windows), n):>12}"
        )
        if calibration.extreme_probes:
            typer.echo(
                f"probe orders at a bar's extreme (touch fills all): {calibration.extreme_probes}, filled by the queue "
                f"replay: {calibration.extreme_probe_fills} ({calibration.extreme_probe_fills / calibration.extreme_probes:.1%})"
            )
        b0, b1, b2 = calibration.coef
        typer.echo(
            f"prob: P(fill on a bar that reached the order) = 1 / (1 + exp(-({b0:.3f} + {b1:.3f} x ticks past + "
            f"{b2:.3f} x ln(1 + bar volume))))"
        )
        typer.echo(
            f"      fitted on {calibration.samples} order-bars ({calibration.fills} filled by the queue replay) "
            f"from {calibration.orders} orders"
        )
        vol = calibration.median_bar_volume
        at = ", ".join(f"{t} ticks past {float(calibration.probability(t, vol)):.1%}" for t in (0, 1, 5, 20))
        typer.echo(f"      at the median bar volume ({vol:,.1f}): {at}")
        typer.echo(f"saved calibration {name!r} to {path}")


def _calibrate_bot_cmd(bot: str, name: str, settings: list[str]) -> None:
    from btc_quant.core.paths import data_dir
    from btc_quant.core.plugins import load_plugins

    if settings:
        raise ConfigError(
            f"quant calibrate --bot {bot}: settings are not used with --bot: {' '.join(settings)}",
            hint="the bot's journal gives its exchange, symbol and period",
        )
    c = bot_calibration(bot, name, load_plugins())
    path = c.save(data_dir() / "calibrations")
    w = c.windows[0]
    typer.echo(
        f"bot {bot}: {c.orders} maker orders, {w['filled']} filled; bars reached {w['touch']} of them, traded through {w['through']}"
    )
    b0, b1, b2 = c.coef
    typer.echo(
        f"prob: P(fill on a bar that reached the order) = 1 / (1 + exp(-({b0:.3f} + {b1:.3f} x ticks past + "
        f"{b2:.3f} x ln(1 + bar volume))))"
    )
    typer.echo(f"      fitted on {c.samples} order-bars ({c.fills} filled) from {c.orders} orders of bot {bot}")
    vol = c.median_bar_volume
    at = ", ".join(f"{t} ticks past {float(c.probability(t, vol)):.1%}" for t in (0, 1, 5, 20))
    typer.echo(f"      at the median bar volume ({vol:,.1f}): {at}")
    typer.echo(f"saved calibration {name!r} to {path}")


@hookimpl
def quant_register_commands(cli):
    register(cli)

"""``quant compare BOT``: a live (or paper) bot's fills against the sim's over the same period.

The bot's journal (``$QUANT_HOME/live/BOT.db``, :mod:`.journal`) holds every fill it got from the
exchange, and the strategy, timeframe and strategy settings it ran with. The same strategy is
backtested on the ``sim`` broker over the bot's period (from its first order to its last order
update or fill; ``start=``/``end=`` override) on the stored bars (else the bundled sample), and the
two fill lists are matched; ``strategy.*`` settings given to ``quant compare`` override the
journalled ones. A paper bot's journal also holds its sim settings (fill model, cash, margin), and
the replay uses them; ``broker.*`` settings given to ``quant compare`` that the sim has override them. The period ends after the
last bar the bot saw (its last snapshot's bar count) or its last order update, whichever is later.

Matching:

* a live fill and a sim fill **match** when they are the same side of the same virtual order (the
  order tag, e.g. ``g6:entry``; orders without a tag: the same side within ``--price-tol`` of each
  other) within ``--time-tol`` of each other, nearest in time first;
* live fills with no partner are **missed** by the sim, sim fills with no partner are **extra**.

The PnL of each side is its fills marked at the period's last close ``P`` (both start flat):
``sum(s * q * (P - price) - fee)`` with ``s`` +1 for a buy, -1 for a sell. So the gap splits exactly
into: missed fills (their ``s*q*(P - price)``), extra fills (minus theirs), price and quantity
differences of matched fills, and fees; the parts add up to the gap. Funding joins both PnLs and
the split (``funding``: the bot's minus the sim's, > 0 received) where the bot's is known: a paper
bot pays none, a live bot on Binance USD-M journals its account's funding payments
(``fetch_funding_history``) while it runs. Elsewhere the bot's funding is unknown and both PnLs
leave funding out; the sim's is shown beside them.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer

from btc_quant.sdk import ConfigError, DataError, hookimpl

MINUTE_MS = 60_000


@dataclass
class Comparison:
    live_fills: int
    sim_fills: int
    matched: int
    missed: int
    extra: int
    mark: float
    pnl_live: float
    pnl_sim: float
    parts: dict[str, float]  # missed fills, extra fills, matched price/qty, fees (, funding): they add up to the gap
    time_to_fill_s: list[float] = field(default_factory=list)  # live minus sim, per matched pair
    price_diff: list[float] = field(default_factory=list)  # live minus sim, per matched pair

    @property
    def gap(self) -> float:
        return self.pnl_live - self.pnl_sim


def _value(side: np.ndarray, qty: np.ndarray, price: np.ndarray, mark: float) -> np.ndarray:
    return side * qty * (mark - price)


def compare_fills(
    live: pd.DataFrame,
    sim: pd.DataFrame,
    mark: float,
    *,
    time_tol_ms: int,
    price_tol: float,
    funding_live: float | None = None,
    funding_sim: float = 0.0,
) -> Comparison:
    """Match two fill lists (columns ts_ms, side +1/-1, price, quantity, fee, tag) and split the
    PnL gap (see module doc). With ``funding_live`` (the bot's funding payments are known, > 0
    received) both PnLs include their funding and the gap gains a ``funding`` part. Pure: no I/O."""
    live = live.sort_values("ts_ms", kind="stable").reset_index(drop=True)
    sim = sim.sort_values("ts_ms", kind="stable").reset_index(drop=True)
    partner = np.full(len(live), -1)
    used = np.zeros(len(sim), dtype=bool)
    for i, row in live.iterrows():
        same = (sim["side"].to_numpy() == row["side"]) & ~used & (np.abs(sim["ts_ms"].to_numpy() - row["ts_ms"]) <= time_tol_ms)
        if row["tag"]:
            same &= sim["tag"].to_numpy() == row["tag"]
        else:
            same &= np.abs(sim["price"].to_numpy() - row["price"]) <= price_tol
        candidates = np.flatnonzero(same)
        if len(candidates):
            j = candidates[np.argmin(np.abs(sim["ts_ms"].to_numpy()[candidates] - row["ts_ms"]))]
            partner[i], used[j] = j, True
    m = partner >= 0
    lv = _value(live["side"].to_numpy(float), live["quantity"].to_numpy(float), live["price"].to_numpy(float), mark)
    sv = _value(sim["side"].to_numpy(float), sim["quantity"].to_numpy(float), sim["price"].to_numpy(float), mark)
    fees_live, fees_sim = float(live["fee"].sum()), float(sim["fee"].sum())
    parts = {
        "missed fills": float(lv[~m].sum()),
        "extra fills": float(-sv[~used].sum()),
        "price/qty of matched fills": float(lv[m].sum() - sv[partner[m]].sum()),
        "fees": float(-(fees_live - fees_sim)),
    }
    funded_live = funded_sim = 0.0
    if funding_live is not None:
        funded_live, funded_sim = float(funding_live), float(funding_sim)
        parts["funding"] = funded_live - funded_sim
    return Comparison(
        live_fills=len(live),
        sim_fills=len(sim),
        matched=int(m.sum()),
        missed=int((~m).sum()),
        extra=int((~used).sum()),
        mark=mark,
        pnl_live=float(lv.sum() - fees_live + funded_live),
        pnl_sim=float(sv.sum() - fees_sim + funded_sim),
        parts=parts,
        time_to_fill_s=[(live["ts_ms"][i] - sim["ts_ms"][partner[i]]) / 1000 for i in np.flatnonzero(m)],
        price_diff=[float(live["price"][i] - sim["price"][partner[i]]) for i in np.flatnonzero(m)],
    )


def read_journal(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(fills, orders, run meta) of a bot's journal, read only."""
    if not path.exists():
        raise ConfigError(f"no journal {path}", hint="quant status lists the bots; BOT is broker.bot of the run (default: paper)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        fills = pd.read_sql_query(
            "select f.ts_ms, f.side, f.price, f.quantity, f.fee, f.client_id, o.tag from fills f "
            "left join orders o on o.client_id = f.client_id order by f.ts_ms, f.rowid",
            db,
        )
        orders = pd.read_sql_query(
            "select client_id, side, type, quantity, price, post_only, status, filled_qty, created_ms, updated_ms, tag from orders", db
        )
        meta = dict(db.execute("select key, value from meta where key in ('run', 'state')").fetchall())
    finally:
        db.close()
    run = json.loads(meta["run"]) if meta.get("run") else {}
    state = json.loads(meta["state"]) if meta.get("state") else {}
    if "bars" in state:
        run["bars"] = int(state["bars"])  # live bars the bot saw (its last snapshot)
    return fills, orders, run


def read_funding(path: Path, symbol: str, start_ms: int, end_ms: int) -> float | None:
    """The funding a bot's account paid or got on ``symbol`` in ``[start_ms, end_ms]`` as its
    journal holds it (> 0 received), or None for a journal that records none (older journals)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute(
            "select count(*), coalesce(sum(amount), 0) from funding where symbol = ? and ts_ms between ? and ?",
            (symbol, int(start_ms), int(end_ms)),
        ).fetchone()
    except sqlite3.OperationalError:  # a journal written before funding was journalled
        return None
    finally:
        db.close()
    return float(row[1])


def bot_period(orders: pd.DataFrame, fills: pd.DataFrame, run: dict, step: int = MINUTE_MS) -> tuple[int, int]:
    """``(start, end)`` ms of a bot's period: from its first order to its last order update or fill,
    and through the last bar it saw (its last snapshot's bar count), on whole bars of ``step``."""
    start = int(orders["created_ms"].min()) // step * step
    end = (int(max(orders["updated_ms"].max(), fills["ts_ms"].max() if len(fills) else 0)) // step + 1) * step
    return start, max(end, start + (int(run.get("bars", 0)) + 1) * step)


def _frame_of_sim(fills: pd.DataFrame) -> pd.DataFrame:
    from btc_quant.plugins.brokers.calibrate import epoch_ms

    return pd.DataFrame(
        {
            "ts_ms": epoch_ms(fills["ts"]),
            "side": np.where(fills["side"] == "buy", 1, -1),
            "price": fills["price"].to_numpy(float),
            "quantity": fills["quantity"].to_numpy(float),
            "fee": fills["fee"].to_numpy(float),
            "tag": fills["tag"].fillna("").astype(str).to_numpy(),
        }
    )


def comparison_sections(c: Comparison, live: pd.DataFrame, sim: pd.DataFrame, result, *, bot: str, funding_bot, funding_sim: float) -> list:
    """The report's bot-vs-sim sections: the counts and the gap's split as a table, and both fill
    lists over time (bot filled markers, sim open ones; buys up, sells down), drawn as the run's
    own fills are (:func:`~btc_quant.core.report.fill_markers`: many fills grouped per time bucket)."""
    import html

    import plotly.graph_objects as go

    from btc_quant.core.report import ReportSection, bucket_ranges, fill_markers

    rows = [
        ("fills: bot / sim", f"{c.live_fills} / {c.sim_fills}"),
        ("matched", str(c.matched)),
        ("missed by the sim", str(c.missed)),
        ("extra in the sim", str(c.extra)),
        ("PnL marked at the last close: bot", f"{c.pnl_live:+,.4f}"),
        ("PnL marked at the last close: sim", f"{c.pnl_sim:+,.4f}"),
        ("gap (bot - sim)", f"{c.gap:+,.4f}"),
        *((f"  {name}", f"{value:+,.4f}") for name, value in c.parts.items()),
        ("funding (> 0 received): bot", "not journalled" if funding_bot is None else f"{funding_bot:+,.4f}"),
        ("funding (> 0 received): sim", f"{funding_sim:+,.4f}"),
    ]
    table = "<table class='metrics compare'>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    table += f"</table><p class='note'>bot {html.escape(bot)}'s journalled fills against this run's; the gap's parts add up to it.</p>"
    bars = result.bar_arrays
    ranges = bucket_ranges(np.asarray(bars.ts)) if bars is not None else None
    edges_ms = None if ranges is None else ranges[1]
    fig = go.Figure()
    for name, frame, filled in (("bot", live, True), ("sim", sim, False)):
        for side, symbol, colour in ((1, "triangle-up", "#2a7"), (-1, "triangle-down", "#c33")):
            part = frame[frame["side"] == side].rename(columns={"ts_ms": "ts"})
            x, y, text = fill_markers(part, edges_ms)
            fig.add_scatter(
                x=x,
                y=y,
                text=text,
                mode="markers",
                name=f"{name} {'buys' if side == 1 else 'sells'} ({len(part)})",
                marker={"symbol": symbol if filled else f"{symbol}-open", "color": colour, "size": 9 if filled else 12},
            )
    fig.update_xaxes(type="date")
    fig.update_layout(xaxis_title="time (UTC)", yaxis_title="fill price", height=420)
    return [
        ReportSection(f"Bot {bot} vs sim", html=table, order=3),
        ReportSection(f"Bot {bot} vs sim: fills", figure=fig, order=4),
    ]


def register(app) -> None:
    @app.command("compare")
    def compare_cmd(
        bot: str = typer.Argument(..., help="the bot's name (broker.bot of its run)"),
        settings: Optional[list[str]] = typer.Argument(
            None, help="the bot's strategy settings (strategy=grid strategy.levels=6 ...), start= end="
        ),
        time_tol: float = typer.Option(180.0, "--time-tol", help="seconds between a live fill and its sim partner at most"),
        price_tol: float = typer.Option(1.0, "--price-tol", help="price difference at most when orders have no tag"),
        report: Optional[Path] = typer.Option(
            None, "--report", help="write the sim run's HTML report with a bot-vs-sim section (the split, both fill lists) here"
        ),
    ) -> None:
        """Match a bot's fills against the sim's over its period; split the PnL gap into causes."""
        from btc_quant.core.config import load_run_config
        from btc_quant.core.data import ms_to_iso
        from btc_quant.core.paths import data_dir
        from btc_quant.core.plugins import load_plugins
        from btc_quant.core.run import backtest

        from .journal import journal_path

        path = journal_path(data_dir(), bot)
        fills, orders, run = read_journal(path)
        if orders.empty:
            raise DataError(f"bot {bot!r}: its journal has no orders; nothing to compare")
        from btc_quant.plugins.brokers.sim import SimConfig

        given = [s for s in (settings or []) if "=" in s]
        dropped = [
            s
            for s in given
            if s.split("=", 1)[0].split(".")[0] == "broker" and s.split("=", 1)[0].partition(".")[2] not in SimConfig.model_fields
        ]
        if dropped:
            typer.echo(f"not used (not a setting of the sim broker the comparison runs): {' '.join(dropped)}", err=True)
        keys = {s.split("=", 1)[0] for s in given}
        base = [f"{k}={run[k]}" for k in ("exchange", "symbol", "strategy", "timeframe") if k in run and k not in keys]
        # the strategy's settings the bot ran with (journalled): those given here override them
        # (a different strategy= takes none of them)
        journalled = run.get("strategy_settings", {}) if run.get("strategy") == _given_strategy(given, run) else {}
        journalled = {k: v for k, v in journalled.items() if f"strategy.{k}" not in keys}
        base += [f"strategy.{k}={v}" for k, v in journalled.items()]
        # a paper bot ran the sim's rules with its own settings (journalled): the replay uses them
        base += [f"broker.{k}={v}" for k, v in run.get("sim", {}).items() if f"broker.{k}" not in keys]
        start, end = bot_period(orders, fills, run)
        shorthand = {"start": "data.start", "end": "data.end"}
        pairs = [f"{shorthand.get(k, k)}={v}" for k, _, v in (s.partition("=") for s in given if s not in dropped)]
        if not any(p.startswith("data.start=") for p in pairs):
            pairs.append(f"data.start={pd.Timestamp(start, unit='ms', tz='UTC').isoformat()}")
        if not any(p.startswith("data.end=") for p in pairs):
            pairs.append(f"data.end={pd.Timestamp(end, unit='ms', tz='UTC').isoformat()}")
        plugins = load_plugins()
        cfg = load_run_config([*base, *pairs, "broker=sim"], plugins.registry)
        result = backtest(cfg, plugins=plugins)
        sim = _frame_of_sim(result.fills)
        live = pd.DataFrame(
            {
                "ts_ms": fills["ts_ms"].astype("int64"),
                "side": np.where(fills["side"] == "buy", 1, -1),
                "price": fills["price"],
                "quantity": fills["quantity"],
                "fee": fills["fee"],
                "tag": fills["tag"].fillna("").astype(str),
            }
        )
        mark = float(result.bar_arrays.close[-1])  # the close of the period's last bar: the mark for both PnLs
        funding_sim = 0.0 - float(result.metrics.get("funding") or 0.0)  # the run's metric is > 0 paid
        if run.get("mode") == "paper":
            funding_bot = 0.0  # a paper bot pays no funding (the paper broker does not simulate it)
        elif run.get("funding_journalled"):
            funding_bot = read_funding(path, cfg.symbol, result.start_ms, result.end_ms)
        else:
            funding_bot = None
        c = compare_fills(
            live, sim, mark, time_tol_ms=int(time_tol * 1000), price_tol=price_tol, funding_live=funding_bot, funding_sim=funding_sim
        )
        typer.echo(
            f"bot {bot} ({run.get('mode', '?')} {cfg.exchange.name} {cfg.symbol} {cfg.strategy.name}) vs sim, "
            f"{ms_to_iso(result.start_ms)} .. {ms_to_iso(result.end_ms)} UTC, {result.bars} bars"
        )
        if journalled:
            typer.echo("strategy settings from the journal: " + " ".join(f"{k}={v}" for k, v in journalled.items()))
        if run.get("sim"):
            typer.echo("sim settings from the journal: " + " ".join(f"{k}={v}" for k, v in run["sim"].items()))
        typer.echo(
            f"fills: bot {c.live_fills}, sim {c.sim_fills}; matched {c.matched}, missed by the sim {c.missed}, extra in the sim {c.extra}"
        )
        if c.matched:
            t, p = np.array(c.time_to_fill_s), np.array(c.price_diff)
            typer.echo(
                f"matched: fill time bot - sim median {np.median(t):+.1f} s (range {t.min():+.1f} .. {t.max():+.1f}); "
                f"price bot - sim mean {p.mean():+.4f} (largest {p[np.argmax(np.abs(p))]:+.4f})"
            )
        typer.echo(f"PnL marked at the last close {c.mark:,.2f}: bot {c.pnl_live:+,.4f}, sim {c.pnl_sim:+,.4f}, gap {c.gap:+,.4f}")
        for name, value in c.parts.items():
            typer.echo(f"  {name:<28} {value:+,.4f}")
        typer.echo(f"  {'= gap':<28} {sum(c.parts.values()):+,.4f}")
        if report is not None:
            from btc_quant.core.report import write_html

            extra = comparison_sections(c, live, sim, result, bot=bot, funding_bot=funding_bot, funding_sim=funding_sim)
            typer.echo(f"report: {write_html(result, report, plugins, extra=extra)}", err=True)
        if funding_bot is None:
            typer.echo(
                f"funding (> 0 received): sim {funding_sim:+,.4f}; this bot's funding payments are not journalled ({run.get('exchange', '?')}), "
                "so both PnLs leave funding out"
            )
        else:
            whose = "paper: none" if run.get("mode") == "paper" else "journalled from the exchange"
            typer.echo(f"funding (> 0 received): bot {funding_bot:+,.4f} ({whose}), sim {funding_sim:+,.4f}; both PnLs include it")


def _given_strategy(given: list[str], run: dict) -> str | None:
    """The strategy ``quant compare`` replays: ``strategy=`` given on its command line, else the bot's."""
    named = [s.split("=", 1)[1] for s in given if s.split("=", 1)[0] == "strategy"]
    return named[-1] if named else run.get("strategy")


@hookimpl
def quant_register_commands(cli):
    register(cli)

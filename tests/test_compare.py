"""``quant compare BOT``: a bot's journalled fills against the sim's, and a PnL gap that adds up."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess

import numpy as np
import pandas as pd
import pytest

from btc_quant.core.config import load_run_config
from btc_quant.plugins.exchanges.compare import compare_fills, read_journal
from btc_quant.plugins.exchanges.driver import LiveRun
from btc_quant.testing.exchange import ExchangeServer, binance_state

START_MS = 1641772800000  # 2022-01-10 00:00 UTC, inside the bundled real perp sample
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PARTS = r"^  (?:missed fills|extra fills|price/qty of matched fills|fees|funding)\s+([+-][\d,.]+)$"
GRID = ["strategy=grid", "strategy.levels=6", "strategy.step_pct=0.0005", "strategy.quantity=0.01"]


def fills(*rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["ts_ms", "side", "price", "quantity", "fee", "tag"])


def test_gap_splits_into_missed_extra_matched_and_fees():
    live = fills((0, 1, 100.0, 1.0, 0.02, "a"), (60_000, 1, 99.0, 1.0, 0.02, "b"), (120_000, -1, 100.5, 1.0, 0.02, "a:tp"))
    sim = fills((30_000, 1, 100.5, 1.0, 0.01, "a"), (90_000, 1, 98.0, 2.0, 0.01, "c"), (600_000, -1, 101.0, 1.0, 0.01, "a:tp"))
    c = compare_fills(live, sim, 101.0, time_tol_ms=120_000, price_tol=1.0)
    assert (c.matched, c.missed, c.extra) == (1, 2, 2)  # a:tp is 480 s apart: beyond the tolerance
    assert c.parts["missed fills"] == pytest.approx((101 - 99) + -(101 - 100.5))
    assert c.parts["extra fills"] == pytest.approx(-(2 * (101 - 98) + -(101 - 101)))
    assert c.parts["price/qty of matched fills"] == pytest.approx((101 - 100) - (101 - 100.5))
    assert c.parts["fees"] == pytest.approx(-(0.06 - 0.03))
    assert sum(c.parts.values()) == pytest.approx(c.gap)
    assert c.time_to_fill_s == [-30.0] and c.price_diff == [-0.5]


def test_compare_a_live_run_on_the_local_exchange(plugins, quant, isolated_env, tmp_path):
    # funding every minute (not every 8 h) so the 25-minute run pays some while the grid holds a position
    funding = tmp_path / "funding.parquet"
    pd.DataFrame({"ts": START_MS + 60_000 * np.arange(1, 120), "rate": 0.0001}).to_parquet(funding)
    state = binance_state(clock_start_ms=START_MS, speed=60, funding_file=funding)  # a 1m bar a second
    with ExchangeServer(state) as server:
        cfg = load_run_config(
            [*GRID, "broker=live", "broker.api_key=local-test-key", "broker.secret=local-test-secret", "broker.bot=cmp"], plugins.registry
        )
        out = LiveRun(cfg, plugins, url=server.url, max_seconds=25, real_money=True, warmup=50).run()
    assert out["bars"] >= 10
    done = quant("compare", "cmp", *GRID, "broker.bot=cmp", env={"QUANT_HOME": str(isolated_env)}, check=True)
    text = done.stdout
    assert "not used" in done.stderr and "broker.bot=cmp" in done.stderr  # said, not dropped silently
    n_bot, n_sim, matched, missed, extra = map(
        int, re.search(r"fills: bot (\d+), sim (\d+); matched (\d+), missed by the sim (\d+), extra in the sim (\d+)", text).groups()
    )
    assert matched + missed == n_bot == out["fills"] and matched + extra == n_sim
    assert n_bot >= 1 and n_sim >= 1, text  # a 0.05 % grid trades within 10+ real 1m bars
    gap = float(re.search(r"gap ([+-][\d,.]+)", text).group(1).replace(",", ""))
    parts = [float(v.replace(",", "")) for v in re.findall(PARTS, text, re.M)]
    assert len(parts) == 5 and sum(parts) == pytest.approx(gap, abs=5e-4)
    # the bot journalled its account's funding payments as the exchange booked them (every one, at
    # stop too), and the comparison puts them in the bot's PnL and in the split
    account = state.trading.accounts["local-test-key"]
    # the exchange's clock runs on (a minute a second) after the bot's last read at stop: a payment
    # booked after that read is not one the bot could have journalled
    assert account.income_read_ms is not None
    booked = {
        str(r["tranId"]): float(r["income"])
        for r in account.income
        if r["incomeType"] == "FUNDING_FEE" and r["time"] <= account.income_read_ms
    }
    db = sqlite3.connect(isolated_env / "live" / "cmp.db")
    journalled = dict(db.execute("select id, amount from funding").fetchall())
    db.close()
    assert booked and journalled == booked  # the grid held a position at some of the 25 funding minutes
    bot_funding = float(re.search(r"funding \(> 0 received\): bot ([+-][\d,.]+) \(journalled", text).group(1).replace(",", ""))
    window = re.search(r"vs sim, (\S+ \S+) \.\. (\S+ \S+) UTC", text).groups()
    start, end = (pd.Timestamp(t, tz="UTC").value // 10**6 for t in window)
    in_window = sum(float(r["income"]) for r in account.income if r["incomeType"] == "FUNDING_FEE" and start <= r["time"] <= end)
    assert bot_funding == pytest.approx(in_window, abs=5e-5) and bot_funding != 0
    # the journal holds the strategy settings the bot ran with: named alone, the bot is replayed
    # with them (the same comparison), and a setting given here overrides its journalled value
    alone = quant("compare", "cmp", env={"QUANT_HOME": str(isolated_env)}, check=True).stdout
    assert "strategy settings from the journal: levels=6 step_pct=0.0005 quantity=0.01" in alone, alone
    assert re.search(r"fills: .*", alone).group(0) == re.search(r"fills: .*", text).group(0)
    wider = quant("compare", "cmp", "strategy.step_pct=0.01", env={"QUANT_HOME": str(isolated_env)}, check=True).stdout
    assert "levels=6 quantity=0.01" in wider and "step_pct=0.0005" not in wider, wider
    assert re.search(r"fills: .*", wider).group(0) != re.search(r"fills: .*", text).group(0)


def test_compare_a_paper_run_on_the_local_exchange(plugins, quant, isolated_env):
    """A paper bot journals its orders and fills (and its sim settings); quant compare replays its
    period through the sim with them and accounts for every fill on both sides."""
    state = binance_state(clock_start_ms=START_MS, speed=600)  # a 1m bar every 0.1 s
    with ExchangeServer(state) as server:
        cfg = load_run_config([*GRID, "broker=paper", "broker.bot=pcmp", "broker.fill_model=touch"], plugins.registry)
        run = LiveRun(cfg, plugins, url=server.url, max_seconds=120, max_bars=40, warmup=50)
        out = run.run()
    paper = run.engine.fills
    assert out["bars"] >= 20 and paper, "a 0.05 % grid trades within 20+ real 1m bars"
    done = quant("compare", "pcmp", *GRID, env={"QUANT_HOME": str(isolated_env)}, check=True)
    text = done.stdout
    assert "(paper " in text and "sim settings from the journal: fill_model=touch" in text, text
    n_bot, n_sim, matched, missed, extra = map(
        int, re.search(r"fills: bot (\d+), sim (\d+); matched (\d+), missed by the sim (\d+), extra in the sim (\d+)", text).groups()
    )
    assert matched + missed == n_bot == len(paper) and matched + extra == n_sim, text
    # the journal holds exactly the fills the paper engine handed the strategy
    journal = read_journal(isolated_env / "live" / "pcmp.db")[0]
    assert journal["client_id"].tolist() == [f.client_id for f in paper]
    assert journal["price"].tolist() == [f.price for f in paper] and journal["fee"].tolist() == [f.fee for f in paper]
    assert journal["tag"].tolist() == [f.tag for f in paper]
    # the bot's PnL is its journalled fills marked at the last close: the paper engine's own fills
    mark = float(re.search(r"PnL marked at the last close ([\d,.]+)", text).group(1).replace(",", ""))
    pnl_bot = float(re.search(r"bot ([+-][\d,.]+), sim", text).group(1).replace(",", ""))
    expected = sum((1 if f.side.value == "buy" else -1) * f.quantity * (mark - f.price) - f.fee for f in paper)
    assert pnl_bot == pytest.approx(expected, abs=5e-4)
    pnl_sim = float(re.search(r"sim ([+-][\d,.]+), gap", text).group(1).replace(",", ""))
    gap = float(re.search(r"gap ([+-][\d,.]+)", text).group(1).replace(",", ""))
    assert gap == pytest.approx(pnl_bot - pnl_sim, abs=1e-3)
    parts = [float(v.replace(",", "")) for v in re.findall(PARTS, text, re.M)]
    assert len(parts) == 5 and sum(parts) == pytest.approx(gap, abs=5e-4)
    assert "funding (> 0 received): bot +0.0000 (paper: none)" in text, text


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_compare_report_section_renders_in_chromium(plugins, quant, isolated_env, tmp_path):
    """``quant compare BOT --report F``: the sim run's report with the bot-vs-sim table (the same
    numbers as printed) and both fill lists, drawn by headless Chromium without a script error."""
    state = binance_state(clock_start_ms=START_MS, speed=600)
    with ExchangeServer(state) as server:
        cfg = load_run_config([*GRID, "broker=paper", "broker.bot=prep"], plugins.registry)
        LiveRun(cfg, plugins, url=server.url, max_seconds=60, max_bars=15, warmup=50).run()
    page = tmp_path / "compare.html"
    done = quant("compare", "prep", "--report", str(page), env={"QUANT_HOME": str(isolated_env)}, check=True)
    gap = re.search(r"gap ([+-][\d,.]+)", done.stdout).group(1)
    n_bot, n_sim = re.search(r"fills: bot (\d+), sim (\d+)", done.stdout).groups()
    text = page.read_text()
    assert "Bot prep vs sim" in text and f"<th>gap (bot - sim)</th><td>{gap}</td>" in text
    assert f"<th>fills: bot / sim</th><td>{n_bot} / {n_sim}</td>" in text
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000"]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    html_tag = dom.stdout[dom.stdout.index("<html") : dom.stdout.index(">", dom.stdout.index("<html"))]
    assert "data-report-errors" not in html_tag and "Uncaught" not in dom.stderr
    assert "bot buys (" in dom.stdout and dom.stdout.count('class="main-svg"') >= 2  # the fills figure drew

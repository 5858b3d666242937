"""broker=paper on live bars from the local exchange, and the live driver's safety switches."""

from __future__ import annotations

import numpy as np
import pytest

from btc_quant.core.config import load_run_config
from btc_quant.plugins.exchanges.driver import LiveRun
from btc_quant.testing.exchange import ExchangeServer, binance_state

START_MS = 1641772800000  # 2022-01-10 00:00 UTC, inside the bundled real perp sample


@pytest.fixture
def fast_exchange():
    # 600 exchange seconds per real second: a 1m bar closes every 0.1 s
    state = binance_state(clock_start_ms=START_MS, speed=600)
    with ExchangeServer(state) as server:
        yield server


def test_paper_run_trades_live_bars_with_the_sim_rules(fast_exchange, plugins):
    cfg = load_run_config(["strategy=sma_cross", "strategy.fast=3", "strategy.slow=8", "broker=paper"], plugins.registry)
    run = LiveRun(cfg, plugins, url=fast_exchange.url, max_seconds=180, max_bars=60)  # bars counted, not guessed from wall time
    out = run.run()
    bars = run.broker.bar_arrays
    market = fast_exchange.state.market("usdm", "BTCUSDT")
    # every closed bar arrived once, in order, with the exchange's recorded values
    assert len(bars) == out["bars"] >= 20
    assert np.all(np.diff(bars.ts) == 60_000)
    idx = np.searchsorted(market.bars.ts, bars.ts)
    assert np.array_equal(market.bars.ts[idx], bars.ts)
    assert np.allclose(market.bars.close[idx], bars.close) and np.allclose(market.bars.open[idx], bars.open)
    # market orders filled at the open of a live bar (the sim's rule), with the taker fee
    fills = run.engine.fills
    assert fills, "sma_cross 3/8 trades within 20+ real 1m bars"
    for fill in fills:
        i = int(np.searchsorted(bars.ts, fill.ts_ms))
        assert bars.ts[i] == fill.ts_ms and fill.price == bars.open[i]
        assert fill.fee == pytest.approx(fill.quantity * fill.price * run.runtime.instrument.taker_fee)
    # the same report as a backtest
    report = out["report"]
    assert report["fills"] == len(fills) and report["bars"] == len(bars)
    assert report["final_equity"] == pytest.approx(run.broker.equity())


def test_paper_run_places_and_rearms_order_pairs(fast_exchange, plugins):
    """The ``grid`` strategy (an sdk PairGrid) on live bars: the same class whose backtest runs
    compiled places each take-profit from on_fill here, and re-arms the entry after it."""
    cfg = load_run_config(
        ["strategy=grid", "strategy.levels=6", "strategy.step_pct=0.0005", "strategy.quantity=0.01", "broker=paper"], plugins.registry
    )
    run = LiveRun(cfg, plugins, url=fast_exchange.url, max_seconds=180, max_bars=60)
    run.run()
    fills = run.engine.fills
    assert any(fill.tag.endswith(":tp") for fill in fills), "a 0.05 % grid takes profit within 20+ real 1m bars"
    assert all(fill.is_maker for fill in fills)
    state: dict[str, str] = {}  # pair tag -> the leg that must fill next
    for fill in fills:
        pair, leg = fill.tag.split(":")
        assert state.get(pair, "entry") == leg, f"{fill.tag} filled out of turn"
        state[pair] = "tp" if leg == "entry" else "entry"
    live = {order.tag for order in run.broker.open_orders()}
    for pair, leg in state.items():
        assert f"{pair}:{leg}" in live  # every filled leg's partner rests


def test_live_refuses_real_money_without_the_flag(quant):
    proc = quant("run", "broker=live")
    assert proc.returncode == 2
    assert "broker=live trades real money" in proc.stderr and "--testnet" in proc.stderr


def test_exchange_without_leverage_fails_with_one_line_naming_it(quant):
    proc = quant("run", "broker=live", "exchange=coinbase", "symbol=BTC/USD", "broker.leverage=3", "--testnet")
    assert proc.returncode == 2
    assert "exchange coinbase lacks what this run needs: setLeverage" in proc.stderr
    assert "sandbox" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_testnet_flag_is_for_live_only(quant):
    proc = quant("run", "broker=sim", "--testnet")
    assert proc.returncode == 2 and "for broker=live" in proc.stderr


def test_quant_run_paper_status_and_stop_through_the_cli(fast_exchange, tmp_path, quant):
    """`quant run broker=paper` in the background (a process), `quant status` reads it, `quant stop` ends it."""
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    exe = Path(sys.executable).with_name("quant")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANT_") or k == "QUANT_HOME"}
    bot = subprocess.Popen(
        [
            str(exe),
            "run",
            "broker=paper",
            "strategy=sma_cross",
            "strategy.fast=3",
            "strategy.slow=8",
            f"exchange.url={fast_exchange.url}",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.time() + 60
        status = None
        while time.time() < deadline:
            proc = quant("status", "--bot", "paper", "--json")
            if proc.returncode == 0:
                status = json.loads(proc.stdout)
                if status["running"] and status["bars"] >= 5:
                    break
            time.sleep(0.5)
        assert status and status["running"] and status["bars"] >= 5, status
        assert status["mode"] == "paper" and status["symbol"] == "BTC/USDT:USDT"
        text = quant("status", "--bot", "paper").stdout
        assert "bot paper (paper, sma_cross on binanceusdm BTC/USDT:USDT): running" in text and "open orders:" in text
        stop = quant("stop", "--bot", "paper")
        assert stop.returncode == 0 and "stop done" in stop.stdout, stop.stderr
        out, err = bot.communicate(timeout=30)
        assert bot.returncode == 0, err
        summary = json.loads(out)
        assert summary["halted"] == "quant stop" and summary["report"]["bars"] == summary["bars"] >= 5
    finally:
        if bot.poll() is None:
            bot.kill()

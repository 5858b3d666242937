"""``quant calibrate --bot BOT``: the ``prob`` bar fill model fitted on a bot's own maker orders."""

from __future__ import annotations

import json

import numpy as np

from btc_quant.core.config import load_run_config
from btc_quant.core.model import Order, OrderStatus, OrderType, Side
from btc_quant.plugins.brokers.calibrate import Calibration
from btc_quant.plugins.exchanges.compare import read_journal
from btc_quant.plugins.exchanges.driver import LiveRun
from btc_quant.plugins.exchanges.journal import Journal
from btc_quant.testing.exchange import ExchangeServer, binance_state

START_MS = 1641772800000  # 2022-01-10 00:00 UTC, inside the bundled real perp sample
GRID = ["strategy=grid", "strategy.levels=6", "strategy.step_pct=0.0005", "strategy.quantity=0.01"]


def test_calibrate_from_a_paper_bot_then_run_with_it(plugins, quant, isolated_env):
    # the paper bot fills its resting orders by a known prob model: rising with ticks past, so that
    # its journal holds reached-but-unfilled bars as well as fills
    truth = Calibration(name="truth", coef=[-1.5, 0.01, 0.0], samples=0, fills=0, orders=0, tick=0.1, latency_ms=0, queue_qty=None)
    truth.save(isolated_env / "calibrations")
    state = binance_state(clock_start_ms=START_MS, speed=600)  # a 1m bar every 0.1 s
    with ExchangeServer(state) as server:
        settings = [*GRID, "broker=paper", "broker.bot=pcal", "broker.fill_model=prob", "broker.calibration=truth"]
        cfg = load_run_config(settings, plugins.registry)
        out = LiveRun(cfg, plugins, url=server.url, max_seconds=120, max_bars=40, warmup=50).run()
    assert out["bars"] >= 20
    _, orders, _ = read_journal(isolated_env / "live" / "pcal.db")
    maker = orders[(orders["type"] == "limit") & (orders["status"] != "rejected")]
    filled = maker[maker["filled_qty"] > 0]
    assert len(maker) >= 5 and len(filled) >= 1, orders

    env = {"QUANT_HOME": str(isolated_env)}
    done = quant("calibrate", "--bot", "pcal", "--name", "frombot", env=env, check=True)
    assert "saved calibration 'frombot'" in done.stdout, done.stdout
    c = Calibration.load(isolated_env / "calibrations", "frombot")
    assert c.orders == len(maker)
    # every filled order is labelled filled on exactly one bar that reached it: the bars the fit saw
    # line up with the journal's clock; and the bot's refusals are there too
    assert c.fills == len(filled) and c.samples > c.fills, c
    p = c.probability(np.arange(0, 501, 50), c.median_bar_volume)
    assert np.all((p > 0) & (p < 1)) and np.all(np.diff(p) > 0), (c.coef, p)

    period = ["data.start=2022-01-10", "data.end=2022-01-10T08:00"]
    run = quant("run", *GRID, *period, "broker.fill_model=prob", "broker.calibration=frombot", "--json", env=env, check=True)
    fills = json.loads(run.stdout)["fills"]
    # the same run as the calibrated line of the fill band, which names the calibration it used
    band = json.loads(quant("run", *GRID, *period, "broker.calibration=frombot", "--fill-band", "--json", env=env, check=True).stdout)
    assert band["prob"]["calibration"] == {"name": "frombot", "samples": c.samples, "fills": c.fills}
    assert band["prob"]["fills"] == fills > 0, band
    assert fills != band["touch"]["fills"]  # the fitted probabilities are below 1: some reached orders wait


def test_calibrate_bot_refuses_without_journal_maker_orders_or_bars(quant, isolated_env):
    env = {"QUANT_HOME": str(isolated_env)}
    done = quant("calibrate", "--bot", "nobody", env=env)
    assert done.returncode == 2 and "no journal" in done.stderr, done.stderr

    j = Journal(isolated_env / "live" / "taker.db")
    j.set("run", {"mode": "paper", "exchange": "binanceusdm", "symbol": "BTC/USDT:USDT"})
    j.save_order(Order(client_id="m1", symbol="BTC/USDT:USDT", side=Side.BUY, type=OrderType.MARKET, quantity=0.01,
                       status=OrderStatus.FILLED, created_ms=START_MS, updated_ms=START_MS))  # fmt: skip
    j.close()
    done = quant("calibrate", "--bot", "taker", env=env)
    assert done.returncode == 2 and "no maker (limit) orders" in done.stderr, done.stderr

    later = 1893456000000  # 2030-01-01: no bars stored, nor in the bundled sample
    j = Journal(isolated_env / "live" / "future.db")
    j.set("run", {"mode": "paper", "exchange": "binanceusdm", "symbol": "BTC/USDT:USDT"})
    j.save_order(Order(client_id="l1", symbol="BTC/USDT:USDT", side=Side.BUY, type=OrderType.LIMIT, quantity=0.01, price=50000.0,
                       post_only=True, status=OrderStatus.CANCELED, created_ms=later, updated_ms=later + 600_000))  # fmt: skip
    j.close()
    done = quant("calibrate", "--bot", "future", env=env)
    assert done.returncode == 2 and "bars" in done.stderr and "future" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr

    edge = 1643691600000  # 2022-02-01 05:00 UTC: the bundled sample ends at 05:31, the bot ran until 07:00
    j = Journal(isolated_env / "live" / "edge.db")
    j.set("run", {"mode": "paper", "exchange": "binanceusdm", "symbol": "BTC/USDT:USDT"})
    j.save_order(Order(client_id="l1", symbol="BTC/USDT:USDT", side=Side.BUY, type=OrderType.LIMIT, quantity=0.01, price=30000.0,
                       post_only=True, status=OrderStatus.CANCELED, created_ms=edge, updated_ms=edge + 7_200_000))  # fmt: skip
    j.close()
    done = quant("calibrate", "--bot", "edge", env=env)
    assert done.returncode == 2 and "'edge'" in done.stderr and "are not in the store (have 2022-02-01" in done.stderr, done.stderr

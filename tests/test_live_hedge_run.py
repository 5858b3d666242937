"""End to end: ``quant run strategy=maker_vol strategy.side=both broker=live
broker.position_mode=hedge --testnet exchange.url=...`` against the local Binance USD-M (its own
process, 240x real time) holds a long and a short position at once: the exchange's positionRisk,
read through ccxt, shows both sides, ``quant status`` shows both, and ``quant flatten`` closes
both."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from test_live_soak import KEY, MAKER_VOL, SECRET, SPEED, _get, _post

from btc_quant.plugins.exchanges.ccxt_client import make_exchange
from btc_quant.plugins.exchanges.journal import Journal, journal_path
from btc_quant.testing.process import ServerProcess


def test_quant_run_maker_vol_both_sides_in_hedge_mode_holds_a_long_and_a_short(tmp_path):
    with ServerProcess("btc_quant.testing.exchange", "--clock-start", "2022-01-10T06:00", "--speed", str(SPEED)) as exchange:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANT_")}
        env.update(QUANT_HOME=str(tmp_path), QUANT_LOAD_PLUGINS="live,sim,ccxt_source,maker_vol")
        log = open(tmp_path / "bot.log", "w")
        command = [
            str(Path(sys.executable).with_name("quant")),
            "run",
            *MAKER_VOL,
            "strategy.side=both",
            "broker=live",
            "broker.position_mode=hedge",
            f"broker.api_key={KEY}",
            f"broker.secret={SECRET}",
            "broker.bot=hedge",
            "broker.reconcile_s=1",
            "exchange=binanceusdm",
            f"exchange.url={exchange.url}",
            "symbol=BTC/USDT:USDT",
            "--testnet",
            "--max-seconds=90",
        ]
        bot = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=tmp_path)
        client = make_exchange("binanceusdm", url=exchange.url, credentials={"apiKey": KEY, "secret": SECRET})
        client.load_markets()
        both = None
        try:
            deadline = time.time() + 80
            while time.time() < deadline and bot.poll() is None:
                truth = _get(exchange.url + "/_control/truth")
                if truth["dual_side"] and {"BTCUSDT|LONG", "BTCUSDT|SHORT"} <= set(truth["positions"]):
                    _post(exchange.url + "/_control/clock", {"speed": 0})  # hold the market still: both stay open
                    both = {p["side"]: p["contracts"] for p in client.fetch_positions(["BTC/USDT:USDT"]) if p["contracts"]}
                    if set(both) == {"long", "short"}:
                        break
                    _post(exchange.url + "/_control/clock", {"speed": SPEED})
                time.sleep(0.3)
            assert bot.poll() is None, "the bot died:\n" + (tmp_path / "bot.log").read_text()[-3000:]
            assert both and set(both) == {"long", "short"}, (
                f"never both sides at once: {both}\n" + (tmp_path / "bot.log").read_text()[-3000:]
            )
            # quant status shows each side (the bot's snapshot is refreshed about once a second)
            status = ""
            for _ in range(40):
                status = subprocess.run(
                    [command[0], "status", "--bot", "hedge"],
                    env={**env, "QUANT_LOAD_PLUGINS": "live_cli"},
                    capture_output=True,
                    text=True,
                    timeout=60,
                ).stdout
                if "LONG" in status and "SHORT" in status and "LONG 0 @" not in status and "SHORT 0 @" not in status:
                    break
                time.sleep(0.5)
            assert "position LONG 0.0" in status and ", SHORT -0.0" in status, status
            # quant flatten: the bot cancels its orders and closes both sides (SELL LONG, BUY SHORT)
            journal = Journal(journal_path(tmp_path, "hedge"))
            journal.set("command", "flatten")
            journal.close()
            assert bot.wait(90) == 0, (tmp_path / "bot.log").read_text()[-3000:]
            after = _get(exchange.url + "/_control/truth")
            assert after["positions"] == {} and after["open_orders"] == [], after
        finally:
            if bot.poll() is None:
                bot.kill()
                bot.wait(30)
            log.close()
    journal = Journal(journal_path(tmp_path, "hedge"))
    try:
        sides = {o.position_side.value for o in journal.orders()}
        notes = [m for _, kind, m in journal.notes(1000) if kind in ("position", "orphan")]
    finally:
        journal.close()
    assert sides == {"LONG", "SHORT"} and not notes, notes

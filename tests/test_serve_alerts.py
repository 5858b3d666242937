"""The watchdog end to end: a live bot on the local exchange, ``quant serve`` with an Apprise
``json://`` URL pointing at a webhook receiver on 127.0.0.1. Killing the bot's websockets (every
push dropped) gives one alert within the timeout, and bringing them back one recovery notice."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from serve_helpers import ServeProcess, WebhookReceiver, start_probe_bot, stop_process

from btc_quant.testing.exchange import ExchangeServer, binance_state
from btc_quant.testing.exchange.faults import FaultPlan

START_MS = 1641772800000  # 2022-01-10 00:00 UTC, inside the bundled real perp sample
T = 4.0  # alerts.stream_timeout_s (a loaded machine can hold a push back 2 s)


@pytest.fixture
def exchange():
    with ExchangeServer(binance_state(clock_start_ms=START_MS, speed=60)) as server:
        yield server


def test_killed_websocket_gives_one_alert_within_t_and_one_recovery(isolated_env, exchange):
    home = isolated_env
    bot = start_probe_bot(home, exchange.url, "watched")
    try:
        with WebhookReceiver() as hook:
            server = ServeProcess(
                home,
                f'alerts.urls=["json://127.0.0.1:{hook.port}/hook"]',
                f"alerts.stream_timeout_s={T}",
                "alerts.poll_s=0.5",
                "alerts.orders_timeout_s=600",
                "alerts.fills_every_s=100000",
            )
            try:
                time.sleep(2 * T)  # a healthy bot: nothing to say
                assert hook.posts == []
                killed = time.time()
                exchange.state.faults = FaultPlan(rates={"drop": 1.0}, paths=None)  # every websocket push closes its socket
                posts = hook.wait_for(lambda p: len(p) >= 1, T + 20)
                assert posts, "no alert after the websocket died"
                alert = posts[0]
                assert alert["title"] == "btc-quant watched: stream" and alert["type"] == "failure"
                assert "no market data from the websocket" in alert["message"]
                # within T of the last push (heartbeat every second, watchdog pass every 0.5 s, a loaded machine)
                assert alert["at"] - killed < T + 10
                time.sleep(2 * T)  # still dead: no repeats
                assert len(hook.posts) == 1, hook.posts
                exchange.state.faults = FaultPlan()
                posts = hook.wait_for(lambda p: len(p) >= 2, 30)
                assert len(posts) == 2 and posts[1]["title"] == "btc-quant watched: stream recovered"
                assert posts[1]["type"] == "success"
                time.sleep(2 * T)
                assert [p["title"] for p in hook.posts] == ["btc-quant watched: stream", "btc-quant watched: stream recovered"]
                # the same two in the dashboard's alerts list
                req = urllib.request.Request(server.url + "/api/alerts", headers={"Authorization": f"Bearer {server.token}"})
                shown = json.load(urllib.request.urlopen(req, timeout=30))
                assert [(a["key"], a["level"]) for a in shown] == [("watched:stream", "alert"), ("watched:stream", "recovered")]
            finally:
                server.stop()
    finally:
        stop_process(bot)

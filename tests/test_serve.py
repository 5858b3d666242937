"""``quant serve`` without a browser: token and bind rules, the API's answers (401 without the
token, never an API key), bot states, order marks, the watchdog's alerts and their delivery."""

from __future__ import annotations

import json
import logging
import os
import stat
import time

import pytest
from fastapi.testclient import TestClient
from serve_helpers import ServeProcess, WebhookReceiver, dead_pid, write_bot

from btc_quant.plugins.serve.alerts import AlertsConfig, Notifier, Watchdog
from btc_quant.plugins.serve.app import ServeSettings, create_app
from btc_quant.plugins.serve.bots import bot_view, order_rows
from btc_quant.plugins.serve.token import ensure_token, read_token

KEY, SECRET = "local-test-key", "local-test-secret"


@pytest.fixture
def home(isolated_env):
    return isolated_env


@pytest.fixture
def client(home, tmp_path):
    token = "t" * 40
    app = create_app(ServeSettings(home=home, token=token, studies_dir=tmp_path / "optimize"))
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        c.token = token
        yield c


def auth(client):
    return {"Authorization": f"Bearer {client.token}"}


def test_token_is_created_once_with_owner_only_permissions(tmp_path):
    path = tmp_path / "serve" / "token"
    token, created = ensure_token(path)
    assert created and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(path) == (token, False)
    path.chmod(0o644)
    with pytest.raises(Exception, match="can be read by others"):
        read_token(path)


def test_serve_refuses_another_bind_without_a_token(quant):
    proc = quant("serve", "--host", "0.0.0.0", "--port", "0")
    assert proc.returncode == 2
    assert "refusing to start without a token set" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_rejects_an_unknown_alerts_key_in_one_line(quant):
    proc = quant("serve", "--port", "0", "alerts.stale=3")
    assert proc.returncode == 2
    assert "alerts.stale: unknown key" in proc.stderr and "stale_s" in proc.stderr


ROUTES = [
    "/",
    "/api/bots",
    "/api/bots/b",
    "/api/runs",
    "/api/studies",
    "/api/alerts",
    "/openapi.json",
    "/static/app.js",
    "/api/compare?a=x&b=y",
]


def test_every_route_needs_the_token_and_gives_no_data_without_it(client, home):
    write_bot(home, "b", pid=os.getpid())
    for path in ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Cookie": "quant_token=nope"}):
            r = client.get(path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert "grid_probe" not in r.text and "39900" not in r.text and "binanceusdm" not in r.text
    for action in ("stop", "flatten"):
        r = client.post(f"/api/bots/b/{action}", json={"confirm": "b"})
        assert r.status_code == 401
    assert client.get("/api/bots", headers=auth(client)).status_code == 200
    assert client.get("/openapi.json", headers=auth(client)).json()["info"]["title"] == "btc-quant dashboard"


def test_actions_need_the_header_not_just_the_cookie_and_a_same_origin(client, home):
    write_bot(home, "b", pid=os.getpid())
    assert client.post("/api/session", headers=auth(client)).status_code == 200  # sets the cookie
    assert client.get("/api/bots").status_code == 200  # GET by cookie is fine
    r = client.post("/api/bots/b/stop", json={"confirm": "b"})  # a forged form would carry only the cookie
    assert r.status_code == 401
    r = client.post("/api/bots/b/stop", json={"confirm": "b"}, headers={**auth(client), "Origin": "http://evil.example"})
    assert r.status_code == 401
    assert client.post("/api/bots/b/stop", json={}, headers=auth(client)).status_code == 400  # not confirmed
    r = client.post("/api/bots/b/stop", json={"confirm": "b", "who": "alice"}, headers={**auth(client), "Origin": "http://127.0.0.1:8765"})
    assert r.status_code == 200 and r.json()["who"] == "alice"
    view = client.get("/api/bots/b").json()
    assert view["status"] == "stopping" and view["pending_command"] == "stop"
    assert any(e["kind"] == "action" and "stop requested by alice" in e["message"] for e in view["events"])


def test_bot_view_reports_state_money_and_orders(client, home):
    write_bot(home, "b", pid=os.getpid())
    v = client.get("/api/bots/b", headers=auth(client)).json()
    assert v["status"] == "running" and v["mode"] == "live"
    assert v["pnl_since_start"] == pytest.approx(100.0) and v["pnl_today"] == pytest.approx(50.0)
    assert v["liquidation_distance"] == pytest.approx((40_000 - 36_100) / 40_000)
    assert v["available"] == 9_990.0 and v["orders_wanted"] == 2 and v["orders_live"] == 1 and v["orders_missing"] == 1
    assert {o["client_id"]: o["status"] for o in v["orders"]} == {"b-1-1": "live", "b-1-2": "missing"}


def test_order_marks_waiting_and_foreign():
    state = {
        "open_orders_virtual": ["a", "b"],
        "in_flight": ["place b"],
        "open_orders_live": [
            {"client_id": "a", "side": "buy", "qty": 1, "price": 1, "status": "new"},
            {"client_id": "z", "side": "sell", "qty": 1, "price": 2, "status": "new"},
        ],
    }
    assert [(r["client_id"], r["status"]) for r in order_rows(state)] == [("a", "live"), ("b", "waiting"), ("z", "foreign")]


def test_bot_states_from_the_heartbeat(home):
    write_bot(home, "run", pid=os.getpid())
    write_bot(home, "halt", pid=os.getpid(), halted="daily_loss")
    write_bot(home, "stale", pid=os.getpid(), updated=time.time() - 60)
    write_bot(home, "dead", pid=dead_pid())
    write_bot(home, "clean", pid=None)
    states = {b: bot_view(home, b)["status"] for b in ("run", "halt", "stale", "dead", "clean")}
    assert states == {"run": "running", "halt": "halted", "stale": "dead", "dead": "dead", "clean": "stopped"}


def test_no_api_answer_or_page_holds_a_secret(client, home):
    """The keys a bot runs with live in its environment/config, never in the journal: every
    answer is built from explicit fields; this checks that no key, secret or token slips in."""
    write_bot(home, "b", pid=os.getpid())
    from btc_quant.plugins.exchanges.journal import Journal, journal_path

    journal = Journal(journal_path(home, "b"))
    journal.set("config_leak_probe", {"api_key": KEY, "secret": SECRET})  # even if a journal held them
    journal.close()
    client.post("/api/session", headers=auth(client))
    for path in ["/", "/static/app.js", "/api/bots", "/api/bots/b", "/api/runs", "/api/studies", "/api/alerts", "/openapi.json"]:
        text = client.get(path).text
        for secret in (KEY, SECRET, client.token):
            assert secret not in text, (path, secret)


def _watchdog(home, **settings):
    alerts = []
    config = AlertsConfig(
        **{
            "poll_s": 0.1,
            "stale_s": 1000,
            "stream_timeout_s": 1000,
            "data_timeout_s": 1000,
            "orders_timeout_s": 30,
            "min_interval_s": 60,
            "repeat_s": 3600,
            **settings,
        }
    )
    return Watchdog(home, config, alerts.append), alerts


def test_watchdog_raises_a_condition_once_and_recovers_once(home):
    now = time.time()
    write_bot(
        home,
        "b",
        pid=os.getpid(),
        stream_s=now - 6,
        open_orders_live=[{"client_id": c, "side": "buy", "qty": 1, "price": 1, "status": "new"} for c in ("b-1-1", "b-1-2")],
    )
    dog, alerts = _watchdog(home, stream_timeout_s=5)
    for k in range(10):  # ten passes with the stream still silent: one alert
        dog.check(now + k)
    write_bot(
        home,
        "b",
        pid=os.getpid(),
        stream_s=now + 10,
        open_orders_live=[{"client_id": c, "side": "buy", "qty": 1, "price": 1, "status": "new"} for c in ("b-1-1", "b-1-2")],
    )
    for k in range(10, 15):
        dog.check(now + k)
    assert [(a.kind, a.level) for a in alerts] == [("stream", "alert"), ("stream", "recovered")]
    assert "no market data from the websocket" in alerts[0].message


def test_watchdog_orders_missing_only_after_the_hold_time(home):
    now = time.time()
    write_bot(home, "b", pid=os.getpid())  # wants 2, the exchange has 1
    dog, alerts = _watchdog(home, orders_timeout_s=30)
    dog.check(now)
    dog.check(now + 29)
    assert alerts == []
    dog.check(now + 31)
    assert [(a.kind, a.level) for a in alerts] == [("orders", "alert")]
    assert "wants 2 live orders, the exchange has 1" in alerts[0].message


def test_watchdog_dead_bot_liquidation_and_kill_switch(home):
    write_bot(home, "gone", pid=dead_pid())
    write_bot(home, "close", pid=os.getpid(), price=36_500.0, halted="max_drawdown")
    dog, alerts = _watchdog(home, liquidation_distance=0.05)
    dog.check()
    kinds = {(a.bot, a.kind) for a in alerts}
    assert kinds == {("gone", "dead"), ("close", "liquidation"), ("close", "halted")}


def test_watchdog_reconcile_notes_are_rate_limited_and_counted(home):
    from btc_quant.plugins.exchanges.journal import Journal, journal_path

    write_bot(home, "b", pid=os.getpid(), open_orders_virtual=[])
    dog, alerts = _watchdog(home, min_interval_s=60)
    now = time.time()
    dog.check(now)
    journal = Journal(journal_path(home, "b"))
    for k in range(5):
        journal.note("orphan", f"open order x{k} is ours but unknown to the journal: canceled")
        dog.check(now + 1 + k)
    journal.close()
    dog.check(now + 70)
    texts = [a.message for a in alerts if a.kind == "reconcile"]
    assert texts == [
        "open order x0 is ours but unknown to the journal: canceled",
        "open order x1 is ours but unknown to the journal: canceled (+3 more)",
    ]


def test_watchdog_fills_summary_on_its_interval(home):
    from btc_quant.plugins.exchanges.journal import Journal, journal_path
    from btc_quant.sdk import Fill, Order, OrderType, Side

    write_bot(home, "b", pid=os.getpid(), open_orders_virtual=[])
    dog, alerts = _watchdog(home, fills_every_s=100)
    now = time.time()
    dog.check(now)
    journal = Journal(journal_path(home, "b"))
    for k, side in enumerate((Side.BUY, Side.BUY, Side.SELL)):
        fill = Fill(
            trade_id=f"t{k}",
            client_id="c",
            symbol="BTC/USDT:USDT",
            side=side,
            price=40_000.0,
            quantity=0.002,
            fee=0.01,
            ts_ms=1,
            is_maker=True,
        )
        journal.record_fill(
            fill, Order(client_id="c", symbol="BTC/USDT:USDT", side=side, type=OrderType.LIMIT, quantity=0.002, price=40_000.0)
        )
    journal.close()
    dog.check(now + 50)
    assert alerts == []
    dog.check(now + 101)
    assert len(alerts) == 1 and alerts[0].message.startswith("3 fills: bought 0.004, sold 0.002, fees 0.0300")


def test_an_alert_that_cannot_be_sent_is_logged_and_the_watchdog_goes_on(caplog):
    # a port nobody listens on, on loopback
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from btc_quant.plugins.serve.alerts import Alert

    notifier = Notifier([f"json://127.0.0.1:{port}/hook"])
    with caplog.at_level(logging.WARNING):
        assert notifier.send(Alert("b:dead", "b", "dead", "alert", "t", "m")) is False
    assert notifier.failures == 1
    assert "could not be sent" in caplog.text and str(port) not in caplog.text  # the URL is not logged


def test_alerts_reach_a_webhook_through_apprise(home):
    with WebhookReceiver() as hook:
        write_bot(home, "gone", pid=dead_pid())
        notifier = Notifier([f"json://127.0.0.1:{hook.port}/alerts"])
        dog = Watchdog(home, AlertsConfig(), notifier.send)
        dog.check()
        posts = hook.wait_for(lambda p: len(p) >= 1, 10)
    assert len(posts) == 1 and posts[0]["path"] == "/alerts"
    assert posts[0]["title"] == "btc-quant gone: dead" and "is dead" in posts[0]["message"]


def test_quant_serve_starts_on_loopback_and_keeps_its_token_private(home, tmp_path):
    server = ServeProcess(home)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        token_file = home / "serve" / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and server.info["token_created"]
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + "/api/bots", timeout=10)
        assert err.value.code == 401
        req = urllib.request.Request(server.url + "/api/bots", headers={"Authorization": f"Bearer {server.token}"})
        assert json.load(urllib.request.urlopen(req, timeout=10)) == []
    finally:
        server.stop()
    log = (home / "serve.log").read_text()
    assert server.token not in log


def test_alerts_come_from_a_config_file_and_the_command_line_wins(tmp_path):
    from btc_quant.plugins.serve import load_settings

    path = tmp_path / "quant.toml"
    path.write_text('[strategy]\nname = "sma_cross"\n\n[alerts]\nurls = ["json://127.0.0.1:9/a"]\nstale_s = 30\n')
    path.chmod(0o600)
    alerts = load_settings(["alerts.stale_s=45"], path)
    assert alerts.urls == ["json://127.0.0.1:9/a"] and alerts.stale_s == 45


def test_a_bad_alerts_url_is_one_line_without_the_url(quant):
    proc = quant("serve", "--port", "0", 'alerts.urls=["nosuchscheme://secret-bot-token@x"]')
    assert proc.returncode == 2
    assert "alerts.urls[0]: not a URL Apprise understands" in proc.stderr
    assert "secret-bot-token" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_bot_dying_says_dead_not_that_its_stream_recovered(home):
    now = time.time()
    write_bot(home, "b", pid=os.getpid(), stream_s=now - 60, open_orders_virtual=[])
    dog, alerts = _watchdog(home, stream_timeout_s=5)
    dog.check(now)
    write_bot(home, "b", pid=dead_pid(), stream_s=now - 60, open_orders_virtual=[])
    dog.check(now + 1)
    dog.check(now + 2)
    write_bot(home, "b", pid=os.getpid(), stream_s=now + 3, open_orders_virtual=[])  # restarted, streaming again
    dog.check(now + 3)
    got = [(a.kind, a.level) for a in alerts]
    assert got[:2] == [("stream", "alert"), ("dead", "alert")]  # no "stream recovered" while it is dead
    assert sorted(got[2:]) == [("dead", "recovered"), ("stream", "recovered")]  # both, once it runs again


def test_watchdog_orders_refused_by_risk_checks_are_rate_limited(home):
    write_bot(home, "b", pid=os.getpid(), open_orders_virtual=[], risk_refusals=0)
    dog, alerts = _watchdog(home, min_interval_s=60)
    now = time.time()
    dog.check(now)
    write_bot(home, "b", pid=os.getpid(), open_orders_virtual=[], risk_refusals=3, last_risk_refusal="risk max_notional: 60000 > 50000")
    dog.check(now + 1)
    write_bot(home, "b", pid=os.getpid(), open_orders_virtual=[], risk_refusals=5, last_risk_refusal="risk max_notional: 61000 > 50000")
    dog.check(now + 2)
    dog.check(now + 62)
    assert [a.message for a in alerts if a.kind == "risk"] == [
        "3 order(s) refused before sending (last: risk max_notional: 60000 > 50000)",
        "2 order(s) refused before sending (last: risk max_notional: 61000 > 50000)",
    ]


def test_studies_show_progress_and_the_best_trial_that_meets_the_constraints(tmp_path):
    import optuna

    from btc_quant.plugins.serve.runs import studies

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = tmp_path / "optimize" / "s"
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    for x, feasible in ((0.9, False), (0.5, True), (0.2, True)):  # as quant optimize records a constraint
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("run", {"feasible": feasible})
        study.tell(trial, x)
    study.ask()  # one still running
    [row] = studies(tmp_path / "optimize")
    assert (row["trials"], row["complete"], row["running"]) == (4, 3, 1)
    assert row["best_value"] == 0.5 and row["direction"] == "maximize"  # 0.9 broke a constraint

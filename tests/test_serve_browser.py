"""The dashboard in a real headless Chromium (Debian's ``chromium`` driven by Playwright), over a
live bot trading on the local exchange, two saved backtests and an Optuna study.

One exchange, one bot, one ``quant serve`` and one browser for the module. Screenshots go to a
temporary folder (printed; ``DASHBOARD_SCREENSHOTS=DIR`` writes them there instead, which is how
``docs/img/dashboard.png`` was made).
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from serve_helpers import KEY, SECRET, ServeProcess, dead_pid, start_probe_bot, stop_process, write_bot

from btc_quant.core.plugins import load_plugins
from btc_quant.core.results import save_run
from btc_quant.plugins.exchanges.journal import Journal, journal_path
from btc_quant.sdk.testing import run_strategy
from btc_quant.testing.exchange import ExchangeServer, binance_state

playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is needed for the browser tests")
expect = playwright.expect
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)", allow_module_level=True)

START_MS = 1641772800000  # 2022-01-10 00:00 UTC, inside the bundled real perp sample
BOT = "probe7"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def plugins():
    """This module's own plugin manager (conftest's is per test; the module fixtures here need one)."""
    return load_plugins(env={})


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("dash_home")


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def exchange():
    # 30 exchange seconds per real second: a 1m bar closes every 2 seconds
    with ExchangeServer(binance_state(clock_start_ms=START_MS, speed=30)) as server:
        yield server


@pytest.fixture(scope="module")
def bot(home, exchange):
    proc = start_probe_bot(home, exchange.url, BOT)
    yield proc
    stop_process(proc)


@pytest.fixture(scope="module")
def saved_runs(home, sample_bars, plugins):
    """Two real backtests saved where quant run saves them: sma_cross 5/20 and 10/40 on one day."""
    bars = sample_bars[:1440]
    ids = []
    for fast, slow in ((5, 20), (10, 40)):
        result = run_strategy("sma_cross", bars, f"strategy.fast={fast}", f"strategy.slow={slow}", plugins=plugins)
        save_run(result, home / "runs")
        ids.append((result.info.run_id, result.metrics))
    return ids


@pytest.fixture(scope="module")
def study_db(home):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = home / "optimize" / "toy-1"
    folder.mkdir(parents=True)
    study = optuna.create_study(
        study_name="toy-1", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1)
    )
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    return study


@pytest.fixture(scope="module")
def server(home, bot, saved_runs, study_db):
    proc = ServeProcess(home, "--studies", str(home / "optimize"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, server):
    """A signed-in page (token given in the URL fragment, which never reaches the server)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.goto(f"{server.url}/#token={server.token}")
    pg.wait_for_selector(f'article[data-bot="{BOT}"]', timeout=30_000)
    yield pg
    context.close()


def _truth(exchange) -> dict:
    return exchange.state.trading.truth(KEY)


def _get(url: str, token: str | None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_wrong_or_missing_token_gets_401_and_no_data(browser, server, shots):
    context = browser.new_context()
    pg = context.new_page()
    response = pg.goto(server.url + "/")
    assert response.status == 401
    assert pg.locator("#token").is_visible() and BOT not in pg.content()
    pg.fill("#token", "not-the-token-not-the-token")
    pg.click("button[type=submit]")
    pg.wait_for_selector("text=wrong token (401)")
    pg.screenshot(path=str(shots / "login-wrong-token.png"))
    assert BOT not in pg.content()
    api = pg.evaluate("fetch('/api/bots').then(async r => [r.status, await r.text()])")
    assert api[0] == 401 and BOT not in api[1]
    for path in ("/api/bots", f"/api/bots/{BOT}", "/api/runs", "/api/studies", "/openapi.json", "/api/stream"):
        for token in (None, "wrong-token-wrong-token"):
            status, body = _get(server.url + path, token)
            assert status == 401 and BOT not in body and "sma_cross" not in body, (path, token)
    context.close()


def test_bot_appears_and_its_orders_and_position_update_live(page, exchange, shots):
    card = page.locator(f'article[data-bot="{BOT}"]')
    assert card.locator('[data-f="status"]').text_content() == "running"
    page.evaluate("window.__not_reloaded = true")
    # the orders on the page follow the exchange's: the set of open orders it shows is one the
    # exchange had at most LAG seconds before (the bot re-places its orders every bar, a bar is 2 s
    # here; the page gets the bot's snapshot of every second over SSE; generous for a loaded machine)
    LAG = 8.0
    history: list[tuple[float, frozenset]] = []
    deadline, seen_sets, matched = time.time() + 60, set(), 0
    while time.time() < deadline and (matched < 3 or len(seen_sets) < 3):
        now = time.time()
        history.append((now, frozenset(o["clientOrderId"] for o in _truth(exchange)["open_orders"])))
        # read the rows in one go: the table is re-rendered as snapshots arrive, so a row counted
        # by .all() can be gone by the time its attribute is asked for (a 30 s wait for nothing)
        shown = frozenset(card.locator("table.orders tbody tr[data-cid]").evaluate_all("rows => rows.map(r => r.dataset.cid)"))
        if shown and any(ids == shown for t, ids in history if now - t <= LAG):
            matched += 1
            seen_sets.add(shown)
        time.sleep(0.1)
    assert matched >= 3, f"the page did not show the exchange's open orders within {LAG} s ({shown} vs {history[-1][1]})"
    assert len(seen_sets) >= 3, "the orders did not change on the page as the bot re-placed them"
    # the position follows the exchange's fills: wait for a non-zero position shown as the exchange has it
    deadline = time.time() + 90
    while time.time() < deadline:
        amt = sum(p["amt"] for p in _truth(exchange)["positions"].values())
        text = card.locator('[data-f="position"] b').inner_text()
        if amt and text.split(" @ ")[0] == f"{amt:g}":
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"the page shows position {text!r}, the exchange {amt}")
    assert page.evaluate("window.__not_reloaded") is True  # updated over SSE, not by reloading
    assert "fill " in card.locator("ul.events").inner_text()
    page.screenshot(path=str(shots / "dashboard.png"))


def test_study_progress_updates_live(page, study_db, shots):
    page.click('nav button[data-tab="studies"]')
    row = page.locator('#studies tr[data-study="toy-1"]')
    row.wait_for()
    assert row.locator("td.trials").inner_text() == "3"
    study_db.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)
    best = f"{study_db.best_value:.6g}"
    expect(row.locator("td.trials")).to_have_text("7", timeout=15_000)
    assert float(row.locator("td.best").inner_text()) == pytest.approx(float(best), rel=1e-5)
    page.screenshot(path=str(shots / "studies.png"))
    page.click('nav button[data-tab="bots"]')


def test_two_runs_compared_and_a_report_opened(page, saved_runs, shots):
    (a, metrics_a), (b, metrics_b) = saved_runs
    page.click('nav button[data-tab="runs"]')
    page.locator(f'#runs tr[data-run="{a}"]').wait_for()
    page.fill("#run-filter", a[:6])
    expect(page.locator("#runs tbody tr[data-run]")).to_have_count(1)
    page.fill("#run-filter", "sma_cross")
    expect(page.locator("#runs tbody tr[data-run]")).to_have_count(2)
    page.check(f'#runs input[value="{a}"]')
    page.check(f'#runs input[value="{b}"]')
    page.click("#compare")
    table = page.locator("#compare-table")
    table.wait_for()
    row = table.locator('tr[data-metric="trades"] td').all_inner_texts()
    assert row == ["trades", f"{metrics_a['trades']}", f"{metrics_b['trades']}"]
    ret = table.locator('tr[data-metric="total_return"] td').all_inner_texts()
    assert float(ret[1]) == pytest.approx(metrics_a["total_return"], rel=1e-4)
    assert float(ret[2]) == pytest.approx(metrics_b["total_return"], rel=1e-4)
    assert page.locator("#equity-chart polyline").count() == 2
    page.screenshot(path=str(shots / "runs-compared.png"), full_page=True)
    page.locator(f'#runs tr[data-run="{a}"] button.open-report').click()
    frame = page.frame_locator("#report")
    frame.locator("text=Equity").first.wait_for(timeout=60_000)
    page.screenshot(path=str(shots / "run-report.png"))
    page.click('nav button[data-tab="bots"]')


def test_no_page_or_api_answer_holds_the_api_key(page, server, saved_runs):
    a, b = saved_runs[0][0], saved_runs[1][0]
    bodies = [page.content()]
    for path in (
        "/",
        "/static/app.js",
        "/static/style.css",
        "/api/bots",
        f"/api/bots/{BOT}",
        "/api/runs",
        f"/api/runs/{a}",
        f"/api/compare?a={a}&b={b}",
        f"/api/runs/{a}/report",
        "/api/studies",
        "/api/alerts",
        "/openapi.json",
    ):
        status, body = _get(server.url + path, server.token)
        assert status == 200, path
        bodies.append(body)
    for body in bodies:
        assert KEY not in body and SECRET not in body and server.token not in body


def test_flatten_from_the_page_closes_the_position_on_the_exchange(page, exchange, bot, home, shots):
    deadline = time.time() + 60
    while not _truth(exchange)["positions"] and time.time() < deadline:
        time.sleep(0.3)
    assert _truth(exchange)["positions"], "the bot built no position to flatten"
    card = page.locator(f'article[data-bot="{BOT}"]')
    dialogs = []
    page.once("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    card.locator("button.flatten").click()
    bot.wait(90)  # the bot exits once a reconciliation confirms it is flat
    assert dialogs and f"flatten bot {BOT}" in dialogs[0]
    truth = _truth(exchange)
    assert truth["positions"] == {}, truth["positions"]
    assert [o for o in truth["open_orders"] if o["clientOrderId"].startswith(BOT)] == []
    expect(card.locator('[data-f="status"]')).to_have_text("stopped", timeout=15_000)
    journal = Journal(journal_path(home, BOT))
    notes = [n for n in journal.notes(100) if n[1] == "action"]
    journal.close()
    assert len(notes) == 1 and "flatten requested by dashboard from 127.0.0.1 at" in notes[0][2]
    page.screenshot(path=str(shots / "after-flatten.png"))


def test_a_hedge_mode_bot_shows_its_long_and_its_short(page, home):
    write_bot(
        home,
        "hedgebot",
        pid=dead_pid(),
        position={
            "quantity": 0.002,
            "entry_price": None,
            "sides": {"LONG": {"quantity": 0.004, "entry_price": 40_000.0}, "SHORT": {"quantity": -0.002, "entry_price": 41_000.0}},
        },
    )
    card = page.locator('article[data-bot="hedgebot"]')
    card.wait_for(timeout=30_000)
    text = card.locator('[data-f="position"] b').inner_text()
    assert text.startswith("LONG 0.004 @ ") and ", SHORT -0.002 @ " in text, text

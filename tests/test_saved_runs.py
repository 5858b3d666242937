"""Saved runs across versions: a run saved by the version before RunResult's facts were typed
(``tests/fixtures/runs_ae16e6f``: written by ``save_run`` at commit ae16e6f, when position,
funding, rejections, diagnostics and the compiled flag sat in ``RunResult.extra``) still loads into
the typed fields, lists and reports with ``quant report``, shows on the dashboard, and saves again
in the current layout without losing anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from btc_quant.core.metrics import position_per_bar
from btc_quant.core.plugins import load_plugins
from btc_quant.core.report import sections
from btc_quant.core.results import load_run, save_run
from btc_quant.plugins.serve.app import ServeSettings, create_app

OLD = Path(__file__).parent / "fixtures" / "runs_ae16e6f"
RUN = "2dd919fab20d"  # sma_cross, 1,500 real 1m bars from 2021-12-31 23:01, isolated 5x, compiled
ONE_WAY_SERIES = ("position", "liquidation_price", "liquidation_distance")
STANDARD_SECTIONS = ["Summary", "Price and fills", "Equity and drawdown", "Position and leverage", "Distance to liquidation", "Funding"]


@pytest.fixture
def runs(isolated_env):
    """QUANT_HOME/runs holding the run saved in the previous layout."""
    shutil.copytree(OLD, isolated_env / "runs")
    return isolated_env / "runs"


def old_doc() -> dict:
    return json.loads((OLD / RUN / "run.json").read_text())


def test_a_run_of_the_previous_layout_loads_into_the_typed_fields(runs):
    run = load_run(RUN[:5], runs)
    assert run.bars == 1500 and run.compiled is True and run.rejections == 0 and run.compiled_kernel_s > 0
    assert run.liquidation_price_source == "last" and run.funding_source == "bundled"
    assert len(run.bar_arrays) == run.bars and run.bar_arrays.ts[-1] == run.end_ms
    for name in ONE_WAY_SERIES:
        assert len(getattr(run, name)) == run.bars, name
    assert run.liquidation_price_short is None  # a one-way run
    # the loaded position is the one the fills make; a long-only run has a finite liquidation price while long
    np.testing.assert_array_equal(run.position.to_numpy(), position_per_bar(run.bars, run.fills))
    long = run.position.to_numpy() > 0
    assert long.any() and np.isfinite(run.liquidation_price.to_numpy()[long]).all()
    assert (run.liquidation_distance.to_numpy()[long] > 0).all()
    assert len(run.funding) == 2 and run.funding.amount.sum() == pytest.approx(run.metrics["funding"])
    assert run.diagnostics["pauses"] == 4 and run.diagnostics["summary"] == {"crossings": 7} and len(run.diagnostics["levels"]) == 3
    assert run.saved_config["strategy"]["name"] == "sma_cross"
    # what a plugin had added stays in extra, and only that
    assert set(run.extra) == {"my_plugin_score", "my_plugin_series"} and run.extra["my_plugin_score"] == 0.5
    assert run.summary() == {**old_doc()["summary"]}


def test_a_run_of_the_previous_layout_saved_again_keeps_everything(runs, tmp_path):
    run = load_run(RUN, runs)
    again = load_run(RUN, save_run(run, tmp_path).parent)
    doc = json.loads((tmp_path / RUN / "run.json").read_text())
    assert doc["rejections"] == 0 and doc["compiled"] is True and doc["extra"] == {"my_plugin_score": 0.5}
    assert again.summary() == run.summary() and again.metrics == run.metrics
    assert (again.compiled, again.rejections, again.compiled_kernel_s) == (run.compiled, run.rejections, run.compiled_kernel_s)
    for name in ONE_WAY_SERIES:
        assert getattr(again, name).equals(getattr(run, name)), name
    assert again.extra["my_plugin_series"].equals(run.extra["my_plugin_series"])
    assert again.funding.equals(run.funding) and again.diagnostics["levels"].equals(run.diagnostics["levels"])
    np.testing.assert_array_equal(again.bar_arrays.close, run.bar_arrays.close)


def test_quant_report_lists_and_reports_a_run_of_the_previous_layout(runs, quant, tmp_path):
    listed = json.loads(quant("report", "--list", "--json", check=True).stdout)
    assert listed == [old_doc()["summary"]]
    quant("report", RUN[:4], "--out", str(tmp_path / "old.html"), check=True)
    page = (tmp_path / "old.html").read_text()
    assert all(title in page for title in STANDARD_SECTIONS)
    titles = [s.title for s in sections(load_run(RUN, runs), load_plugins(env={}))]
    assert titles[: len(STANDARD_SECTIONS)] == STANDARD_SECTIONS


def test_the_dashboard_shows_a_run_of_the_previous_layout(runs, isolated_env, tmp_path):
    token = "t" * 40
    app = create_app(ServeSettings(home=isolated_env, token=token, studies_dir=tmp_path / "optimize"))
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        auth = {"Authorization": f"Bearer {token}"}
        listed = client.get("/api/runs", headers=auth).json()
        assert [r["run_id"] for r in listed] == [RUN] and listed[0]["funding_source"] == "bundled"
        detail = client.get(f"/api/runs/{RUN}", headers=auth).json()
        assert detail["metrics"] == old_doc()["metrics"] and detail["equity"]["equity"][-1] == pytest.approx(
            old_doc()["summary"]["final_equity"]
        )
        page = client.get(f"/api/runs/{RUN}/report", headers=auth)
        assert page.status_code == 200 and "Distance to liquidation" in page.text and "Funding" in page.text


def test_quant_run_json_keeps_every_key_of_the_previous_version(quant):
    """Users parse ``quant run --json``: every key the previous version printed is still there,
    with a value of the same type."""
    before = old_doc()["summary"]
    settings = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT", "broker.margin_mode=isolated", "broker.leverage=5")
    now = json.loads(quant("run", "strategy=sma_cross", "data.end=2022-01-03", *settings, "--json", check=True).stdout)
    missing = set(before) - set(now)
    assert not missing, f"--json lost {sorted(missing)}"
    assert {k: type(now[k]) for k in before} == {k: type(v) for k, v in before.items()}


def test_a_hedge_mode_run_keeps_both_liquidation_lines_and_the_nearer_distance(tmp_path):
    """broker.position_mode=hedge: the LONG position's liquidation price per bar is
    ``liquidation_price``, the SHORT's ``liquidation_price_short``; the distance is the nearer
    of the two, and all three survive a save and a load."""
    from test_sim_broker import FLAT, run, scripted

    from btc_quant.sdk import PositionSide

    def open_both(ctx):
        ctx.buy(1, None, position_side=PositionSide.LONG)
        ctx.sell(0.5, None, position_side=PositionSide.SHORT)

    script, _ = scripted({0: open_both})
    bars = [FLAT, (101, 101, 101, 101), (103, 103, 103, 103), (99, 99, 99, 99)]
    result = run(bars, script, "broker.position_mode=hedge", "broker.margin_mode=isolated", "broker.leverage=10")
    close = np.array([b[3] for b in bars])
    liq_long, liq_short = result.liquidation_price.to_numpy(), result.liquidation_price_short.to_numpy()
    assert np.isnan(liq_long[0]) and np.isnan(liq_short[0])  # flat before the first open
    assert (liq_long[1:] < close[1:]).all() and (liq_short[1:] > close[1:]).all()
    nearer = np.minimum((close - liq_long) / close, (liq_short - close) / close)
    np.testing.assert_allclose(result.liquidation_distance.to_numpy()[1:], nearer[1:])
    assert np.isnan(result.liquidation_distance.iloc[0])
    loaded = load_run(result.info.run_id, save_run(result, tmp_path).parent)
    for name in ("liquidation_price", "liquidation_price_short", "liquidation_distance"):
        assert getattr(loaded, name).equals(getattr(result, name)), name
    # cross margin: both positions go at the account's one price, below the close while net long
    cross = run(bars, script, "broker.position_mode=hedge", "broker.margin_mode=cross", "broker.leverage=20", "broker.initial_cash=10")
    one = cross.liquidation_price.to_numpy()
    np.testing.assert_array_equal(one[1:], cross.liquidation_price_short.to_numpy()[1:])
    assert (one[1:] < close[1:]).all() and (cross.position.to_numpy()[1:] > 0).all()
    np.testing.assert_allclose(cross.liquidation_distance.to_numpy()[1:], (close[1:] - one[1:]) / close[1:])

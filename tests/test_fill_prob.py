"""Fill model ``prob``: the calibrated bar fill model inside the venue core (venue.prob_allows)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_sim_fast_path import BusyGrid

from btc_quant.core.paths import data_dir
from btc_quant.plugins.brokers.calibrate import Calibration
from btc_quant.plugins.brokers.sim import venue as vc
from btc_quant.sdk import ConfigError, Strategy
from btc_quant.sdk.testing import run_strategy

COMMON = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT", "instrument.min_notional=0")


@pytest.fixture(scope="module")
def plugins():
    """A plugin manager of this module's own: run_strategy registers the test strategies in it,
    which must not change the choice lists other tests see in the shared one."""
    from btc_quant.core.plugins import load_plugins

    return load_plugins(env={})


class OneBarBid(Strategy):
    """Every bar: cancel, and bid 3 USDT under the close for one bar; a fill is closed at market.
    An order gets one bar's chance, so its maker fill count follows the fill probability."""

    name = "one_bar_bid"

    def on_bar(self, ctx, bar):
        ctx.cancel_all()
        if ctx.position.quantity == 0:
            ctx.buy(0.001, bar.close - 3.0, post_only=True, tag="b")

    def on_fill(self, ctx, fill):
        if fill.tag == "b":
            ctx.sell(fill.quantity, reduce_only=True, tag="x")


def save_calibration(name, coef, tick=0.1):
    cal = Calibration(name=name, coef=list(coef), samples=123, fills=45, orders=6, tick=tick, latency_ms=0, queue_qty=None)
    return cal.save(data_dir() / "calibrations")


def run(plugins, bars, *settings):
    return run_strategy(BusyGrid, bars, "broker=sim", *COMMON, *settings, plugins=plugins)


def test_the_core_probability_is_the_calibrations_model():
    cal = Calibration(name="x", coef=[-2.0, 0.7, 0.3], samples=1, fills=0, orders=0, tick=0.1, latency_ms=0, queue_qty=None)
    for ticks, vol in [(0, 0.0), (0, 150.0), (3, 40.0), (12.5, 400.0)]:
        assert math.isclose(vc.fill_probability(ticks, vol, *cal.coef), float(cal.probability(ticks, vol)), rel_tol=1e-12)


def test_draws_are_uniform_and_fixed_by_seed_order_and_bar():
    u = np.array([vc.unit_draw(7, oi, bar) for oi in range(40) for bar in range(250)])
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.02 and abs((u < 0.25).mean() - 0.25) < 0.02
    assert vc.unit_draw(7, 3, 11) == vc.unit_draw(7, 3, 11) != vc.unit_draw(8, 3, 11)


def test_prob_sits_between_never_and_touch_and_repeats(plugins, sample_bars):
    bars = sample_bars[:10000]
    save_calibration("always", [60.0, 0.0, 0.0])
    save_calibration("never", [-60.0, 0.0, 0.0])
    save_calibration("mid", [0.0, 0.0, 0.0])  # 50 % on every bar that reaches an order
    touch = run(plugins, bars, "broker.fill_model=touch")
    always = run(plugins, bars, "broker.fill_model=prob", "broker.calibration=always")
    never = run(plugins, bars, "broker.fill_model=prob", "broker.calibration=never")
    mid = run(plugins, bars, "broker.fill_model=prob", "broker.calibration=mid")
    again = run(plugins, bars, "broker.fill_model=prob", "broker.calibration=mid")
    other = run(plugins, bars, "broker.fill_model=prob", "broker.calibration=mid", "broker.fill_seed=5")
    # probability 1 is touch, fill for fill
    assert len(touch.fills) > 50
    assert always.fills[["ts", "price", "quantity"]].equals(touch.fills[["ts", "price", "quantity"]])
    # probability 0: resting limit orders never fill (only the market orders BusyGrid sends do)
    assert (never.fills["is_maker"] == False).all()  # noqa: E712
    assert not mid.fills[["ts", "price", "quantity"]].equals(touch.fills[["ts", "price", "quantity"]])
    # the same seed repeats the run exactly; another seed draws other fills
    assert mid.fills[["ts", "price", "quantity"]].equals(again.fills[["ts", "price", "quantity"]])
    assert not mid.fills[["ts", "price", "quantity"]].equals(other.fills[["ts", "price", "quantity"]])


def test_prob_settings_are_checked(plugins, sample_bars):
    bars = sample_bars[:50]
    with pytest.raises(Exception, match="calibration=NAME"):
        run(plugins, bars, "broker.fill_model=prob")
    with pytest.raises(Exception, match="only by fill_model=prob"):
        run(plugins, bars, "broker.fill_model=touch", "broker.calibration=mid")
    with pytest.raises(ConfigError, match="nosuch"):
        run(plugins, bars, "broker.fill_model=prob", "broker.calibration=nosuch")


def test_prob_fills_follow_the_probability(plugins, sample_bars):
    bars = sample_bars[:6000]
    save_calibration("half", [0.0, 0.0, 0.0])  # 50 % whatever the bar
    save_calibration("deep", [-8.0, 0.5, 0.0])  # near 0 at the extreme, near 1 from 25 ticks past
    touch = run_strategy(OneBarBid, bars, "broker=sim", *COMMON, "broker.fill_model=touch", plugins=plugins)
    half = run_strategy(OneBarBid, bars, "broker=sim", *COMMON, "broker.fill_model=prob", "broker.calibration=half", plugins=plugins)
    deep = run_strategy(OneBarBid, bars, "broker=sim", *COMMON, "broker.fill_model=prob", "broker.calibration=deep", plugins=plugins)
    n_touch = int(touch.fills["is_maker"].sum())
    assert n_touch > 300
    # the strategy bids again only when flat, so count fills per order placed, not per run
    rate = lambda r: r.fills["is_maker"].sum() / (r.orders["tag"] == "b").sum()  # noqa: E731
    assert 0.35 * rate(touch) < rate(half) < 0.65 * rate(touch)

    # deep: the bars that fill are the ones that traded well past the bid
    def ticks_past(r):
        made = r.fills[r.fills["is_maker"]]
        return (made["price"].to_numpy() - bars.low[made["bar"].to_numpy()]) / 0.1

    assert len(ticks_past(deep)) > 10
    assert (ticks_past(deep) < 5).mean() < 0.2 * (ticks_past(touch) < 5).mean()


def test_cli_fill_band_has_three_lines_with_a_calibration(quant, tmp_path):
    import json

    save_calibration("default", [0.0, 0.0, 0.0])  # quant calibrate's default name: picked up by itself
    proc = quant("run", "strategy=maker_vol", "data.end=2022-01-06", "--fill-band", "--json", check=True)
    band = json.loads(proc.stdout)
    assert list(band) == ["through", "prob", "touch"]
    assert band["prob"]["calibration"] == {"name": "default", "samples": 123, "fills": 45}
    assert band["through"]["fills"] <= band["touch"]["fills"]
    assert band["prob"]["fills"] != band["touch"]["fills"]  # half the reached orders wait for a later bar
    save_calibration("other", [60.0, 0.0, 0.0])  # always fills: the calibrated line is touch's
    report = tmp_path / "band.html"
    proc = quant(
        "run", "strategy=maker_vol", "data.end=2022-01-06", "broker.calibration=other", "--fill-band", "--report", str(report), check=True
    )
    head = proc.stdout.splitlines()[1:3]
    assert head[0].split() == ["pessimistic", "calibrated", "optimistic"], proc.stdout
    assert head[1].split() == ["through", "prob", "other", "(n=123)", "touch"], proc.stdout
    page = report.read_text()
    assert "Fill-model band" in page and "optimistic: touch" in page and "calibrated: prob other (n=123)" in page
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("fills ")]
    _, through, prob, touch = lines[0].split()
    assert prob == touch and int(through) <= int(touch)


def test_prob_fill_for_fill_on_the_compiled_pair_loop_and_the_event_path(plugins):
    """Every path drives the one core: the grid's compiled pair loop and the event path draw the
    same fills under prob (the bundled real sample, January 2022)."""
    from test_sim_pairs import assert_same_run, both

    from btc_quant.core.data import SAMPLE, read_bars_file

    save_calibration("mid", [0.0, 0.0, 0.0])
    bars = read_bars_file(SAMPLE.path)
    event, fast = both(plugins, bars, "broker.fill_model=prob", "broker.calibration=mid", "broker.funding=constant")
    assert len(event.fills) > 50
    assert_same_run(event, fast)


@pytest.mark.skipif(__import__("shutil").which("chromium") is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_report_band_section_renders_three_columns_in_headless_chromium(plugins, sample_bars, tmp_path):
    import re
    import shutil
    import subprocess

    from btc_quant.core.report import write_html

    result = run_strategy("sma_cross", sample_bars[:3000], plugins=plugins)
    result.fill_band = {
        "columns": ["pessimistic: through", "calibrated: prob perp (n=231)", "optimistic: touch"],
        "rows": {"fills": [2121, 2127, 2135], "final_equity": [9774.78, 9774.51, 9774.15]},
    }
    page = write_html(result, tmp_path / "band.html", plugins)
    dom = subprocess.run(
        [
            shutil.which("chromium"),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=20000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html_tag = dom.stdout[dom.stdout.index("<html") : dom.stdout.index(">", dom.stdout.index("<html"))]
    assert "data-report-errors" not in html_tag
    table = dom.stdout[dom.stdout.index('class="metrics fill-band"') :]
    table = table[: table.index("</table>")]
    assert "calibrated: prob perp (n=231)" in table
    row = re.search(r"<tr><th>fills</th>(.*?)</tr>", table).group(1)
    assert re.findall(r"<td>(.*?)</td>", row) == ["2121", "2127", "2135"]

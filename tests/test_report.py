"""Reports: the Plotly HTML page (rendered in headless Chromium), the section hook, the PNG, and
saved runs reported later with ``quant report``."""

import json
import shutil
import subprocess

import pytest
from conftest import make_plugin

from btc_quant.core.plugins import load_plugins
from btc_quant.core.report import render_html, sections, write_html, write_png
from btc_quant.core.results import list_runs, load_run, save_run
from btc_quant.sdk import ReportSection
from btc_quant.sdk.testing import run_strategy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def grid_section(result):
    import plotly.graph_objects as go

    if result.info.strategy != "sma_cross":
        return None
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    return [ReportSection("Grid diagnostics", figure=fig, html="<p id='grid-note'>from a plugin</p>", order=200)]


@pytest.fixture(scope="module")
def isolated_run(sample_bars):
    """sma_cross on real bars with isolated 5x margin, so the liquidation series exists."""
    return run_strategy("sma_cross", sample_bars[:6000], "broker.margin_mode=isolated", "broker.leverage=5")


def test_plugin_sections_come_after_the_standard_ones(isolated_run):
    pm = load_plugins(extra={"grid_sections": make_plugin(quant_report_sections=grid_section)})
    titles = [s.title for s in sections(isolated_run, pm)]
    assert titles[:2] == ["Summary", "Price and fills"]
    assert "Distance to liquidation" in titles and "Funding" in titles
    assert titles[-1] == "Grid diagnostics"
    assert "grid-note" in render_html(isolated_run, pm)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_html_report_renders_in_headless_chromium_without_errors(isolated_run, tmp_path):
    pm = load_plugins(extra={"grid_sections": make_plugin(quant_report_sections=grid_section)})
    page = write_html(isolated_run, tmp_path / "report.html", pm)
    figures = sum(1 for s in sections(isolated_run, pm) if s.figure is not None)
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000"]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html_tag = dom.stdout[dom.stdout.index("<html") : dom.stdout.index(">", dom.stdout.index("<html"))]
    assert "data-report-errors" not in html_tag  # no script error while rendering
    assert "Uncaught" not in dom.stderr
    assert dom.stdout.count('class="main-svg"') >= figures  # every figure drew its SVG layer
    shot = tmp_path / "report.png"
    subprocess.run(
        base + ["--hide-scrollbars", "--window-size=1400,3000", f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180
    )
    assert shot.stat().st_size > 50_000


def test_png_summary(isolated_run, tmp_path):
    path = write_png(isolated_run, tmp_path / "summary.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_saved_run_loads_back_with_its_series_and_diagnostics(isolated_run, tmp_path):
    isolated_run.diagnostics = {"levels": isolated_run.trades.head(3), "pauses": 4}
    folder = save_run(isolated_run, tmp_path)
    loaded = load_run(isolated_run.info.run_id[:6], tmp_path)
    assert loaded.metrics == isolated_run.metrics
    assert loaded.equity.equals(isolated_run.equity)
    assert loaded.liquidation_distance.equals(isolated_run.liquidation_distance)
    assert len(loaded.fills) == len(isolated_run.fills) and loaded.diagnostics["pauses"] == 4
    assert len(loaded.diagnostics["levels"]) == 3
    assert list_runs(tmp_path)[0]["run_id"] == isolated_run.info.run_id
    assert (folder / "run.json").exists()


def test_quant_run_keeps_the_run_and_quant_report_writes_it(quant, tmp_path):
    proc = quant("run", "strategy=sma_cross", "data.end=2022-01-03", "--json", "--report", str(tmp_path / "now.html"), check=True)
    run_id = json.loads(proc.stdout)["run_id"]
    assert (tmp_path / "now.html").stat().st_size > 1_000_000  # plotly.js is embedded
    listed = json.loads(quant("report", "--list", "--json", check=True).stdout)
    assert [r["run_id"] for r in listed] == [run_id]
    out = quant("report", run_id, "--out", str(tmp_path / "later.html"), "--png", str(tmp_path / "later.png"), check=True)
    assert (tmp_path / "later.html").exists() and (tmp_path / "later.png").exists(), out.stdout
    bad = quant("report", "nosuchrun")
    assert bad.returncode == 2 and "no saved run" in bad.stderr

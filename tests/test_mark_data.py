"""Mark-price klines in the store (``quant data fetch|import|ls ... price=mark``), what a run
takes from them (``liquidation_price_source``), and where its funding comes from
(``funding_source``), through the real console script, real ccxt and the local exchange.

Data: the bundled Binance BTCUSDT 1h mark klines and funding history (``btc_quant.sample``), the
bundled 1m perpetual sample, and the local exchange serving them (all real Binance data).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from btc_quant.core.data import SAMPLE, SAMPLE_FUNDING, SAMPLE_MARK, bundled_funding, read_bars_file
from btc_quant.plugins.storage.clickhouse import ChdbStore
from btc_quant.testing.process import ServerProcess

PERP = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT")
MARK = read_bars_file(SAMPLE_MARK.path)
JAN_10 = 1_641_772_800_000  # 2022-01-10 00:00 UTC


@pytest.fixture
def exchange():
    server = ServerProcess("btc_quant.testing.exchange").start()  # clock: just after the data
    yield server
    server.stop()


def _summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_fetch_mark_klines_through_ccxt_and_list_them(quant, exchange, isolated_env):
    args = (*PERP, f"exchange.url={exchange.url}", "timeframe=1h", "price=mark", "start=2022-01-10", "--no-funding")
    done = quant("data", "fetch", *args, check=True)
    want = MARK.between(JAN_10, MARK.end_ms)  # the last one (05:00) is still forming at the clock (05:32): not fetched
    assert f"binanceusdm BTC/USDT:USDT 1h mark: {len(want):,} bars written" in done.stdout
    with ChdbStore() as store:
        assert len(store.read_bars("binanceusdm", "BTC/USDT:USDT", "1h")) == 0  # not among the trade klines
        with store.prices("mark"):
            got = store.read_bars("binanceusdm", "BTC/USDT:USDT", "1h")
    for column in ("ts", "open", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(got, column), getattr(want, column))
    assert (got.volume == 0).all()
    listing = quant("data", "ls", check=True).stdout
    assert "1h mark" in listing and f"{len(want):,}" in listing
    gaps = quant("data", "gaps", *PERP, "timeframe=1h", "price=mark", check=True).stdout
    assert "binanceusdm BTC/USDT:USDT 1h: no gaps between 2022-01-10 00:00" in gaps
    again = quant("data", "fetch", *args, check=True)  # resumes from the stored mark klines
    assert "0 bars written" in again.stdout
    # a run on those days takes its liquidation trigger from the stored mark klines
    run = _summary(quant("run", "strategy=sma_cross", *PERP, "data.start=2022-01-12", "data.end=2022-01-13", "--json"))
    assert run["liquidation_price_source"] == "mark" and run["funding_source"] == "bundled"


def test_import_a_mark_file_and_trade_klines_stay_apart(quant, tmp_path):
    quant("data", "import", str(SAMPLE_MARK.path), *PERP, "timeframe=1h", "price=mark", check=True)
    quant("data", "import", str(SAMPLE.path), *PERP, check=True)
    listing = quant("data", "ls", check=True).stdout
    assert "1h mark" in listing and f"{len(MARK):,}" in listing and "45,031" in listing
    out = tmp_path / "mark.parquet"
    quant("data", "export", str(out), *PERP, "timeframe=1h", "price=mark", check=True)
    assert pd.read_parquet(out)["low"].tolist() == MARK.low.tolist()


def test_a_run_says_where_liquidation_and_funding_come_from(quant, tmp_path):
    """The bundled sample run: mark klines and funding from the bundled files; the settings that
    turn them off say so; a run on another market falls back to the last price and the constant."""
    base = ("strategy=sma_cross", *PERP, "data.start=2022-01-10", "data.end=2022-01-12", "--json")
    default = _summary(quant("run", *base))
    assert (default["liquidation_price_source"], default["funding_source"]) == ("mark", "bundled")
    last = _summary(quant("run", *base, "data.mark=off", "broker.funding=constant"))
    assert (last["liquidation_price_source"], last["funding_source"]) == ("last", "constant")
    off = _summary(quant("run", *base, "broker.funding=off"))
    assert off["funding_source"] == "off" and off["funding"] == 0
    # a file run of bars outside the bundled mark klines: last price, with a note saying why
    shifted = read_bars_file(SAMPLE.path)[:3000].to_frame()
    shifted["ts"] -= 400 * 86_400_000  # November 2020 (the bundled funding still covers it)
    path = tmp_path / "shifted.parquet"
    shifted.to_parquet(path)
    moved = _summary(quant("run", "strategy=sma_cross", *PERP, f"data.file={path}", "--json"))
    assert (moved["liquidation_price_source"], moved["funding_source"]) == ("last", "bundled")
    assert any("liquidation triggers on the last price" in n for n in moved["notes"])
    # a mark file the user names must cover the run: one clear line, exit code 2
    bad = quant("run", "strategy=sma_cross", *PERP, f"data.file={path}", f"data.mark_file={SAMPLE_MARK.path}")
    assert bad.returncode == 2 and "data.mark_file" in bad.stderr and "no mark kline covers the bar" in bad.stderr
    both = quant("run", *base, f"data.mark_file={SAMPLE_MARK.path}", "data.mark=off")  # never dropped silently
    assert both.returncode == 2 and "data.mark_file is set but not used" in both.stderr
    # price=mark is for the data commands
    wrong = quant("run", *base, "price=mark")
    assert wrong.returncode == 2


def test_the_report_shows_both_sources(quant, tmp_path):
    run = _summary(quant("run", "strategy=sma_cross", *PERP, "data.start=2022-01-10", "data.end=2022-01-11", "--json"))
    quant("report", run["run_id"], "--out", str(tmp_path / "r.html"), check=True)  # from the saved run
    body = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<th>liquidation_price_source</th><td>mark</td>" in body and "<th>funding_source</th><td>bundled</td>" in body


def test_bundled_funding_is_binance_history_for_the_binance_perpetual_only():
    frame = bundled_funding("binanceusdm", "BTC/USDT:USDT", JAN_10, JAN_10 + 86_400_000)
    assert frame["ts"].tolist() == [JAN_10 + k * 8 * 3_600_000 for k in range(3)]
    raw = pd.read_parquet(SAMPLE_FUNDING.path)
    assert frame["rate"].tolist() == raw.loc[raw.ts.isin(frame.ts), "rate"].tolist()
    assert bundled_funding("binance", "BTC/USDT", JAN_10, JAN_10 + 86_400_000) is None


def test_collect_refuses_price_mark(quant):
    out = quant("collect", *PERP, "price=mark")
    assert out.returncode == 2 and "price=mark is not supported" in out.stderr

"""Real funding by default: a run with no funding in the store charges Binance's BTCUSDT rates
from the bundled history, at the real funding times, on the position held then.

The expected amount is computed here independently of the sim: for every funding time of the
file inside the run, the position the run held going into that time (its position series at the
close of the bar before) x the file's mark price x the file's rate (Binance: funding amount =
position nominal value x funding rate; nominal value = size x mark price). The sim takes the mark
as the bar's open at the funding time, so the two agree to the bar-open-vs-mark difference.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_store import shared_file

from btc_quant.core.data import SAMPLE, SAMPLE_FUNDING
from btc_quant.core.plugins import load_plugins
from btc_quant.core.run import backtest
from btc_quant.sdk import SignalStrategy

PERP = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT")


class HoldLong(SignalStrategy):
    """Long the whole equity from the first close to the end (funding on every funding time)."""

    name = "hold_long_funding_test"

    def signal(self, bars):
        out = np.full(len(bars), np.nan)
        out[0] = 1.0
        return out


@pytest.fixture(scope="module")
def plugins():
    pm = load_plugins(env={})
    pm.registry.add("strategy", HoldLong.name, HoldLong, "tests")
    return pm


def expected_funding(result, funding_file) -> tuple[float, int]:
    """(sum of position x mark x rate, number of payments) at the file's funding times in the run."""
    rates = pd.read_parquet(funding_file)
    ts = result.equity.index.as_unit("ms").asi8  # bar open times, ms
    position = result.position.to_numpy()
    inside = rates[(rates.ts > ts[0]) & (rates.ts <= ts[-1])]
    bar = np.searchsorted(ts, inside.ts.to_numpy(), side="left")  # the bar at (or first after) the funding time
    held = position[bar - 1]  # going into that bar
    paid = held != 0
    return float(np.sum(held * inside.mark_price.to_numpy() * inside.rate.to_numpy())), int(paid.sum())


def test_a_file_run_of_spring_2021_pays_the_real_rates(plugins):
    """2021-03-26 .. 2021-05-20 (Binance spot 1m bars as the price, the real perpetual's funding):
    the real rates were about four times the 0.01 % constant."""
    data = shared_file("binance_btcusdt_1m.parquet")
    mark = shared_file("binance_btcusdt_perp_mark_1h.parquet")
    result = backtest(
        [
            f"strategy={HoldLong.name}",
            *PERP,
            f"data.file={data}",
            "data.start=2021-03-26 03:00",
            "data.end=2021-05-20 20:41",
            f"data.mark_file={mark}",
        ],
        plugins=plugins,
    )
    assert result.funding_source == "bundled" and result.liquidation_price_source == "mark"
    want, payments = expected_funding(result, SAMPLE_FUNDING.path)
    paid = result.funding
    assert len(paid) == payments > 150
    assert result.metrics["funding"] == pytest.approx(want, rel=0.01)
    constant = float(np.sum(paid.position * paid.mark * 0.0001))
    assert result.metrics["funding"] > 2.0 * constant  # what the constant would have charged: far less


def test_the_bundled_sample_run_pays_the_bundled_rates(plugins):
    """What CI sees: the bundled sample bars, funding from the bundled history (no shared data)."""
    result = backtest([f"strategy={HoldLong.name}", *PERP, "data.start=2022-01-03", "data.end=2022-01-20"], plugins=plugins)
    assert result.funding_source == "bundled" and result.liquidation_price_source == "mark"
    assert result.summary()["funding_source"] == "bundled"
    want, payments = expected_funding(result, SAMPLE_FUNDING.path)
    paid = result.funding
    assert len(paid) == payments == 17 * 3 - 1  # every funding time after the first bar
    assert result.metrics["funding"] == pytest.approx(want, rel=0.01)
    rates = pd.read_parquet(SAMPLE_FUNDING.path).set_index("ts")["rate"]
    assert paid.rate.tolist() == rates.loc[paid.ts.dt.as_unit("ms").astype("int64")].tolist()


def test_no_history_for_the_span_falls_back_to_the_constant(plugins, tmp_path):
    """Bars moved before Binance's first BTCUSDT funding (2019-09-10): no history covers them."""
    frame = pd.read_parquet(SAMPLE.path).iloc[:3000]
    frame["ts"] -= 3 * 365 * 86_400_000  # January 2019
    path = tmp_path / "early.parquet"
    frame.to_parquet(path)
    result = backtest([f"strategy={HoldLong.name}", *PERP, f"data.file={path}"], plugins=plugins)
    assert result.funding_source == "constant" and result.liquidation_price_source == "last"
    assert set(result.funding.rate) == {0.0001}

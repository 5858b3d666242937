"""The native sim and Backtrader give the same trades for sma_cross on real 1m bars."""

import numpy as np
import pandas as pd
import pytest

from btc_quant.core.instruments import instrument_for
from btc_quant.plugins.brokers.backtrader_broker import run_backtrader
from btc_quant.plugins.strategies.sma_cross import SmaCross
from btc_quant.sdk.testing import run_strategy


@pytest.mark.parametrize("compiled", [False, True], ids=["event_path", "compiled_signal_loop"])
def test_sma_cross_gives_the_same_trades_and_equity_in_backtrader_and_sim(sample_bars, compiled):
    """Bundled real BTCUSDT-perp 1m bars (January 2022); market orders at the next open, taker fee
    0.05% on both sides, no funding (Backtrader has none). The sim runs sma_cross on the event path
    and, as ``quant run`` does, in the compiled signal loop."""
    sim = run_strategy("sma_cross", sample_bars, "broker.funding=off", compiled=compiled)
    assert sim.compiled is compiled
    ref = run_backtrader(SmaCross(), sample_bars, instrument_for("binanceusdm", "BTC/USDT:USDT"))
    assert len(sim.fills) == len(ref.fills) > 1000
    cols = ["ts", "side", "quantity", "bar"]
    pd.testing.assert_frame_equal(sim.fills[cols].reset_index(drop=True), ref.fills[cols].reset_index(drop=True))
    np.testing.assert_allclose(sim.fills.price, ref.fills.price, rtol=1e-12)
    np.testing.assert_allclose(sim.fills.fee, ref.fills.fee, rtol=1e-9)
    assert sim.metrics["final_equity"] == pytest.approx(ref.metrics["final_equity"], rel=1e-6)
    np.testing.assert_allclose(sim.equity.to_numpy(), ref.equity.to_numpy(), rtol=1e-6)
    assert sim.metrics["trades"] == ref.metrics["trades"]


def test_broker_backtrader_runs_from_the_command_line(quant):
    import json

    proc = quant("run", "strategy=sma_cross", "broker=backtrader", "data.end=2022-01-04", "--json", check=True)
    summary = json.loads(proc.stdout)
    assert summary["broker"] == "backtrader" and summary["trades"] > 10

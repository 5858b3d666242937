"""``quant calibrate`` on the three real Binance perpetual tapes: maker_vol's orders filled by the
queue replay, by ``through`` and by ``touch``; the fitted ``prob`` model, saved and loaded."""

from __future__ import annotations

import pandas as pd
import pytest
from test_store import shared_file

from btc_quant.core.errors import ConfigError
from btc_quant.core.plugins import load_plugins
from btc_quant.core.trades import QuoteArrays, TradeArrays
from btc_quant.plugins.brokers.calibrate import SCALED_MAKER_VOL, Calibration, calibrate, probe_orders, windows_of
from btc_quant.plugins.storage.clickhouse import ChdbConfig, ChdbStore

TAPES = ("binance_btcusdt_perp_2023-04-04_2358", "binance_btcusdt_perp_2024-07-18_2357", "binance_btcusdt_perp_2024-08-08_2354")
EX, SYM = "binanceusdm", "BTC/USDT:USDT"


@pytest.fixture(scope="module")
def plugins():
    """This module's own plugin manager (conftest's is per test; the module fixtures here need one)."""
    return load_plugins(env={})


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, plugins):
    path = tmp_path_factory.mktemp("calibrate") / "chdb"
    store = ChdbStore(ChdbConfig(path=path))
    for name in TAPES:
        store.write_trades(EX, SYM, TradeArrays.from_frame(pd.read_parquet(shared_file(f"trades/{name}_trades.parquet"))))
        store.write_quotes(EX, SYM, QuoteArrays.from_frame(pd.read_parquet(shared_file(f"trades/{name}_bookticker.parquet"))))
    try:
        return calibrate(store, EX, SYM, ["strategy=maker_vol", *SCALED_MAKER_VOL], name="perp", tick=0.1, plugins=plugins)
    finally:
        store.close()


def test_each_tape_is_a_window_with_maker_vol_orders(calibrated):
    calibration, windows = calibrated
    assert len(windows) == 3
    for w in windows:
        assert w.orders > 0 and w.quotes > 0
        # the bars are built from the same prints: a queue fill needs a print at or through the
        # price (so the bar touched it), and through is the stricter bar rule
        assert w.queue <= w.touch and w.through <= w.touch
        assert w.queue_qty > 0  # the window's median displayed quantity
    assert calibration.orders == sum(w.orders for w in windows)


def test_prob_model_is_fitted_with_its_sample_size(calibrated):
    calibration, _ = calibrated
    assert calibration.samples > 100 and 0 < calibration.fills < calibration.samples
    volume = calibration.median_bar_volume
    at_touch, one_past = (float(calibration.probability(t, volume)) for t in (0, 1))
    # touching the order is not enough to be sure of a fill; a print through it always fills
    assert 0.05 < at_touch < 0.95 and one_past > 0.95


def test_calibration_saves_and_loads(calibrated, tmp_path):
    calibration, _ = calibrated
    calibration.save(tmp_path)
    loaded = Calibration.load(tmp_path, "perp")
    assert loaded == calibration
    with pytest.raises(ConfigError, match="calibration 'nope'"):
        Calibration.load(tmp_path, "nope")


def test_windows_split_on_gaps_and_probes_rest_where_placed():
    import numpy as np

    assert windows_of(np.array([0, 10, 20, 10_000, 10_005]), 1000) == [(0, 21), (10_000, 10_006)]
    from btc_quant.core.data import BarArrays

    bars = BarArrays(np.array([60_000]), np.array([100.0]), np.array([100.3]), np.array([99.8]), np.array([100.1]), np.array([5.0]))
    trades = TradeArrays(np.array([59_000]), np.array([1]), np.array([1]), np.array([100.0]), np.array([1.0]), np.array([1]))
    probes = probe_orders(bars, trades, 0.1, 2)
    assert sorted(probes[probes.side == 1].price.round(1)) == [99.8, 99.9]  # 100.0 would not rest below the last print
    assert sorted(probes[probes.side == -1].price.round(1)) == [100.1, 100.2, 100.3]


def test_cli_calibrate_prints_the_three_models(quant, tmp_path):
    name = TAPES[2]
    store = f"store.path={tmp_path / 'chdb'}"
    for kind in ("trades", "bookticker"):
        quant("data", "import", str(shared_file(f"trades/{name}_{kind}.parquet")), f"exchange={EX}", f"symbol={SYM}", store, check=True)
    done = quant("calibrate", f"exchange={EX}", f"symbol={SYM}", store, "--name", "aug", check=True)
    lines = done.stdout.splitlines()
    assert any("queue" in line and "through" in line and "touch" in line for line in lines)
    assert any(line.startswith("2024-08-08 23:5") for line in lines)
    assert any(line.startswith("prob:") for line in lines) and any("fitted on" in line for line in lines)
    assert "saved calibration 'aug'" in done.stdout

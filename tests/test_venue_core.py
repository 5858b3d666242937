"""The venue core (``plugins/brokers/sim/venue.py``) driven directly: hedge mode (Binance
``dualSidePosition=true``: a LONG and a SHORT position, each with its own entry, isolated margin
and liquidation price), and the one liquidation formula against the readable reference
``core/margin.py``. Every path (event sim, pair loop, signal loop) runs these same functions; the
fill-for-fill tests between the paths are in test_sim_pairs / test_sim_signal / test_sim_fast_path.
"""

from __future__ import annotations

import numpy as np
import pytest

from btc_quant.core import margin as mm
from btc_quant.core.instruments import instrument_for
from btc_quant.plugins.brokers.sim import venue as vc

BRACKETS = instrument_for("binanceusdm", "BTC/USDT:USDT").margin_brackets
BB = vc.brackets_array(BRACKETS)


def state(*, hedge: bool, isolated: bool, cash: float = 10_000.0, leverage: float = 10.0):
    P = np.zeros(vc.NPARAM)
    P[vc.P_MAKER], P[vc.P_TAKER], P[vc.P_LIQFEE], P[vc.P_LOT] = 0.0002, 0.0005, 0.0125, 0.001
    P[vc.P_STRICT], P[vc.P_CHECK], P[vc.P_PERP] = 1.0, 1.0, 1.0
    P[vc.P_ISOLATED], P[vc.P_LEV], P[vc.P_HEDGE] = float(isolated), leverage, float(hedge)
    P[vc.P_QSCALE], P[vc.P_LOT_UNITS], P[vc.P_LOG] = 1000.0, 1.0, 1.0
    v = vc.new_state(P, BB, initial_cash=cash)
    v.S[vc.PRICE] = 40_000.0
    return v


def market(v, side, qty, position_side):
    """A market order filled at once at the current price (as during a bar's walk)."""
    oi = vc.new_order(v, side, np.nan, qty, 0.0, 0.0, position_side)
    return vc.submit(v, oi, True), oi


def walk_bar(v, i, o, h, low, c):
    empty_i, empty_f = np.empty(0, np.int64), np.empty(0)
    vc.begin_bar(v, i, i * 60_000, float(v.S[vc.PRICE]), o, h, low, c, 1e9, low, h)
    codes = []
    while True:
        code = vc.walk(v, o, empty_i, empty_f)
        codes.append(code)
        if code == vc.WALK_CLOSE:
            return codes


def test_hedge_mode_keeps_a_long_and_a_short_each_with_its_own_isolated_liquidation():
    v = state(hedge=True, isolated=True)
    assert market(v, 1.0, 0.5, vc.PS_LONG)[0] == vc.SUB_FILLED
    assert market(v, -1.0, 0.25, vc.PS_SHORT)[0] == vc.SUB_FILLED
    POS = v.POS
    assert POS[0, vc.Q_QTY] == 0.5 and POS[1, vc.Q_QTY] == -0.25  # not netted to one position
    assert POS[0, vc.Q_ISO] == pytest.approx(0.5 * 40_000 / 10) and POS[1, vc.Q_ISO] == pytest.approx(0.25 * 40_000 / 10)
    # each leg's price is Binance's isolated formula on its own margin (reference: core/margin.py)
    assert POS[0, vc.Q_LIQ] == pytest.approx(mm.liquidation_price(0.5, 40_000, POS[0, vc.Q_ISO], BRACKETS), rel=1e-12)
    assert POS[1, vc.Q_LIQ] == pytest.approx(mm.liquidation_price(-0.25, 40_000, POS[1, vc.Q_ISO], BRACKETS), rel=1e-12)
    # a fall through the long's price liquidates the long only; the short stays open
    long_liq = POS[0, vc.Q_LIQ]
    codes = walk_bar(v, 1, 40_000, 40_000, long_liq - 100, long_liq - 50)
    assert vc.WALK_LIQ in codes
    assert POS[0, vc.Q_QTY] == 0.0 and POS[1, vc.Q_QTY] == -0.25
    assert v.S[vc.NLIQ] == 1


def test_hedge_mode_closing_orders_only_close_their_own_side():
    v = state(hedge=True, isolated=False)
    market(v, 1.0, 0.5, vc.PS_LONG)
    # SELL SHORT opens a short beside the long (one-way mode would reduce the long)
    market(v, -1.0, 0.2, vc.PS_SHORT)
    assert v.POS[0, vc.Q_QTY] == 0.5 and v.POS[1, vc.Q_QTY] == -0.2
    # BUY SHORT with no more short to close than 0.2 is cut to 0.2 and leaves the long alone
    outcome, oi = market(v, 1.0, 0.3, vc.PS_SHORT)
    assert v.POS[1, vc.Q_QTY] == 0.0 and v.POS[0, vc.Q_QTY] == 0.5
    assert v.FL[int(v.S[vc.NFILL]) - 1, vc.F_QTY] == pytest.approx(0.2)
    # with no short left, a BUY SHORT is refused (Binance -2022)
    outcome, oi = market(v, 1.0, 0.1, vc.PS_SHORT)
    assert outcome == vc.SUB_REJECTED and v.O[oi, vc.O_REASON] == vc.R_REDUCE


def test_hedge_mode_cross_liquidation_price_is_where_margin_balance_meets_maintenance():
    v = state(hedge=True, isolated=False, cash=3_000.0, leverage=20.0)
    market(v, 1.0, 1.0, vc.PS_LONG)
    v.S[vc.PRICE] = 41_000.0
    market(v, -1.0, 0.4, vc.PS_SHORT)
    lp = v.POS[0, vc.Q_LIQ]
    assert lp == v.POS[1, vc.Q_LIQ] and v.POS[0, vc.Q_LDIR] == 1.0  # net long: one price, reached falling
    wallet = v.S[vc.WALLET]
    balance = wallet + 1.0 * (lp - 40_000) + 0.4 * (41_000 - lp)
    maintenance = mm.maintenance_margin(1.0 * lp, BRACKETS) + mm.maintenance_margin(0.4 * lp, BRACKETS)
    assert balance == pytest.approx(maintenance, rel=1e-9)  # Binance: liquidation at margin ratio 100 %


def test_one_way_liquidation_price_is_the_references_on_every_bracket():
    rng = np.random.default_rng(7)
    for _ in range(400):
        qty = float(rng.choice([-1, 1]) * 10 ** rng.uniform(-3, 2.5))
        entry = float(rng.uniform(3_000, 120_000))
        wallet = float(abs(qty) * entry * rng.uniform(0.005, 1.2))
        expected = mm.liquidation_price(qty, entry, wallet, BRACKETS)
        got = vc.liquidation_price(qty, entry, wallet, BB)
        if expected is None:
            assert np.isnan(got)
        else:
            assert got == expected  # the same arithmetic: the same float

"""Money math of the local USD-M exchange (property tests over the real price path)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_exchange_trading import START

from btc_quant.testing.exchange import binance_state
from btc_quant.testing.exchange.trading import BRACKETS, TAKER_FEE, bracket_for

STATE = binance_state(clock_start_ms=START)
KEYS = itertools.count()
trades = st.lists(st.tuples(st.integers(1, 240), st.sampled_from(["BUY", "SELL"]), st.integers(3, 30)), min_size=1, max_size=12)


def market(trading, key: str, side: str, lots: int, **extra):
    return trading.place(key, {"symbol": "BTCUSDT", "side": side, "type": "MARKET", "quantity": f"{lots * 0.001:.3f}", **extra})


@settings(max_examples=40, deadline=None)
@given(trades, st.sampled_from(["CROSSED", "ISOLATED"]), st.integers(1, 3))  # low leverage: no liquidation within 48 h
def test_a_round_trip_to_flat_realises_exactly_its_cash_flow(steps, margin_type, leverage):
    trading = STATE.trading
    key = f"prop-{next(KEYS)}"
    account = trading.add_account(key, "s", usdt=1_000_000)
    trading.set_leverage(key, "BTCUSDT", leverage)
    if margin_type == "ISOLATED":
        trading.set_margin_type(key, "BTCUSDT", margin_type)
    now = START
    STATE.clock.set(now)
    for minutes, side, lots in steps:
        now += minutes * 60_000
        STATE.clock.set(now)
        market(trading, key, side, lots)
    assert not any(o.orig_type == "LIQUIDATION" for o in account.orders.values())
    amt = account.position("BTCUSDT").amt
    assert amt == pytest.approx(sum((1 if s == "BUY" else -1) * lots * 0.001 for _, s, lots in steps), abs=1e-9)
    if round(amt, 9):
        STATE.clock.set(now + 60_000)
        market(trading, key, "SELL" if amt > 0 else "BUY", round(abs(amt) / 0.001), reduceOnly="true")
    position = account.position("BTCUSDT")
    assert position.amt == 0 and position.isolated_wallet == 0
    # flat again: realised PnL is what the sells brought in minus what the buys cost
    cash = sum(t.quote_qty * (1 if t.side == "SELL" else -1) for t in account.trades)
    assert sum(t.realized_pnl for t in account.trades) == pytest.approx(cash, abs=1e-6)
    fees = sum(t.quote_qty for t in account.trades) * TAKER_FEE
    assert sum(t.commission for t in account.trades) == pytest.approx(fees)
    assert account.wallet == pytest.approx(1_000_000 + cash - fees + sum(float(r["income"]) for r in account.income), abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 200), st.integers(1, 125), st.sampled_from(["BUY", "SELL"]))
def test_at_the_liquidation_price_the_isolated_margin_is_the_maintenance_margin(lots, leverage, side):
    trading = STATE.trading
    key = f"liq-{next(KEYS)}"
    account = trading.add_account(key, "s", usdt=1_000_000)
    STATE.clock.set(START)
    trading.set_margin_type(key, "BTCUSDT", "ISOLATED")
    try:
        trading.set_leverage(key, "BTCUSDT", leverage)
    except Exception:
        return
    market(trading, key, side, lots)
    position = account.position("BTCUSDT")
    lp = trading.liquidation_price(account, "BTCUSDT")
    size = abs(position.amt)
    # Binance: liquidation when margin balance (isolated wallet + unrealised PnL at LP) equals the
    # maintenance margin of the bracket, notional x rate - cum
    _, _, _, rate, cum = bracket_for(size * position.entry)
    upnl = position.amt * (lp - position.entry)
    assert position.isolated_wallet + upnl == pytest.approx(size * lp * rate - cum, rel=1e-9, abs=1e-6)
    assert (lp < position.entry) == (side == "BUY")


def test_brackets_are_continuous():
    for (floor, _, _, rate, cum), (_, _, _, prev_rate, prev_cum) in zip(BRACKETS[1:], BRACKETS[:-1]):
        assert floor * rate - cum == pytest.approx(floor * prev_rate - prev_cum)


def test_a_cross_position_is_liquidated_at_its_price_and_the_wallet_keeps_no_more_than_nothing():
    state = binance_state(clock_start_ms=START)
    trading = state.trading
    account = trading.add_account("thin", "s", usdt=30)
    market(trading, "thin", "BUY", 10)
    position = account.position("BTCUSDT")
    position_entry = position.entry
    lp = trading.liquidation_price(account, "BTCUSDT")
    # Binance, one cross position: LP = (WB + cum - |pos| x EP) / (|pos| x MMR - |pos|)
    assert lp == pytest.approx((account.wallet - 0.01 * position.entry) / (0.01 * 0.004 - 0.01))
    bars = state.market("usdm", "BTCUSDT").bars
    state.clock.set(START + 7 * 86_400_000)
    trading.sync()
    (liquidation,) = [o for o in account.orders.values() if o.orig_type == "LIQUIDATION"]
    assert account.position("BTCUSDT").amt == 0
    # the wallet the formula sees at that moment: deposit - opening fee + funding paid or received
    when = liquidation.update_time
    wallet = 30 - account.trades[0].commission + sum(float(r["income"]) for r in account.income if r["time"] <= when)
    expected = (wallet - 0.01 * position_entry) / (0.01 * 0.004 - 0.01)
    assert liquidation.avg_price == pytest.approx(expected, abs=0.05)
    k = int(np.searchsorted(bars.ts, when, "right")) - 1
    assert bars.low[k] <= liquidation.avg_price + 0.05 and bars.low[:k][bars.ts[:k] > START].min() > expected
    assert 0 <= account.wallet < 30 * 0.2

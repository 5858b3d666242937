"""The engine: risk checks before the broker, events back to the strategy, no look-ahead, skipping."""

import numpy as np
import pandas as pd
import pytest
from conftest import registering

from btc_quant.core.model import OrderStatus
from btc_quant.core.plugins import load_plugins
from btc_quant.plugins.strategies.sma_cross import SmaCross
from btc_quant.sdk import RiskCheck, Strategy
from btc_quant.sdk.testing import assert_causal, bars_from, run_strategy


class BuyOnce(Strategy):
    """Buys 0.01 at market on the first bar, records what it is told."""

    def on_start(self, ctx):
        self.seen = []

    def on_bar(self, ctx, bar):
        if not self.seen:
            order = ctx.buy(0.01)
            self.seen.append(("placed", order.status))

    def on_order(self, ctx, order):
        self.seen.append(("order", order.status, order.reason))

    def on_fill(self, ctx, fill):
        self.seen.append(("fill", fill.price, ctx.position.quantity))


class RejectAll(RiskCheck):
    def check(self, order, state):
        return f"nothing allowed (equity {state.equity:.0f})"


def strategies(**named):
    return load_plugins(
        env={"QUANT_LOAD_PLUGINS": "sim"},
        extra={
            "strategies": registering("quant_register_strategies", **named),
            "checks": registering("quant_register_risk_checks", reject_all=RejectAll),
        },
    )


BARS = [(100, 101, 99, 100), (102, 103, 101, 102), (103, 104, 102, 103), (104, 105, 103, 104)]


def test_order_reaches_broker_and_fill_comes_back():
    result = run_strategy("buy_once", bars_from(BARS), "instrument.min_notional=0", plugins=strategies(buy_once=BuyOnce))
    seen = result.info  # the engine's RunInfo
    fills = result.fills
    assert len(fills) == 1 and fills.price.iloc[0] == 102.0  # next bar's open
    assert fills.fee.iloc[0] == pytest.approx(0.01 * 102.0 * 0.0005)  # taker fee of binanceusdm
    assert seen.strategy == "buy_once"


def test_rejecting_risk_check_stops_the_order_and_the_strategy_is_told():
    strategy_box = {}

    class Spy(BuyOnce):
        def on_start(self, ctx):
            super().on_start(ctx)
            strategy_box["s"] = self

    result = run_strategy("spy", bars_from(BARS), "risk.checks=reject_all", "instrument.min_notional=0", plugins=strategies(spy=Spy))
    seen = strategy_box["s"].seen
    assert seen[0] == ("placed", OrderStatus.REJECTED)
    assert seen[1][0:2] == ("order", OrderStatus.REJECTED)
    assert seen[1][2] == "risk reject_all: nothing allowed (equity 10000)"
    assert result.fills.empty and result.rejections == 1
    assert result.orders.status.tolist() == ["rejected"]


class Probe(Strategy):
    """Checks that ctx.bars() never shows a bar whose close is in the future of the event."""

    def on_start(self, ctx):
        self.checked = 0

    def on_bar(self, ctx, bar):
        assert ctx.bars(1).ts[-1] == bar.ts_ms and ctx.bar == bar
        if ctx.position.quantity == 0 and not ctx.open_orders:
            ctx.buy(0.01)
        elif ctx.position.quantity > 0 and not ctx.open_orders:
            ctx.sell(0.01)
        self.checked += 1

    def on_fill(self, ctx, fill):
        # a market fill happens at the open of bar i: bar i's close is not known yet
        assert ctx.bars(1).ts[-1] < fill.ts_ms
        assert ctx.price == fill.price
        self.checked += 1


def test_strategy_never_sees_the_close_of_the_bar_it_is_trading_in(sample_bars):
    result = run_strategy("probe", sample_bars[:500], plugins=strategies(probe=Probe))
    assert len(result.fills) == 499


def test_sma_cross_wake_bars_are_causal(sample_bars):
    assert_causal(SmaCross(), sample_bars[:20_000])


def test_skipping_bars_gives_the_same_trades_as_walking_every_bar(sample_bars):
    class EveryBar(SmaCross):
        needs_every_bar = True

    pm = strategies(sma_cross=SmaCross, every=EveryBar)
    bars = sample_bars[:15_000]
    fast = run_strategy("sma_cross", bars, plugins=pm)
    slow = run_strategy("every", bars, plugins=pm)
    cols = ["ts", "side", "price", "quantity", "fee"]
    pd.testing.assert_frame_equal(fast.fills[cols], slow.fills[cols])
    assert fast.metrics == slow.metrics


def test_sma_cross_trades_match_an_independent_pandas_signal(plugins, sample_bars):
    """The seed's signal: SMA10 > SMA30 -> long, else flat; market orders fill at the next open."""
    result = run_strategy("sma_cross", sample_bars, plugins=plugins)
    frame = sample_bars.to_frame()
    signal = (frame.close.rolling(10).mean() > frame.close.rolling(30).mean()).astype(int)
    change = signal.diff().fillna(signal)
    entries = np.flatnonzero(change.to_numpy() == 1)
    exits = np.flatnonzero(change.to_numpy() == -1)
    exits = exits[exits > entries[0]]
    fills = result.fills
    buys, sells = fills[fills.side == "buy"], fills[fills.side == "sell"]
    assert len(buys) == len(entries) and len(sells) == len(exits)
    np.testing.assert_array_equal(buys.bar.to_numpy(), entries + 1)
    np.testing.assert_array_equal(sells.bar.to_numpy(), exits + 1)
    np.testing.assert_array_equal(buys.price.to_numpy(), frame.open.to_numpy()[entries + 1])
    # every sell closes the whole position: the run ends flat or long
    assert result.position.iloc[-1] >= 0
    # equity identity: final equity = initial - sum(signed notional) - fees - funding + position * last close
    signed = np.where(fills.side == "buy", 1, -1) * fills.quantity * fills.price
    funding = result.funding.amount.sum()
    assert funding != 0 and result.metrics["funding"] == pytest.approx(funding)
    expected = 10_000 - signed.sum() - fills.fee.sum() - funding + result.position.iloc[-1] * frame.close.iloc[-1]
    assert result.metrics["final_equity"] == pytest.approx(expected, rel=1e-12)


class AlertWatcher(Strategy):
    """Wakes only on the first bar, then only when the price leaves a +-1% band."""

    needs_every_bar = False

    def wake_bars(self, bars):
        wake = np.zeros(len(bars), dtype=bool)
        wake[0] = True
        return wake

    def on_start(self, ctx):
        self.woken = []

    def on_bar(self, ctx, bar):
        self.woken.append(len(ctx.bars()) - 1)
        ctx.wake_when_price_outside(bar.close * 0.99, bar.close * 1.01)


def test_price_alert_wakes_the_strategy_only_when_the_band_is_left(sample_bars):
    box = {}

    class Watcher(AlertWatcher):
        def on_start(self, ctx):
            super().on_start(ctx)
            box["s"] = self

    bars = sample_bars[:5000]
    run_strategy("watcher", bars, plugins=strategies(watcher=Watcher))
    expected, ref = [0], bars.close[0]
    for i in range(1, len(bars)):
        if bars.low[i] <= ref * 0.99 or bars.high[i] >= ref * 1.01:
            expected.append(i)
            ref = bars.close[i]
    assert box["s"].woken == expected and 3 < len(expected) < 500


def test_strategy_diagnostics_are_kept_with_the_result():
    class Counting(BuyOnce):
        def diagnostics(self):
            return {"events": len(self.seen)}

    result = run_strategy("counting", bars_from(BARS), "instrument.min_notional=0", plugins=strategies(counting=Counting))
    assert result.diagnostics == {"events": 3}  # placed, accepted, filled

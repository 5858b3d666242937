"""The sim driven by the venue core gives the same runs as the plain Python simulator it replaced.

``ReferenceSim`` below is the pre-core event-path sim (``tests/reference_sim.py``: every rule in
Python over ``core.margin`` and ``Account``) with the loops it had before the compiled book: it
finds the next fill by looping over the open orders in queue order, finds the best resting prices
the same way and re-sums the margin held by open orders on every check. Both brokers run the same
strategies on the same real bars (the bundled January-2022 perpetual sample); the fills, the
orders and the equity curve must be identical.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from reference_sim import OldSimBroker

from btc_quant.plugins.brokers.sim.venue import EPS as _EPS
from btc_quant.plugins.strategies.sma_cross import SmaCross
from btc_quant.sdk import Side, Strategy
from btc_quant.sdk.indicators import sma
from btc_quant.sdk.testing import run_strategy

STEP = 0.002
LEVELS = 30


class ReferenceSim(OldSimBroker):
    """The sim with the loops over ``self._orders`` it had before the compiled book, walking
    every segment of a bar, and the account's general equity."""

    skip_quiet_bars = False

    def _next_event(self):
        a, b = self._price, self._path[self._seg + 1]
        strict = self.fill_model.strict
        cap = self.config.max_volume_share is not None
        best = None
        for o in self._orders.values():
            p = o.price
            if p is None or o.client_id in self._pending:
                continue
            if o.side is Side.BUY:
                if p > a + _EPS:
                    at = a
                elif b < a and (b < p if strict else b <= p):
                    at = p
                else:
                    continue
            else:
                if p < a - _EPS:
                    at = a
                elif b > a and (b > p if strict else b >= p):
                    at = p
                else:
                    continue
            if (best is None or abs(at - a) < abs(best[0] - a)) and not (cap and self._exhausted(o)):
                best = (at, "fill", o)
        liq = self.liquidation_price()
        if liq is not None:
            long = self._position.quantity > 0
            if long and b < a and b <= liq <= a + _EPS and (best is None or abs(liq - a) < abs(best[0] - a)):
                best = (liq, "liquidation", None)
            elif not long and b > a and a - _EPS <= liq <= b and (best is None or abs(liq - a) < abs(best[0] - a)):
                best = (liq, "liquidation", None)
        return best

    def _resting_bounds(self):
        buy_max, sell_min = -np.inf, np.inf
        for o in self._orders.values():
            if o.price is None:
                return buy_max, sell_min, True
            if o.side is Side.BUY:
                buy_max = max(buy_max, o.price)
            else:
                sell_min = min(sell_min, o.price)
        return buy_max, sell_min, False

    def equity(self):
        return self._account.equity({self.instrument.symbol: self._price})

    def _order_values(self, exclude=None):
        buys = sells = 0.0
        for o in self._orders.values():
            if o.client_id == exclude or o.reduce_only:
                continue
            value = o.remaining_qty * (o.price if o.price is not None else self._price)
            if o.side is Side.BUY:
                buys += value
            else:
                sells += value
        return buys, sells


class BusyGrid(Strategy):
    """A grid that exercises every book operation: post-only and plain limits on both sides,
    take-profits, amends (cancel-replace), cancels, reduce-only and market orders."""

    needs_every_bar = True
    name = "busy_grid"

    def on_start(self, ctx):
        self.n = 0
        self.levels = [ctx.price * (1 - STEP) ** k for k in range(1, LEVELS + 1)]
        for k, price in enumerate(self.levels):
            ctx.buy(0.002, price, post_only=k % 2 == 0, tag=f"b{k}")
            ctx.sell(0.002, ctx.price * (1 + STEP) ** (k + 1), tag=f"a{k}")

    def on_fill(self, ctx, fill):
        kind, k = fill.tag[0], int(fill.tag[1:]) if fill.tag[1:].isdigit() else 0
        if kind == "b":
            ctx.sell(fill.quantity, fill.price * (1 + STEP), post_only=True, tag=f"s{k}")
        elif kind == "s":
            ctx.buy(fill.quantity, self.levels[k], post_only=True, tag=f"b{k}")
        elif kind == "a":
            ctx.buy(fill.quantity, fill.price * (1 - STEP), tag=f"c{k}")

    def on_bar(self, ctx, bar):
        self.n += 1
        orders = ctx.open_orders
        if self.n % 37 == 0 and orders:
            o = orders[self.n % len(orders)]
            if o.price is not None:
                ctx.amend(o.client_id, price=o.price * (0.999 if o.side is Side.BUY else 1.001))
        if self.n % 53 == 0 and orders:  # cancel the oldest and put it back at the end of the queue
            o = orders[0]
            ctx.cancel(o.client_id)
            if o.price is not None:
                (ctx.buy if o.side is Side.BUY else ctx.sell)(o.remaining_qty, o.price, tag=o.tag)
        if self.n % 211 == 0:
            if ctx.position.quantity > 0:
                ctx.sell(min(0.004, ctx.position.quantity), reduce_only=True, tag="r")
            else:
                ctx.buy(0.004, tag="m")


def run_both(plugins, strategy, bars, *settings):
    if "sim_reference" not in plugins.registry.names("broker"):
        plugins.registry.add("broker", "sim_reference", ReferenceSim, "tests")
    common = ("exchange=binanceusdm", "symbol=BTC/USDT:USDT", "instrument.min_notional=0", *settings)
    fast = run_strategy(strategy, bars, "broker=sim", *common, plugins=plugins)
    slow = run_strategy(strategy, bars, "broker=sim_reference", *common, plugins=plugins)
    return fast, slow


def numbered(frame):
    """The frame with client ids cut to their number (the prefix holds the run id)."""
    frame = frame.copy()
    frame["client_id"] = frame["client_id"].str.rsplit("-", n=1).str[-1]
    return frame


def assert_same_run(fast, slow):
    assert len(fast.fills) > 50
    pd.testing.assert_frame_equal(numbered(fast.fills), numbered(slow.fills))
    pd.testing.assert_frame_equal(numbered(fast.orders), numbered(slow.orders))
    pd.testing.assert_series_equal(fast.equity, slow.equity)
    assert fast.metrics == slow.metrics


@pytest.mark.parametrize(
    "settings",
    [
        ("broker.fill_model=through",),
        ("broker.fill_model=touch", "broker.margin_mode=isolated", "broker.leverage=50"),  # liquidations
        ("broker.max_volume_share=0.000000003", "broker.path=direction"),  # partial fills,
        ("broker.leverage=2", "broker.initial_cash=1000"),  # margin refusals
    ],
)
def test_compiled_book_gives_the_runs_of_the_plain_loops(plugins, sample_bars, settings):
    fast, slow = run_both(plugins, BusyGrid, sample_bars[:12000], *settings)
    assert_same_run(fast, slow)


def test_compiled_book_same_runs_for_the_shipped_strategies(plugins, sample_bars):
    for name in ("sma_cross", "maker_vol"):
        fast, slow = run_both(plugins, name, sample_bars[:8000])
        assert_same_run(fast, slow)


class SmaCrossOnWindows(SmaCross):
    """sma_cross computing its averages on the window at every wake-up, as it does live."""

    name = "sma_cross_windows"

    def wake_bars(self, bars):
        flags = super().wake_bars(bars)
        self._known = None
        return flags


def test_sma_cross_precomputed_averages_give_the_trades_of_the_window_averages(plugins, sample_bars):
    fast = run_strategy("sma_cross", sample_bars, plugins=plugins)
    slow = run_strategy(SmaCrossOnWindows, sample_bars, plugins=plugins)
    assert len(fast.fills) > 1000
    pd.testing.assert_frame_equal(numbered(fast.fills), numbered(slow.fills))
    pd.testing.assert_series_equal(fast.equity, slow.equity)


def test_sma_cross_ignores_averages_of_other_bars(sample_bars):
    """Averages precomputed on other bars (another run, a causality check) are not used."""
    strategy = SmaCross()
    strategy.wake_bars(sample_bars[20_000:30_000])  # e.g. left over from assert_causal
    assert strategy._known is not None

    class WindowOnly:  # what the window path reads of the context
        def bars(self, n):
            return sample_bars[5_001 - n : 5_001]

    expected = sma(sample_bars.close[:5_001], 10)[-1] > sma(sample_bars.close[:5_001], 30)[-1]
    assert strategy._long(WindowOnly(), sample_bars.bar(5_000)) == expected

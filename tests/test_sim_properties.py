"""Property tests of the sim broker on real 1m bars (windows of the bundled January-2022 sample)
with random order scripts: fills stay inside their bar, money is conserved, post-only never
takes, and liquidation happens exactly when the margin ratio reaches 1."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import registering
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from btc_quant.core.margin import margin_ratio
from btc_quant.core.plugins import load_plugins
from btc_quant.sdk import OrderError, Strategy
from btc_quant.sdk.testing import run_strategy

WINDOW = 240


class Scripted(Strategy):
    """Runs ``SCRIPT[bar index]`` actions and records the margin picture at every event."""

    script: dict = {}
    records: list = []

    def on_start(self, ctx):
        self.i = -1
        Scripted.records = []
        if Scripted.mode:
            ctx.set_margin_mode(Scripted.mode)
            ctx.set_leverage(Scripted.leverage)

    def _record(self, ctx, kind, price):
        m = ctx.margin
        wallet = m.position_margin if m.mode == "isolated" else m.wallet_balance
        pos = ctx.position
        Scripted.records.append((kind, price, pos.quantity, pos.entry_price, wallet, ctx.equity, ctx.wallet_balance, ctx.now_ms))

    def on_bar(self, ctx, bar):
        self.i += 1
        self._record(ctx, "close", bar.close)
        for kind, side, size, offset, post_only in self.script.get(self.i, ()):
            try:
                if kind == "market":
                    getattr(ctx, side)(size)
                elif kind == "limit":
                    price = bar.close * (1 - offset if side == "buy" else 1 + offset)
                    getattr(ctx, side)(size, price, post_only=post_only)
                elif kind == "cancel" and ctx.open_orders:
                    ctx.cancel(ctx.open_orders[0].client_id)
                elif kind == "amend" and any(o.price for o in ctx.open_orders):
                    o = [o for o in ctx.open_orders if o.price][-1]
                    ctx.amend(o.client_id, price=o.price * (1 - offset if o.side.value == "buy" else 1 + offset))
            except OrderError:
                pass  # e.g. below the minimum notional: the strategy's problem, not the broker's

    def on_fill(self, ctx, fill):
        self._record(ctx, "fill", fill.price)

    def on_stop(self, ctx):
        self._record(ctx, "stop", ctx.price)


PLUGINS = load_plugins(extra={"s": registering("quant_register_strategies", scripted=Scripted)})

action = st.tuples(
    st.sampled_from(["market", "limit", "limit", "limit", "cancel", "amend"]),
    st.sampled_from(["buy", "sell"]),
    st.sampled_from([0.002, 0.01, 0.05, 0.2]),
    st.floats(0.0, 0.004),
    st.booleans(),
)
scripts = st.dictionaries(st.integers(0, WINDOW - 2), st.lists(action, min_size=1, max_size=3), min_size=1, max_size=40)


def run_script(bars, script, mode, leverage, model):
    Scripted.script, Scripted.mode, Scripted.leverage = script, mode, leverage
    return run_strategy(
        "scripted",
        bars,
        f"broker.fill_model={model}",
        "broker.funding=constant",
        "broker.funding_rate=0.0005",
        "broker.funding_interval=1h",
        plugins=PLUGINS,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.integers(0, 44_000),
    script=scripts,
    mode=st.sampled_from(["cross", "isolated"]),
    leverage=st.sampled_from([2, 20, 75, 125]),
    model=st.sampled_from(["through", "touch"]),
)
def test_sim_broker_properties(sample_bars, start, script, mode, leverage, model):
    bars = sample_bars[start : start + WINDOW]
    check_properties(bars, run_script(bars, script, mode, leverage, model))


def test_properties_hold_through_liquidations_at_high_leverage(sample_bars):
    """Seeded scripts at 75-125x so that liquidations (and their checks) surely happen."""
    import random

    rng = random.Random(7)
    liquidations = 0
    for _ in range(12):
        start = rng.randint(0, 44_000)
        script = {
            rng.randint(0, WINDOW - 2): [
                (
                    rng.choice(["market", "limit"]),
                    rng.choice(["buy", "sell"]),
                    rng.choice([0.05, 0.2]),
                    rng.uniform(0, 0.004),
                    rng.random() < 0.5,
                )
            ]
            for _ in range(20)
        }
        bars = sample_bars[start : start + WINDOW]
        result = run_script(bars, script, rng.choice(["cross", "isolated"]), rng.choice([75, 125]), "through")
        check_properties(bars, result)
        liquidations += int(result.fills.is_liquidation.sum())
    assert liquidations >= 3


def check_properties(bars, result):
    fills, orders = result.fills, result.orders
    brackets = result.info.instrument.margin_brackets

    # 1. no fill outside its bar's range
    if len(fills):
        lo, hi = bars.low[fills.bar.to_numpy()], bars.high[fills.bar.to_numpy()]
        assert np.all(fills.price.to_numpy() >= lo - 1e-9) and np.all(fills.price.to_numpy() <= hi + 1e-9)

    # 2. a post-only order never fills as taker
    post_only = set(orders.client_id[orders.post_only])
    assert fills[fills.client_id.isin(post_only)].is_maker.all()

    # 3. conservation: equity = initial - sum(signed notional) - fees - funding + position * close,
    #    at every bar, and at the end equal to the broker's wallet + unrealised PnL
    n = len(bars)
    signed = np.where(fills.side == "buy", 1.0, -1.0) * fills.quantity.to_numpy()
    cash = np.zeros(n)
    qty = np.zeros(n)
    np.add.at(cash, fills.bar.to_numpy(), -signed * fills.price.to_numpy() - fills.fee.to_numpy())
    np.add.at(qty, fills.bar.to_numpy(), signed)
    funding = result.funding
    np.add.at(cash, funding.bar.to_numpy().astype(int), -funding.amount.to_numpy())
    expected = 10_000 + np.cumsum(cash) + np.cumsum(qty) * bars.close
    insurance = result.equity.to_numpy() - expected  # only a liquidation past bankruptcy may add
    assert np.all(insurance >= -1e-6)
    if not fills.is_liquidation.any():
        np.testing.assert_allclose(result.equity.to_numpy(), expected, rtol=0, atol=1e-6)
    stop = Scripted.records[-1]
    assert stop[5] == pytest.approx(result.equity.iloc[-1], abs=1e-6)
    assert stop[6] + stop[2] * (bars.close[-1] - stop[3]) == pytest.approx(stop[5], abs=1e-6)  # wallet + uPnL
    assert result.equity.min() >= -1e-6  # the account never goes below zero

    # 4. liquidation exactly when the margin ratio reaches 1: never at a close below it...
    liq_fills = iter(fills[fills.is_liquidation].itertuples())
    for kind, price, q, entry, wallet, _equity, _, _ in Scripted.records:
        if kind == "close" and abs(q) > 1e-12:
            assert margin_ratio(q, entry, price, wallet, brackets) < 1 + 1e-9
    # ...and at a liquidation fill the state just before it was at ratio 1
    for fill in liq_fills:
        # the state recorded last before the liquidation fill (fills record after themselves)
        before = [r for r in Scripted.records if r[0] in ("close", "fill")]
        idx = next(k for k, r in enumerate(before) if r[0] == "fill" and r[1] == fill.price and abs(r[2]) < 1e-12)
        _, _, q, entry, wallet, _, _, seen_ms = before[idx - 1]
        # funding booked at the opens since then came out of the (isolated or cross) wallet
        seen_bar = int(np.searchsorted(bars.ts, seen_ms))
        wallet -= funding.amount[(funding.bar > seen_bar) & (funding.bar <= fill.bar)].sum()
        low, high = bars.low[fill.bar], bars.high[fill.bar]
        if low < fill.price < high:  # not clipped by a gap
            assert margin_ratio(q, entry, fill.price, wallet, brackets) == pytest.approx(1.0, rel=1e-6)

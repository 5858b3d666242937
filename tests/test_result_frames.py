"""The result frames and metrics built column by column (and with numpy) equal what the row-by-row
pandas code they replaced builds. The reference implementations are that old code, kept here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sim_fast_path import BusyGrid

from btc_quant.core import metrics
from btc_quant.sdk.testing import run_strategy


def reference_fills_frame(fills, bar_index=None):
    columns = ["ts", "trade_id", "client_id", "side", "price", "quantity", "fee", "is_maker", "is_liquidation", "tag"]
    frame = pd.DataFrame(
        [(f.ts_ms, f.trade_id, f.client_id, f.side.value, f.price, f.quantity, f.fee, f.is_maker, f.is_liquidation, f.tag) for f in fills],
        columns=columns,
    )
    frame["ts"] = pd.to_datetime(frame["ts"].astype("int64"), unit="ms", utc=True)
    if bar_index is not None:
        frame["bar"] = np.asarray(bar_index, dtype=np.int64)[: len(frame)]
    return frame


def reference_orders_frame(orders):
    rows = [
        (
            o.client_id,
            o.side.value,
            o.type.value,
            o.price,
            o.quantity,
            o.filled_qty,
            o.avg_fill_price,
            o.post_only,
            o.reduce_only,
            o.status.value,
            o.reason,
            o.created_ms,
            o.updated_ms,
            o.tag,
        )
        for o in orders.values()
    ]
    columns = [
        "client_id",
        "side",
        "type",
        "price",
        "quantity",
        "filled_qty",
        "avg_fill_price",
        "post_only",
        "reduce_only",
        "status",
        "reason",
        "created",
        "updated",
        "tag",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    for col in ("created", "updated"):
        frame[col] = pd.to_datetime(frame[col].astype("int64"), unit="ms", utc=True)
    return frame


def reference_trades_frame(fills):
    columns = ["entry_time", "exit_time", "side", "max_quantity", "entry_price", "exit_price", "pnl", "fees"]
    if fills.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    pos = 0.0
    entry_cost = exit_value = fees = max_qty = bought = sold = 0.0
    start = side = None
    signs = np.where(fills["side"].to_numpy() == "buy", 1.0, -1.0)
    for ts, sign, price, qty, fee in zip(
        fills["ts"], signs, fills["price"].to_numpy(), fills["quantity"].to_numpy(), fills["fee"].to_numpy()
    ):
        if abs(pos) < 1e-12:
            start, side = ts, ("long" if sign > 0 else "short")
            entry_cost = exit_value = fees = max_qty = bought = sold = 0.0
        remaining = qty
        while remaining > 1e-12:
            part = min(remaining, abs(pos)) if abs(pos) > 1e-12 and np.sign(pos) != sign else remaining
            share = part / qty
            if sign > 0:
                bought += part
                entry_cost += part * price
            else:
                sold += part
                exit_value += part * price
            fees += fee * share
            pos += sign * part
            max_qty = max(max_qty, abs(pos))
            remaining -= part
            if abs(pos) < 1e-9:
                pos = 0.0
                long = side == "long"
                buy_px = entry_cost / bought if bought else float("nan")
                sell_px = exit_value / sold if sold else float("nan")
                rows.append(
                    (
                        start,
                        ts,
                        side,
                        max_qty,
                        buy_px if long else sell_px,
                        sell_px if long else buy_px,
                        (exit_value - entry_cost) - fees,
                        fees,
                    )
                )
                if remaining > 1e-12:
                    start, side = ts, ("long" if sign > 0 else "short")
                    entry_cost = exit_value = fees = max_qty = bought = sold = 0.0
    return pd.DataFrame(rows, columns=columns)


def reference_metrics(equity, fills, trades, *, initial_equity, position=None, funding=0.0):
    """compute_metrics as it was, with pandas throughout."""
    clean, dd = metrics._clean, metrics.drawdown(equity)
    final = float(equity.iloc[-1]) if len(equity) else initial_equity
    span_days = (equity.index[-1] - equity.index[0]).total_seconds() / 86400 if len(equity) > 1 else 0.0
    cagr = (final / initial_equity) ** (365.25 / span_days) - 1.0 if span_days > 0 and final > 0 else None
    max_dd = float(dd.max()) if len(dd) else 0.0
    rets = metrics.daily_returns(equity)
    sharpe = sortino = None
    if len(rets) >= 2:
        std = rets.std(ddof=1)
        sharpe = rets.mean() / std * math.sqrt(metrics.DAYS_PER_YEAR) if std > 0 else None
        downside = math.sqrt(float((np.minimum(rets.to_numpy(), 0.0) ** 2).mean()))
        sortino = rets.mean() / downside * math.sqrt(metrics.DAYS_PER_YEAR) if downside > 0 else None
    calmar = cagr / max_dd if cagr is not None and max_dd > 0 else None
    pnl = trades["pnl"] if len(trades) else pd.Series(dtype=float)
    wins, losses = pnl[pnl > 0], pnl[pnl <= 0]
    gross_loss = -losses.sum()
    return {
        "final_equity": clean(final),
        "total_return": clean(final / initial_equity - 1.0),
        "cagr": clean(cagr),
        "sharpe": clean(sharpe),
        "sortino": clean(sortino),
        "calmar": clean(calmar),
        "max_drawdown": clean(max_dd),
        "max_drawdown_days": clean(metrics.max_drawdown_duration(equity).total_seconds() / 86400),
        "trades": int(len(trades)),
        "fills": int(len(fills)),
        "win_rate": clean(len(wins) / len(pnl)) if len(pnl) else None,
        "profit_factor": clean(wins.sum() / gross_loss) if gross_loss > 0 else None,
        "exposure": clean(float(np.mean(np.abs(position) > 1e-12))) if position is not None and len(position) else 0.0,
        "fees": clean(float(fills["fee"].sum()) if len(fills) else 0.0),
        "funding": clean(funding),
        "liquidations": int(fills["is_liquidation"].sum()) if len(fills) else 0,
    }


def check_run(result, engine_fills, engine_orders, bar_index):
    fills = reference_fills_frame(engine_fills, bar_index)
    pd.testing.assert_frame_equal(result.fills, fills)
    pd.testing.assert_frame_equal(result.orders, reference_orders_frame(engine_orders))
    pd.testing.assert_frame_equal(result.trades, reference_trades_frame(fills))
    position = result.position.to_numpy()
    funding = result.metrics["funding"]
    expected = reference_metrics(
        result.equity, fills, result.trades, initial_equity=result.initial_equity, position=position, funding=funding
    )
    trips = result.strategy_object and result.strategy_object.completed_round_trips()
    if trips is not None:  # a grid counts its round trips as its trades (Strategy.completed_round_trips)
        expected["trades"] = trips
    assert result.metrics == expected
    assert result.metrics["trades"] == 0 or result.metrics["win_rate"] is not None


RUNS = [
    ("busy_grid", ("broker.fill_model=touch", "broker.margin_mode=isolated", "broker.leverage=50")),  # liquidations
    ("busy_grid", ("broker.max_volume_share=0.000000003",)),  # partial fills
    ("sma_cross", ()),
    ("maker_vol", ()),
]


@pytest.mark.parametrize("name,settings", RUNS)
def test_result_frames_equal_the_row_by_row_frames(plugins, sample_bars, monkeypatch, name, settings):
    seen = {}
    build = metrics.build_result

    def spy(engine, bars, broker):  # keep what the frames are built from
        seen.update(fills=list(engine.fills), orders=dict(engine.orders), bars=broker.fill_bar_indices())
        return build(engine, bars, broker)

    monkeypatch.setattr(metrics, "build_result", spy)
    strategy = BusyGrid if name == "busy_grid" else name
    result = run_strategy(
        strategy,
        sample_bars[:12_000],
        "exchange=binanceusdm",
        "symbol=BTC/USDT:USDT",
        "instrument.min_notional=0",
        *settings,
        plugins=plugins,
    )
    assert len(result.fills) > 20 and (len(result.trades) > 0 or name == "maker_vol")  # maker_vol is never flat here
    check_run(result, seen["fills"], seen["orders"], seen["bars"])


def test_result_frames_of_a_run_without_orders(sample_bars, plugins):
    from btc_quant.sdk import Strategy

    class Idle(Strategy):
        name = "idle"

    result = run_strategy(Idle, sample_bars[:3_000], plugins=plugins)
    check_run(result, [], {}, np.empty(0, np.int64))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5), st.floats(0.5, 2.0)), min_size=1, max_size=60))
def test_compiled_round_trips_match_the_row_by_row_walk(rows):
    """trades_frame's compiled walk (core/round_trips.py) gives the row-by-row reference's round
    trips: buys and sells that cross zero split at the flip, fees shared by quantity."""
    fills = pd.DataFrame(
        {
            "ts": pd.to_datetime(np.arange(len(rows), dtype=np.int64) * 60_000, unit="ms", utc=True),
            "side": ["buy" if b else "sell" for b, _, _ in rows],
            "price": [100.0 * p for _, _, p in rows],
            "quantity": [q * 0.001 for _, q, _ in rows],
            "fee": [0.01 * q for _, q, _ in rows],
        }
    )
    got, want = metrics.trades_frame(fills), reference_trades_frame(fills)
    assert len(got) == len(want)
    if len(want):
        pd.testing.assert_frame_equal(got, want, check_dtype=False)

"""Run results as pandas objects, and the performance metrics computed from them.

Conventions (stated because 24/7 markets have no trading-day calendar):

* Returns for Sharpe and Sortino are **daily** returns of the equity curve sampled at 00:00 UTC
  (last equity of each UTC day), annualised with sqrt(365). A run shorter than two days has
  too few returns and gets ``None``. Risk-free rate 0.
* Sortino uses the downside deviation ``sqrt(mean(min(r, 0)^2))`` over all daily returns.
* CAGR compounds over calendar time: ``(final / initial) ** (365.25 days / span) - 1``.
* Max drawdown is the largest fall from a running peak of the per-bar equity, as a positive
  fraction; its duration is the longest time from a peak to the bar that regained it (or to the
  end, if never regained).
* A trade is a round trip of the net position from flat back to flat (as Backtrader counts
  trades); its PnL includes the fees of its fills. Win rate and profit factor are over trades.
* Exposure is the fraction of bars that end with a non-zero position.
* ``fees`` and ``funding`` are what the account paid (positive = paid, funding negative when
  the account received more than it paid); both are already in the equity curve.
* ``liquidation_distance`` (per bar, ``RunResult.liquidation_distance``) is how far the close is from the
  liquidation price as a fraction of the close, positive while safe: (close - liq) / close for a
  long, (liq - close) / close for a short; NaN when flat or the position cannot be liquidated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .data import BarArrays

if TYPE_CHECKING:  # pragma: no cover
    from .broker import SimulatedBroker
    from .engine import Engine
    from .results import RunResult

DAYS_PER_YEAR = 365


def _cagr(growth: float, span_days: float) -> float | None:
    """``growth ** (365.25 / span_days) - 1``; None when the span is empty, the account is wiped
    out, or annualising a short run overflows a float (50 % in two hours compounds to about
    1e771 a year: not a number anyone can use)."""
    if span_days <= 0 or not growth > 0:
        return None
    try:
        return growth ** (365.25 / span_days) - 1.0
    except OverflowError:
        return None


def _clean(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


_FILLS_COLUMNS = ["ts", "trade_id", "client_id", "side", "price", "quantity", "fee", "is_maker", "is_liquidation", "tag"]
_ORDERS_COLUMNS = [
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
_TRADES_COLUMNS = ["entry_time", "exit_time", "side", "max_quantity", "entry_price", "exit_price", "pnl", "fees"]


@cache
def _empty_frame(kind: str) -> pd.DataFrame:
    """The frame of a run without fills / orders / trades, built once per process (callers copy it)."""
    columns = {"fills": _FILLS_COLUMNS, "orders": _ORDERS_COLUMNS, "trades": _TRADES_COLUMNS}[kind]
    frame = pd.DataFrame([], columns=columns) if kind != "trades" else pd.DataFrame(columns=columns)
    for col in ("ts", "created", "updated"):
        if col in columns:
            frame[col] = pd.to_datetime(frame[col].astype("int64"), unit="ms", utc=True)
    return frame


def columns_frame(columns: dict[str, Any]) -> pd.DataFrame:
    """``pd.DataFrame(columns)`` for columns that already have the dtypes pandas would give them
    (numpy int64 / float64 / bool arrays, pandas extension arrays such as str or UTC times) and one
    length: the same frame, without pandas' per-column checks and inference (~60 us of fixed cost a
    frame, paid some ten times a run). Numpy columns are copied into the frame's blocks, as
    ``pd.DataFrame`` copies them; ``tests/test_metrics.py`` holds it to ``pd.DataFrame``."""
    arrays = list(columns.values())
    index = pd.RangeIndex(len(arrays[0]) if arrays else 0)
    # the column labels as pandas infers them, built once per set of names (~25 us each time); each
    # frame gets its own view, so that renaming one frame's columns leaves the others alone
    names = _column_names(tuple(columns))._view()
    return pd.DataFrame._from_arrays(arrays, columns=names, index=index, verify_integrity=False)


@cache
def _column_names(names: tuple[str, ...]) -> pd.Index:
    return pd.Index(list(names))


def fills_frame(fills: list, bar_index: np.ndarray | None = None) -> pd.DataFrame:
    if fills:  # column by column: the same dtypes as from rows, without the row-to-column pass
        frame = pd.DataFrame(
            {
                "ts": pd.to_datetime(np.fromiter((f.ts_ms for f in fills), np.int64, len(fills)), unit="ms", utc=True),
                "trade_id": [f.trade_id for f in fills],
                "client_id": [f.client_id for f in fills],
                "side": [f.side.value for f in fills],
                "price": [f.price for f in fills],
                "quantity": [f.quantity for f in fills],
                "fee": [f.fee for f in fills],
                "is_maker": [f.is_maker for f in fills],
                "is_liquidation": [f.is_liquidation for f in fills],
                "tag": [f.tag for f in fills],
            }
        )
    else:
        frame = _empty_frame("fills").copy()
    if bar_index is not None:
        frame["bar"] = np.asarray(bar_index, dtype=np.int64)[: len(frame)]
    return frame


def orders_frame(orders: dict) -> pd.DataFrame:
    if not orders:
        return _empty_frame("orders").copy()
    values = list(orders.values())
    n = len(values)
    return pd.DataFrame(  # column by column: the same dtypes as from rows, without the row-to-column pass
        {
            "client_id": [o.client_id for o in values],
            "side": [o.side.value for o in values],
            "type": [o.type.value for o in values],
            "price": [o.price for o in values],
            "quantity": [o.quantity for o in values],
            "filled_qty": [o.filled_qty for o in values],
            "avg_fill_price": [o.avg_fill_price for o in values],
            "post_only": [o.post_only for o in values],
            "reduce_only": [o.reduce_only for o in values],
            "status": [o.status.value for o in values],
            "reason": [o.reason for o in values],
            "created": pd.to_datetime(np.fromiter((o.created_ms for o in values), np.int64, n), unit="ms", utc=True),
            "updated": pd.to_datetime(np.fromiter((o.updated_ms for o in values), np.int64, n), unit="ms", utc=True),
            "tag": [o.tag for o in values],
        }
    )


@dataclass(frozen=True)
class FillColumns:
    """The columns of a fills frame that the result builders read, as numpy arrays: read from the
    frame once per run (:meth:`read`), or handed over by a path that built the frame from them
    (a column read from a frame costs tens of microseconds, comparing a text column a hundred)."""

    buy: np.ndarray  # bool: the fill is a buy
    price: np.ndarray  # float64, C-contiguous (as the compiled walks take them)
    quantity: np.ndarray
    fee: np.ndarray
    liquidation: np.ndarray | None = None  # bool: is_liquidation, when the frame has it
    bar: np.ndarray | None = None  # int64: the bar of each fill, when the frame has it

    @classmethod
    def read(cls, fills: pd.DataFrame) -> FillColumns:
        # compare as a column: an arrow-backed str column to_numpy() is one Python object per fill
        return cls.of(
            buy=(fills["side"] == "buy").to_numpy(),
            price=fills["price"].to_numpy(),
            quantity=fills["quantity"].to_numpy(),
            fee=fills["fee"].to_numpy(),
            liquidation=fills["is_liquidation"].to_numpy() if "is_liquidation" in fills.columns else None,
            bar=fills["bar"].to_numpy() if "bar" in fills.columns else None,
        )

    @classmethod
    def of(cls, *, buy, price, quantity, fee, liquidation=None, bar=None) -> FillColumns:
        """From arrays of the fills in frame order (copied only where a type or layout differs)."""

        def floats(values):
            return np.require(values, np.float64, "C")

        return cls(
            np.asarray(buy, dtype=np.bool_),
            floats(price),
            floats(quantity),
            floats(fee),
            None if liquidation is None else np.asarray(liquidation, dtype=np.bool_),
            None if bar is None else np.require(bar, np.int64, "C"),
        )


def trades_frame(fills: pd.DataFrame, columns: FillColumns | None = None) -> pd.DataFrame:
    """Flat-to-flat round trips of the net position, with PnL net of their fills' fees.

    The walk over the fills is :func:`btc_quant.core.round_trips.flat_to_flat` (compiled; every
    path's trades come from it). ``columns``: the fills' columns when the caller has them (else
    read from ``fills``)."""
    if fills.empty:
        return _empty_frame("trades").copy()
    from .round_trips import flat_to_flat

    columns = FillColumns.read(fills) if columns is None else columns
    rows = flat_to_flat(np.where(columns.buy, 1.0, -1.0), columns.price, columns.quantity, columns.fee)
    if len(rows) == 0:  # never flat again after the first fill
        return pd.DataFrame([], columns=_TRADES_COLUMNS)
    start, end, long_ = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), rows[:, 2] != 0
    max_qty, entry_cost, bought, exit_value, sold, fees = rows[:, 3:].T
    with np.errstate(divide="ignore", invalid="ignore"):  # no buy (sell) in the trade: NaN
        buy_px = np.where(bought != 0, entry_cost / bought, np.nan)
        sell_px = np.where(sold != 0, exit_value / sold, np.nan)
    times = fills["ts"].array
    side = pd.Series(np.where(long_, "long", "short").astype(object))  # the dtype pandas gives strings
    return columns_frame(
        {
            "entry_time": times.take(start),
            "exit_time": times.take(end),
            "side": side.to_numpy() if side.dtype == object else side.array,
            "max_quantity": max_qty,
            "entry_price": np.where(long_, buy_px, sell_px),
            "exit_price": np.where(long_, sell_px, buy_px),
            "pnl": (exit_value - entry_cost) - fees,
            "fees": fees,
        }  # in the order of _TRADES_COLUMNS
    )


def drawdown(equity: pd.Series) -> pd.Series:
    """Fall from the running peak, as a positive fraction, at every point."""
    peak = equity.cummax()
    return 1.0 - equity / peak


def max_drawdown_duration(equity: pd.Series) -> pd.Timedelta:
    """Longest time from a peak to the point that regained it (or to the end)."""
    if equity.empty:
        return pd.Timedelta(0)
    return _drawdown(equity)[1]


def _drawdown(equity: pd.Series) -> tuple[float, pd.Timedelta, bool]:
    """The deepest fall from the running peak (NaN values left out), the longest time underwater
    and whether a value is NaN, in one compiled pass (:func:`btc_quant.core.bar_series.drawdown_extremes`)."""
    from .bar_series import drawdown_extremes

    index = equity.index
    times = index.asi8 if isinstance(index, pd.DatetimeIndex) else np.asarray(index, dtype=np.int64)
    deepest, longest, nan_seen = drawdown_extremes(np.require(equity.to_numpy(), np.float64, "C"), np.require(times, np.int64, "C"))
    unit = getattr(index, "unit", "ns") if isinstance(index, pd.DatetimeIndex) else "ns"
    return float(deepest), pd.Timedelta(int(longest), unit=unit), bool(nan_seen)


def daily_returns(equity: pd.Series) -> pd.Series:
    daily = equity.resample("1D").last().dropna()
    return daily.pct_change().dropna()


_UNIT_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def _daily_returns(equity: pd.Series) -> pd.Series:
    """:func:`daily_returns` without resampling: for an equity curve with no missing value on a
    UTC time index, the last value of each day is the last point before the day number changes."""
    from .bar_series import day_ends

    index = equity.index
    values = equity.to_numpy()
    if not (isinstance(index, pd.DatetimeIndex) and str(index.tz) == "UTC" and index.unit in _UNIT_PER_DAY) or np.isnan(values).any():
        return daily_returns(equity)
    last = np.empty(len(values), dtype=np.int64)
    count = day_ends(np.require(index.asi8, np.int64, "C"), _UNIT_PER_DAY[index.unit], last)
    if count < 0:  # days out of order
        return daily_returns(equity)
    closes = values[last[:count]]
    with np.errstate(divide="ignore", invalid="ignore"):
        rets = closes[1:] / closes[:-1] - 1.0
    return pd.Series(rets[~np.isnan(rets)])


def compute_metrics(
    equity: pd.Series,
    fills: pd.DataFrame,
    trades: pd.DataFrame,
    *,
    initial_equity: float,
    position: np.ndarray | None = None,
    funding: float = 0.0,
    columns: FillColumns | None = None,
) -> dict[str, Any]:
    """The standard metrics of a run; see the module docstring for conventions. ``columns``: the
    fills' columns when the caller has them (else read from ``fills``)."""
    final = float(equity.iloc[-1]) if len(equity) else initial_equity
    total_return = final / initial_equity - 1.0
    span_days = (equity.index[-1] - equity.index[0]).total_seconds() / 86400 if len(equity) > 1 else 0.0
    cagr = _cagr(final / initial_equity, span_days)
    max_dd, duration, nan_seen = _drawdown(equity) if len(equity) else (0.0, pd.Timedelta(0), False)
    if nan_seen:  # pandas' running peak skips NaN
        dd = drawdown(equity)
        max_dd = float(dd.max()) if len(dd) else 0.0
    rets = _daily_returns(equity)
    sharpe = sortino = None
    if len(rets) >= 2:
        std = rets.std(ddof=1)
        sharpe = rets.mean() / std * math.sqrt(DAYS_PER_YEAR) if std > 0 else None
        downside = math.sqrt(float((np.minimum(rets.to_numpy(), 0.0) ** 2).mean()))
        sortino = rets.mean() / downside * math.sqrt(DAYS_PER_YEAR) if downside > 0 else None
    calmar = cagr / max_dd if cagr is not None and max_dd > 0 else None
    # numpy sums with NaN skipped, as pandas' Series.sum does (and as cheaply as it gets per run)
    pnl = trades["pnl"].to_numpy(dtype=np.float64) if len(trades) else np.empty(0)
    wins, losses = pnl[pnl > 0], pnl[pnl <= 0]
    gross_loss = -np.nansum(losses)
    if len(fills):
        liquidations = int(fills["is_liquidation"].to_numpy().sum() if columns is None else columns.liquidation.sum())
        fees = float(np.nansum(fills["fee"].to_numpy(dtype=np.float64) if columns is None else columns.fee))
    else:
        liquidations, fees = 0, 0.0
    return {
        "final_equity": _clean(final),
        "total_return": _clean(total_return),
        "cagr": _clean(cagr),
        "sharpe": _clean(sharpe),
        "sortino": _clean(sortino),
        "calmar": _clean(calmar),
        "max_drawdown": _clean(max_dd),
        "max_drawdown_days": _clean(duration.total_seconds() / 86400),
        "trades": int(len(trades)),
        "fills": int(len(fills)),
        "win_rate": _clean(len(wins) / len(pnl)) if len(pnl) else None,
        "profit_factor": _clean(np.nansum(wins) / gross_loss) if gross_loss > 0 else None,
        "exposure": _clean(float(np.mean(np.abs(position) > 1e-12))) if position is not None and len(position) else 0.0,
        "fees": _clean(fees),
        "funding": _clean(funding),
        "liquidations": liquidations,
    }


def count_trades(result: RunResult, strategy) -> None:
    """``metrics["trades"]``: the strategy's completed round trips when it counts them (a grid
    trades lot by lot; :meth:`Strategy.completed_round_trips`), else the flat-to-flat trades.
    Called by every path that builds a result once the strategy has stopped."""
    trips = strategy.completed_round_trips() if hasattr(strategy, "completed_round_trips") else None
    if trips is not None:
        result.metrics["trades"] = int(trips)


def position_per_bar(n_bars: int, fills: pd.DataFrame, columns: FillColumns | None = None) -> np.ndarray:
    """Net position at each bar's close, from the fills and the bars they happened on. ``columns``:
    the fills' columns when the caller has them (else read from ``fills``)."""
    from .bar_series import position_per_bar as walk

    position = np.zeros(n_bars)
    if len(fills):
        columns = FillColumns.read(fills) if columns is None else columns
        walk(columns.bar, np.where(columns.buy, 1.0, -1.0) * columns.quantity, position)
    return position


def build_result(engine: Engine, bars: BarArrays, broker: SimulatedBroker) -> RunResult:
    """The event path's RunResult (:func:`btc_quant.core.results.assemble_result`)."""
    from .results import assemble_result

    equity = broker.equity_curve()
    initial = float(getattr(broker.config, "initial_cash", equity[0] if len(equity) else 0.0))
    return assemble_result(
        engine.info,
        bars,
        equity,
        fills_frame(engine.fills, broker.fill_bar_indices()),
        orders_frame(engine.orders),
        initial_equity=initial,
        funding=broker.funding_payments(),
        rejections=len(engine.rejections),
        **broker.bar_series(),
    )

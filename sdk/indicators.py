"""Indicators over numpy arrays.

Every function here is causal (element ``i`` uses inputs ``0..i`` only). Values before an
indicator has enough input are NaN. Two forms of each:

* vectorised functions over whole arrays (``sma``, ``ema``, ``rsi``, ``atr``, ``rolling_high``,
  ``rolling_low``) for backtests and ``wake_bars``;
* incremental classes (``SMA``, ``EMA``, ``RSI``, ``ATR``, ``RollingHigh``, ``RollingLow``) with
  ``update(value) -> value`` for live runs; fed the same bars they give the same numbers.

Window indicators (SMA, rolling high/low) give the same value for element ``i`` whether they are
given the whole history or just a window ending at ``i`` that is long enough: each window is
summed in the same order, with no running total carried from the start of the array. The
recursive ones (EMA, RSI, ATR) depend on where they start, as everywhere; they are seeded like
TA-Lib (the first value is the simple mean of the first ``period`` inputs) and checked against
pandas computations of the same definitions in the tests.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from ..core.compiled import njit


@njit(cache=True)
def _sma(values, period):
    out = np.full(values.shape[0], np.nan)
    for i in range(period - 1, values.shape[0]):
        total = 0.0
        for k in range(i - period + 1, i + 1):
            total += values[k]
        out[i] = total / period
    return out


def sma(values: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average of the last ``period`` values."""
    if period < 1:
        raise ValueError(f"sma period must be >= 1, got {period}")
    return _sma(np.ascontiguousarray(values, dtype=np.float64), int(period))


def crossed(fast: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """True where ``fast > slow`` differs from the bar before (and at the first bar both exist)."""
    valid = ~(np.isnan(fast) | np.isnan(slow))
    above = (fast > slow) & valid
    before = np.r_[False, above[:-1]]
    first = valid & ~np.r_[False, valid[:-1]]
    return (above != before) & valid | (first & above)


# --- recursive averages ----------------------------------------------------------------------
# EMA, RSI and ATR carry state from bar to bar. They are seeded the way TA-Lib seeds them: the
# first value is the simple mean of the first ``period`` inputs, later values follow the
# recursion. A live run that starts its incremental indicator on the same first bar as the
# backtest gets the same numbers (the incremental classes below are tested against these).


@njit(cache=True)
def _ema_seeded(values, period, alpha):
    n = values.shape[0]
    out = np.full(n, np.nan)
    if n < period:
        return out
    total = 0.0
    for k in range(period):
        total += values[k]
    value = total / period
    out[period - 1] = value
    for i in range(period, n):
        value = value + alpha * (values[i] - value)
        out[i] = value
    return out


def _check_period(name: str, period: int) -> int:
    if int(period) < 1:
        raise ValueError(f"{name} period must be >= 1, got {period}")
    return int(period)


def ema(values: np.ndarray, period: int) -> np.ndarray:
    """Exponential moving average, alpha = 2 / (period + 1), seeded with the SMA of the first ``period`` values."""
    period = _check_period("ema", period)
    return _ema_seeded(np.ascontiguousarray(values, dtype=np.float64), period, 2.0 / (period + 1))


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """max(high - low, |high - previous close|, |low - previous close|); the first bar's is high - low."""
    high, low, close = (np.asarray(a, dtype=np.float64) for a in (high, low, close))
    prev = np.r_[np.nan, close[:-1]]
    tr = np.fmax(high - low, np.fmax(np.abs(high - prev), np.abs(low - prev)))
    return tr


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = 14) -> np.ndarray:
    """Average true range, Wilder's smoothing (alpha = 1 / period), seeded with the mean of the first ``period`` true ranges."""
    period = _check_period("atr", period)
    return _ema_seeded(true_range(high, low, close), period, 1.0 / period)


@njit(cache=True)
def _rsi(close, period):
    n = close.shape[0]
    out = np.full(n, np.nan)
    if n <= period:
        return out
    gain = 0.0
    loss = 0.0
    for i in range(1, period + 1):
        d = close[i] - close[i - 1]
        if d > 0:
            gain += d
        else:
            loss -= d
    gain /= period
    loss /= period
    out[period] = 100.0 if loss == 0.0 else 100.0 - 100.0 / (1.0 + gain / loss)
    for i in range(period + 1, n):
        d = close[i] - close[i - 1]
        gain = (gain * (period - 1) + (d if d > 0 else 0.0)) / period
        loss = (loss * (period - 1) + (-d if d < 0 else 0.0)) / period
        out[i] = 100.0 if loss == 0.0 else 100.0 - 100.0 / (1.0 + gain / loss)
    return out


def rsi(close: np.ndarray, period: int = 14) -> np.ndarray:
    """Wilder's relative strength index (0..100); the first value is at index ``period``."""
    period = _check_period("rsi", period)
    return _rsi(np.ascontiguousarray(close, dtype=np.float64), period)


# --- rolling extremes -------------------------------------------------------------------------


@njit(cache=True)
def _rolling_extreme(values, period, sign):
    # Monotonic deque of indices: O(n) whatever the period (a 30-day window of 1m bars is 43,200).
    n = values.shape[0]
    out = np.full(n, np.nan)
    q = np.empty(n, dtype=np.int64)
    head = 0
    tail = 0
    for i in range(n):
        v = sign * values[i]
        while tail > head and sign * values[q[tail - 1]] <= v:
            tail -= 1
        q[tail] = i
        tail += 1
        if q[head] <= i - period:
            head += 1
        if i >= period - 1:
            out[i] = values[q[head]]
    return out


def rolling_high(values: np.ndarray, period: int) -> np.ndarray:
    """Highest of the last ``period`` values."""
    period = _check_period("rolling_high", period)
    return _rolling_extreme(np.ascontiguousarray(values, dtype=np.float64), period, 1.0)


def rolling_low(values: np.ndarray, period: int) -> np.ndarray:
    """Lowest of the last ``period`` values."""
    period = _check_period("rolling_low", period)
    return _rolling_extreme(np.ascontiguousarray(values, dtype=np.float64), period, -1.0)


# --- incremental forms for live runs -------------------------------------------------------------
# Each class takes one bar's value per ``update`` and returns the indicator at that bar (NaN
# until there is enough input): feeding it the bars of a backtest gives the vectorised numbers.


class SMA:
    """Incremental :func:`sma` (the window is re-summed in order, as the vectorised form does)."""

    def __init__(self, period: int) -> None:
        self.period = _check_period("sma", period)
        self._window: deque[float] = deque(maxlen=self.period)

    def update(self, value: float) -> float:
        self._window.append(float(value))
        if len(self._window) < self.period:
            return math.nan
        total = 0.0
        for v in self._window:
            total += v
        return total / self.period


class EMA:
    """Incremental :func:`ema`."""

    def __init__(self, period: int, *, alpha: float | None = None) -> None:
        self.period = _check_period("ema", period)
        self.alpha = 2.0 / (self.period + 1) if alpha is None else alpha
        self._seed: list[float] = []
        self.value = math.nan

    def update(self, value: float) -> float:
        if len(self._seed) < self.period:
            self._seed.append(float(value))
            if len(self._seed) == self.period:
                total = 0.0
                for v in self._seed:
                    total += v
                self.value = total / self.period
            return self.value
        self.value = self.value + self.alpha * (value - self.value)
        return self.value


class ATR:
    """Incremental :func:`atr`: ``update(high, low, close)``."""

    def __init__(self, period: int = 14) -> None:
        self._avg = EMA(period, alpha=1.0 / _check_period("atr", period))
        self._prev_close = math.nan

    def update(self, high: float, low: float, close: float) -> float:
        prev = self._prev_close
        tr = high - low if math.isnan(prev) else max(high - low, abs(high - prev), abs(low - prev))
        self._prev_close = close
        return self._avg.update(tr)


class RSI:
    """Incremental :func:`rsi`."""

    def __init__(self, period: int = 14) -> None:
        self.period = _check_period("rsi", period)
        self._prev = math.nan
        self._count = 0
        self._gain = 0.0
        self._loss = 0.0

    def update(self, close: float) -> float:
        prev, self._prev = self._prev, float(close)
        if math.isnan(prev):
            return math.nan
        d = close - prev
        up, down = (d if d > 0 else 0.0), (-d if d < 0 else 0.0)
        self._count += 1
        p = self.period
        if self._count < p:
            self._gain += up
            self._loss += down
            return math.nan
        if self._count == p:
            self._gain = (self._gain + up) / p
            self._loss = (self._loss + down) / p
        else:
            self._gain = (self._gain * (p - 1) + up) / p
            self._loss = (self._loss * (p - 1) + down) / p
        return 100.0 if self._loss == 0.0 else 100.0 - 100.0 / (1.0 + self._gain / self._loss)


class RollingHigh:
    """Incremental :func:`rolling_high` (monotonic deque, O(1) amortised per bar)."""

    _sign = 1.0

    def __init__(self, period: int) -> None:
        self.period = _check_period(type(self).__name__, period)
        self._q: deque[tuple[int, float]] = deque()
        self._i = -1

    def update(self, value: float) -> float:
        self._i += 1
        s = self._sign
        while self._q and s * self._q[-1][1] <= s * value:
            self._q.pop()
        self._q.append((self._i, float(value)))
        if self._q[0][0] <= self._i - self.period:
            self._q.popleft()
        return self._q[0][1] if self._i >= self.period - 1 else math.nan


class RollingLow(RollingHigh):
    """Incremental :func:`rolling_low`."""

    _sign = -1.0

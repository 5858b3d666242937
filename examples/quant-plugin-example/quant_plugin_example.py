"""A third-party btc-quant plugin: Donchian-channel breakout.

Goes long with a market order when the close breaks above the highest high of the previous
``period`` bars, and closes when it breaks below the lowest low of the previous ``exit_period``
bars. Install with ``pip install -e examples/quant-plugin-example`` and run
``quant run strategy=donchian strategy.period=60``.

It is written on the SDK's :class:`~btc_quant.sdk.SignalStrategy`: the rule is one causal array
(:meth:`Donchian.signal`), so the same class trades bar by bar on paper and live, and a backtest
on the ``sim`` broker runs in the simulator's compiled signal loop through the declared fast-path
protocol (``Strategy.compiled_decisions``) -- nothing here imports the simulator.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from btc_quant.sdk import Field, SignalStrategy, StrategyConfig, hookimpl


class DonchianConfig(StrategyConfig):
    period: int = Field(60, ge=2, description="entry channel length in bars")
    exit_period: int = Field(30, ge=2, description="exit channel length in bars")
    equity_pct: float = Field(0.5, gt=0, le=1, description="share of equity to hold while long")


def _prior(values: np.ndarray, n: int, reduce) -> np.ndarray:
    """``reduce`` over the ``n`` values before each element (NaN where fewer exist)."""
    out = np.full(len(values), np.nan)
    if len(values) > n:
        out[n:] = reduce(sliding_window_view(values, n)[:-1], axis=1)
    return out


class Donchian(SignalStrategy):
    """Long on a close above the prior N-bar high; flat on a close below the prior M-bar low."""

    Config = DonchianConfig

    def signal(self, bars):
        c = self.config
        need = max(c.period, c.exit_period) + 1
        prior_high = _prior(bars.high, c.period, np.max)
        prior_low = _prior(bars.low, c.exit_period, np.min)
        out = np.full(len(bars), np.nan)
        out[bars.close > prior_high] = c.equity_pct  # flat: buy equity_pct of equity
        out[bars.close < prior_low] = 0.0  # long: close it
        out[: need - 1] = np.nan  # not enough bars yet
        return out


@hookimpl
def quant_register_strategies(register):
    register("donchian", Donchian)

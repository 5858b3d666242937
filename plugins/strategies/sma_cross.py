"""``sma_cross``: long when the fast SMA is above the slow one, flat otherwise (the seed's example).

A :class:`~btc_quant.sdk.signals.SignalStrategy`: its decisions are one causal array over the bars
(at each cross of the two averages, hold ``equity_pct`` of equity or nothing), so a backtest on
the ``sim`` broker runs in the compiled signal loop and the engine never walks the bars in
between. The position is opened with a market order for ``equity_pct`` of equity and closed with
a reduce-only market order; both fill at the next bar's open. Live, the averages are computed on
the window of closed bars at every bar.
"""

from __future__ import annotations

import numpy as np
from pydantic import field_validator

from btc_quant.sdk import Field, StrategyConfig, hookimpl
from btc_quant.sdk.indicators import crossed, sma
from btc_quant.sdk.signals import SignalStrategy


class SmaCrossConfig(StrategyConfig):
    fast: int = Field(10, ge=1, description="fast SMA length in bars")
    slow: int = Field(30, ge=2, description="slow SMA length in bars")
    equity_pct: float = Field(0.95, gt=0, le=1, description="share of equity to hold while long")

    @field_validator("slow")
    @classmethod
    def _slower_than_fast(cls, slow: int, info):
        fast = info.data.get("fast")
        if fast is not None and slow <= fast:
            raise ValueError(f"must be greater than fast ({fast})")
        return slow


class SmaCross(SignalStrategy):
    """Long while SMA(fast) > SMA(slow), flat otherwise; market orders at the next open."""

    Config = SmaCrossConfig

    def signal(self, bars):
        """At each cross (once both averages exist): ``equity_pct`` when the fast SMA is above, 0 when
        it is not; NaN between crosses (no decision: the engine skips those bars)."""
        fast, slow = sma(bars.close, self.config.fast), sma(bars.close, self.config.slow)
        decide = crossed(fast, slow) & ~np.isnan(slow)
        return np.where(decide, np.where(fast > slow, self.config.equity_pct, 0.0), np.nan)

    def live_signal(self, ctx, bar):
        """Bars arriving one at a time (live): the averages on the window, at every bar."""
        long = self._long(ctx, bar)
        return float("nan") if long is None else (self.config.equity_pct if long else 0.0)

    def _long(self, ctx, bar) -> bool | None:
        """Fast SMA above slow at the last closed bar; None before there are ``slow`` bars."""
        closes = ctx.bars(self.config.slow).close
        if len(closes) < self.config.slow:
            return None
        return sma(closes, self.config.fast)[-1] > sma(closes, self.config.slow)[-1]


@hookimpl
def quant_register_strategies(register):
    register("sma_cross", SmaCross)

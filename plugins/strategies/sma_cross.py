"""``sma_cross``: long when the fast SMA is above the slow one, flat otherwise (the seed's example).

The position is opened with a market order for ``equity_pct`` of equity and closed with a market
order; both fill at the next bar's open. In a backtest the strategy only wakes on bars where the
two averages cross, so the engine skips everything in between, and ``on_bar`` reads the averages
that ``wake_bars`` computed over the run's bars (causal: the value at a bar uses that bar and the
ones before it only, the same number ``sma`` gives on the window) instead of computing them again.
"""

from __future__ import annotations

import numpy as np
from pydantic import field_validator

from btc_quant.sdk import Field, Strategy, StrategyConfig, hookimpl
from btc_quant.sdk.indicators import crossed, sma


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


class SmaCross(Strategy):
    """Long while SMA(fast) > SMA(slow), flat otherwise; market orders at the next open."""

    Config = SmaCrossConfig
    needs_every_bar = False

    _known: tuple | None = None  # (ts, close, fast > slow, slow known) of the bars wake_bars saw

    def wake_bars(self, bars):
        fast, slow = sma(bars.close, self.config.fast), sma(bars.close, self.config.slow)
        self._known = (bars.ts, bars.close, fast > slow, ~np.isnan(slow))
        return crossed(fast, slow)

    def _long(self, ctx, bar) -> bool | None:
        """Fast SMA above slow at ``bar``; None before there are ``slow`` bars."""
        if self._known is not None:
            ts, close, above, ready = self._known
            i = int(ts.searchsorted(bar.ts_ms))
            if i < len(ts) and ts[i] == bar.ts_ms and close[i] == bar.close:
                return bool(above[i]) if ready[i] else None
        closes = ctx.bars(self.config.slow).close  # live runs: no wake_bars, compute on the window
        if len(closes) < self.config.slow:
            return None
        return sma(closes, self.config.fast)[-1] > sma(closes, self.config.slow)[-1]

    def on_bar(self, ctx, bar):
        long = self._long(ctx, bar)
        if long is None:
            return
        position = ctx.position.quantity
        if long and position == 0 and not ctx.open_orders:
            ctx.buy(self.config.equity_pct * ctx.equity / bar.close)
        elif not long and position > 0 and not ctx.open_orders:
            ctx.sell(position, reduce_only=True)


@hookimpl
def quant_register_strategies(register):
    register("sma_cross", SmaCross)

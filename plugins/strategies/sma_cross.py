"""``sma_cross``: long when the fast SMA is above the slow one, flat otherwise (the seed's example).

The position is opened with a market order for ``equity_pct`` of equity and closed with a market
order; both fill at the next bar's open. In a backtest the strategy only wakes on bars where the
two averages cross, so the engine skips everything in between.
"""

from __future__ import annotations

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

    def wake_bars(self, bars):
        return crossed(sma(bars.close, self.config.fast), sma(bars.close, self.config.slow))

    def on_bar(self, ctx, bar):
        closes = ctx.bars(self.config.slow).close
        if len(closes) < self.config.slow:
            return
        long = sma(closes, self.config.fast)[-1] > sma(closes, self.config.slow)[-1]
        position = ctx.position.quantity
        if long and position == 0 and not ctx.open_orders:
            ctx.buy(self.config.equity_pct * ctx.equity / bar.close)
        elif not long and position > 0 and not ctx.open_orders:
            ctx.sell(position, reduce_only=True)


@hookimpl
def quant_register_strategies(register):
    register("sma_cross", SmaCross)

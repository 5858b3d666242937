"""A third-party btc-quant plugin: Donchian-channel breakout.

Goes long with a market order when the close breaks above the highest high of the previous
``period`` bars, and closes when it breaks below the lowest low of the previous ``exit_period``
bars. Install with ``pip install -e examples/quant-plugin-example`` and run
``quant run strategy=donchian strategy.period=60``.
"""

from btc_quant.sdk import Field, Strategy, StrategyConfig, hookimpl


class DonchianConfig(StrategyConfig):
    period: int = Field(60, ge=2, description="entry channel length in bars")
    exit_period: int = Field(30, ge=2, description="exit channel length in bars")
    equity_pct: float = Field(0.5, gt=0, le=1, description="share of equity to hold while long")


class Donchian(Strategy):
    """Long on a close above the prior N-bar high; flat on a close below the prior M-bar low."""

    Config = DonchianConfig

    def on_bar(self, ctx, bar):
        need = max(self.config.period, self.config.exit_period) + 1
        bars = ctx.bars(need)
        if len(bars) < need or ctx.open_orders:
            return
        prior_high = bars.high[-self.config.period - 1 : -1].max()
        prior_low = bars.low[-self.config.exit_period - 1 : -1].min()
        position = ctx.position.quantity
        if position == 0 and bar.close > prior_high:
            ctx.buy(self.config.equity_pct * ctx.equity / bar.close, tag="breakout")
        elif position > 0 and bar.close < prior_low:
            ctx.sell(position, reduce_only=True, tag="exit")


@hookimpl
def quant_register_strategies(register):
    register("donchian", Donchian)

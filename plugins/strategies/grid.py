"""``grid``: a static grid of order pairs -- buy levels every ``step_pct`` below the first price,
each with a take-profit one step above it (``side=short``: the mirror image).

Each level is an :class:`~btc_quant.sdk.OrderPair`: its entry rests until filled, then its
take-profit rests until filled, then the entry again. On the ``sim`` broker the whole backtest runs
in the compiled pair loop (see :mod:`btc_quant.sdk.pairs`); on paper and live the same legs are
placed from ``on_fill``.
"""

from __future__ import annotations

from typing import Literal

from btc_quant.sdk import Field, OrderPair, PairGrid, StrategyConfig, hookimpl


class GridConfig(StrategyConfig):
    levels: int = Field(40, ge=1, le=10_000, description="number of grid levels")
    step_pct: float = Field(0.005, gt=0, lt=1, description="distance between levels and from a level to its take-profit (0.005 = 0.5 %)")
    quantity: float = Field(0.01, gt=0, description="quantity of every order, in the base asset")
    side: Literal["long", "short"] = Field("long", description="long: buy levels below the first price; short: sell levels above it")
    post_only: bool = Field(True, description="post-only legs (Binance GTX): a leg that would cross on arrival expires")


class Grid(PairGrid):
    """Static grid: ``levels`` entries a step apart from the first open, take-profit one step away."""

    Config = GridConfig

    def pairs(self, ctx):
        c = self.config
        long = c.side == "long"
        away = (1 - c.step_pct) if long else (1 + c.step_pct)
        back = (1 + c.step_pct) if long else (1 - c.step_pct)
        price = ctx.price
        out = []
        for k in range(1, c.levels + 1):
            entry = price * away**k
            out.append(OrderPair("buy" if long else "sell", c.quantity, entry, entry * back, post_only=c.post_only, tag=f"g{k}"))
        return out


@hookimpl
def quant_register_strategies(register):
    register("grid", Grid)

"""A bot process for the live tests: ``python tests/live_bot.py --url=URL [--testnet] key=value...``.

Runs the live driver with the given settings (e.g. ``strategy=maker_vol broker=live ...``). Every
fill delivered to the strategy is appended to ``$LIVE_BOT_FILLS`` (one JSON line) by a
``quant_on_fill`` observer, which the engine calls right after the strategy's ``on_fill``: a test
can check that each fill reached the strategy exactly once across kills and restarts, whatever
the strategy.

With ``--wait`` it loads everything, then waits for one line on stdin before it starts the bot (a
test starts the next life's process while the current one trades, so Python's imports are off
the clock; the bot's lock is still taken only once it goes).

It also registers ``grid_probe``, a small test strategy (post-only limits around the price,
re-centred every bar, a reduce-only market exit every few bars).
"""

from __future__ import annotations

import json
import os
import sys

from btc_quant.core.cli import setup_logging
from btc_quant.core.config import load_run_config
from btc_quant.core.plugins import load_plugins
from btc_quant.plugins.exchanges.driver import LiveRun
from btc_quant.sdk import Field, Strategy, StrategyConfig, hookimpl


class GridProbeConfig(StrategyConfig):
    levels: int = Field(2, ge=1)
    step: float = Field(0.0004, gt=0, description="distance between levels, relative")
    qty: float = Field(0.003, gt=0)
    exit_every: int = Field(7, ge=1, description="close the position at market every N bars")


class GridProbe(Strategy):
    Config = GridProbeConfig

    def __init__(self, config):
        super().__init__(config)
        self.bars = 0

    def on_bar(self, ctx, bar):
        self.bars += 1
        c = self.config
        for order in ctx.open_orders:
            ctx.cancel(order.client_id)
        if self.bars % c.exit_every == 0 and not ctx.position.is_flat:
            ctx.order_target(0.0)
            return
        for k in range(1, c.levels + 1):
            ctx.buy(c.qty, bar.close * (1 - k * c.step), post_only=True)
            ctx.sell(c.qty, bar.close * (1 + k * c.step), post_only=True, reduce_only=False)


@hookimpl
def quant_register_strategies(register):
    register("grid_probe", GridProbe)


_FILLS = None


@hookimpl
def quant_on_fill(fill, run):
    global _FILLS
    if _FILLS is None:
        _FILLS = open(os.environ["LIVE_BOT_FILLS"], "a", buffering=1)
    _FILLS.write(
        json.dumps(
            {
                "trade_id": fill.trade_id,
                "client_id": fill.client_id,
                "side": fill.side.value,
                "qty": fill.quantity,
                "price": fill.price,
                "fee": fill.fee,
                "position_side": fill.position_side.value,
                "pid": os.getpid(),
            }
        )
        + "\n"
    )


def main() -> int:
    setup_logging(False)
    plugins = load_plugins(extra={"grid_probe": sys.modules[__name__]})
    args = sys.argv[1:]
    flags = {"testnet": "--testnet" in args}
    url = next((a.split("=", 1)[1] for a in args if a.startswith("--url=")), None)
    settings = [a for a in args if not a.startswith("--")]
    cfg = load_run_config(settings, plugins.registry)
    if "--wait" in args:
        # started ahead of its life: imports and config done, wait for the go (one line on stdin;
        # end of input: the test no longer needs this life) before taking the bot's lock
        import ccxt.pro  # noqa: F401 - the driver's client, imported now rather than on the clock

        if not sys.stdin.readline():
            return 0
    LiveRun(cfg, plugins, url=url, warmup=50, **flags).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

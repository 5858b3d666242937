"""The Python blocks of docs/strategy-guide.md run, in order, as one script: the guide stays true."""

from __future__ import annotations

import re
from pathlib import Path

from btc_quant.sdk.testing import bars_from, run_strategy

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "strategy-guide.md"


def test_guide_code_runs():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) == 5
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), scope)

    class Probe(scope["Ladder"]):
        name = "guide_ladder"
        live: list = []

        def on_bar(self, ctx, bar):
            super().on_bar(ctx, bar)
            Probe.live.append(len(ctx.open_orders))

    # the OrderSync example keeps exactly its 5 nearest buys live while price moves
    rows = [(40_000 + 30 * i, 40_050 + 30 * i, 39_990 + 30 * i, 40_030 + 30 * i) for i in range(30)]
    result = run_strategy(Probe, bars_from(rows), "exchange=binanceusdm", "symbol=BTC/USDT:USDT")
    assert set(Probe.live) == {5}
    assert result.orders.client_id.str.startswith("ladder:b").all()


def test_guide_pair_grid_runs_compiled_with_the_event_path_fills():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    scope: dict = {}
    exec(compile(blocks[3], str(GUIDE), "exec"), scope)
    grid = type("GuideGrid", (scope["Grid"],), {"name": "guide_grid"})
    from btc_quant.core.data import SAMPLE, read_bars_file

    bars = read_bars_file(SAMPLE.path)[:12_000]
    fast = run_strategy(grid, bars, "exchange=binanceusdm", "symbol=BTC/USDT:USDT", compiled=True)
    event = run_strategy(grid, bars, "exchange=binanceusdm", "symbol=BTC/USDT:USDT")
    assert fast.compiled is True and not event.compiled
    assert len(fast.fills) > 10 and fast.fills.tag.iloc[0].endswith(":entry")
    cols = ["ts", "side", "price", "quantity", "fee", "tag"]
    assert fast.fills[cols].equals(event.fills[cols]) and fast.metrics == event.metrics


def test_guide_signal_strategy_runs_compiled_with_the_event_path_fills():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    scope: dict = {}
    exec(compile(blocks[4], str(GUIDE), "exec"), scope)
    cross = type("GuideCross", (scope["Cross"],), {"name": "guide_cross"})
    from btc_quant.core.data import SAMPLE, read_bars_file

    bars = read_bars_file(SAMPLE.path)[:12_000]
    fast = run_strategy(cross, bars, "exchange=binanceusdm", "symbol=BTC/USDT:USDT", compiled=True)
    event = run_strategy(cross, bars, "exchange=binanceusdm", "symbol=BTC/USDT:USDT")
    sma_cross = run_strategy("sma_cross", bars, "exchange=binanceusdm", "symbol=BTC/USDT:USDT")
    assert fast.compiled is True and not event.compiled
    cols = ["ts", "side", "price", "quantity", "fee"]
    assert len(fast.fills) > 100 and fast.fills[cols].equals(event.fills[cols]) and fast.metrics == event.metrics
    assert fast.fills[cols].equals(sma_cross.fills[cols])  # the guide's Cross is sma_cross 10/30

"""The Python blocks of docs/strategy-guide.md run, in order, as one script: the guide stays true."""

from __future__ import annotations

import re
from pathlib import Path

from btc_quant.sdk.testing import bars_from, run_strategy

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "strategy-guide.md"


def test_guide_code_runs():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) == 3
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

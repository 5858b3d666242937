"""Fill models: when a resting limit order fills on a bar.

A fill model is data, not code, so that the simulated broker can apply it inside compiled loops.
``strict=True`` (``through``) fills a buy only when the bar trades *below* its price (low < price)
and a sell only when it trades above (high > price): the queue ahead of us is assumed to be
consumed only if the price goes through. ``strict=False`` (``touch``) fills on low <= price.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FillModel:
    name: str
    strict: bool
    description: str = ""

    def buy_fills(self, price: float, low: float) -> bool:
        return low < price if self.strict else low <= price

    def sell_fills(self, price: float, high: float) -> bool:
        return high > price if self.strict else high >= price


THROUGH = FillModel("through", True, "buy fills only if low < price, sell only if high > price (default)")
TOUCH = FillModel("touch", False, "buy fills if low <= price, sell if high >= price (optimistic)")

"""Fill models: when a resting limit order fills on a bar.

A fill model is data, not code, so that the simulated broker can apply it inside compiled loops.
``strict=True`` (``through``) fills a buy only when the bar trades *below* its price (low < price)
and a sell only when it trades above (high > price): the queue ahead of us is assumed to be
consumed only if the price goes through. ``strict=False`` (``touch``) fills on low <= price.
``calibrated=True`` (``prob``): a bar that reaches the order (as ``touch``) fills it with the
probability of a calibration fitted by ``quant calibrate`` (``broker.calibration=NAME``), drawn
deterministically per order and bar (the sim's venue core, ``prob_allows``). ``tape=True``
(``queue``): resting orders fill on the stored trade tape by queue position (the sim
broker's trade replay); the bars only give the strategy its clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FillModel:
    name: str
    strict: bool
    description: str = ""
    #: needs a fitted calibration (``broker.calibration=NAME``): fills are a seeded draw per order and bar
    calibrated: bool = False
    #: fills come from the stored trade tape (``queue``), not from the bars: the run needs stored trades
    tape: bool = False

    def buy_fills(self, price: float, low: float) -> bool:
        return low < price if self.strict else low <= price

    def sell_fills(self, price: float, high: float) -> bool:
        return high > price if self.strict else high >= price


THROUGH = FillModel("through", True, "buy fills only if low < price, sell only if high > price (default)")
TOUCH = FillModel("touch", False, "buy fills if low <= price, sell if high >= price (optimistic)")
PROB = FillModel(
    "prob",
    False,
    "a bar reaching the order fills it with the probability fitted by quant calibrate "
    "(broker.calibration=NAME), one seeded draw per order and bar",
    calibrated=True,
)
QUEUE = FillModel(
    "queue",
    True,
    "trade replay: a resting order waits behind the displayed quantity at its price and fills as stored "
    "trades consume it (broker.latency_ms, broker.queue_qty); needs the period's trades in the store",
    tape=True,
)

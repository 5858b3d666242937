"""Old home of the sim's compiled path pieces; they live in the venue core now
(:mod:`btc_quant.plugins.brokers.sim.venue`). Re-exported for code that still imports them here."""

from .sim.venue import (  # noqa: F401
    bar_path,
    fill_bar_path,
    first_event_bar,
    liquidation_bounds,
    liquidation_price,
    next_resting_fill,
    position_after_fill,
    resting_bounds,
)

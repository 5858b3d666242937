"""``sim``: the simulated exchange of every backtest path.

* :mod:`.venue` -- the venue core: the one compiled simulator of the account and its resting
  orders (state layout and functions in its docstring). Every venue rule lives there.
* :mod:`.broker` -- :class:`SimBroker`, the event-path broker (Python strategies, paper trading)
  that drives the core one event at a time, and the ``through``/``touch`` fill models.
* :mod:`.pairs`, :mod:`.signals` -- the compiled decision loops of ``PairGrid`` and
  ``SignalStrategy`` over the same core.
"""

from .broker import SimBroker, SimConfig, quant_register_brokers, quant_register_fill_models

__all__ = ["SimBroker", "SimConfig", "quant_register_brokers", "quant_register_fill_models"]

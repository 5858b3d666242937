"""The compiled decision loop of a :class:`~btc_quant.sdk.signals.SignalStrategy` over the venue core.

Between decisions a signal strategy asks nothing of Python; at a decision its rule is fixed
(:mod:`btc_quant.sdk.signals`). So the whole run is one numba loop: the venue core (:mod:`.venue`:
bar skipping, the intrabar path, market orders placed at a decision bar's close filled at the
next open with the taker fee, the margin check, reduce-only exits, margin, liquidation, funding --
the functions the event-path :class:`~.broker.SimBroker` calls) plus the strategy's decision at
each decision bar's close. A case it does not implement (a quantity that rounds to 0 or is under
the minimum notional -- an error on the event path --, a reduce-only exit cut to a smaller
position) stops it and the event path runs. ``tests/test_sim_signal.py`` checks fill-for-fill
equality.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from btc_quant.sdk.signals import signal_order

from . import venue as vc
from .pairs import bar_arrays, build_result, run_kernel
from .venue import BAIL_CAPACITY, NOPEN, OK, P_MINNOT, PRICE, Q_QTY, WALLET, compiled, new_order, round_qty, submit

log = logging.getLogger(__name__)

BAIL_ORDER, BAIL_CUT = 11, 12
BAIL_REASONS = {
    BAIL_ORDER: "an order quantity rounds to 0 or is below the minimum notional (an OrderError on the event path)",
    BAIL_CUT: "a reduce-only exit was cut to a smaller position (a partial fill)",
    BAIL_CAPACITY: "capacity",
}


@compiled
def _decide(v, value, close):  # pragma: no cover - compiled
    """SignalStrategy.on_bar at a decision bar's close, with Engine.submit and the venue's submit:
    OK or a bail code."""
    S, P = v.S, v.P
    if S[NOPEN] > 0:
        return OK
    pos = v.POS[0, Q_QTY]
    side, quantity, reduce_only = signal_order(value, pos, S[WALLET] if pos == 0 else 0.0, close)
    if side == 0:
        return OK
    qty = round_qty(quantity, P)  # Context.buy/sell: rounded down to the lot; 0 or under the minimum is an OrderError there
    if not (qty > 0) or (not reduce_only and not (close * qty >= P[P_MINNOT])):
        return BAIL_ORDER
    ro = 1.0 if reduce_only else 0.0
    oi = new_order(v, side, np.nan, qty, 0.0, ro, 0.0)
    if oi < 0:
        return BAIL_CAPACITY
    if submit(v, oi, False) == vc.SUB_FULL:  # a market order waits for the next open
        return BAIL_CAPACITY
    return OK


@compiled
def signal_kernel(ts, op, hi, lo, cl, vol, llo, lhi, fund_bar, fund_rate, decide, value, v):  # pragma: no cover - compiled
    """The run: ``Engine.run_backtest`` with the venue core and ``SignalStrategy``; an exit code."""
    n = len(op)
    nd = len(decide)
    S = v.S
    S[vc.NOW] = ts[0]
    S[PRICE] = op[0]
    d = 0
    i = 0
    inside = False
    while True:  # the venue core's bar loop, stopping at each event and at each decision bar's close
        code, i, inside = vc.advance(
            v, ts, op, hi, lo, cl, vol, llo, lhi, fund_bar, fund_rate, i, inside, decide[d] if d < nd else n, -np.inf, np.inf
        )
        if code == vc.ADV_END:
            return OK
        if code == vc.ADV_ROOM:
            return BAIL_CAPACITY
        if code == vc.ADV_EVENT:
            if S[vc.NORD] > 0 and v.O[int(S[vc.NORD]) - 1, vc.O_STATUS] == vc.ST_PARTIAL:
                return BAIL_CUT
            continue
        code = _decide(v, value[d], cl[i])  # the decision bar closed: on_bar
        d += 1
        i += 1
        if code != OK:
            return code


def run_signal(broker, engine, bars, strategy):
    """Run ``strategy`` (a SignalStrategy) over ``bars`` in :func:`signal_kernel`; the RunResult,
    or None when the loop met a case it does not implement (the event path runs). Whether it applies
    is :meth:`SimBroker.compiled_refusal`'s decision."""
    started = time.perf_counter()
    broker.load(bars)
    inst = engine.instrument
    wake = np.asarray(strategy.wake_bars(bars), dtype=bool)
    decide = np.flatnonzero(wake).astype(np.int64)
    value = np.ascontiguousarray(strategy._known[2][decide], dtype=np.float64)
    arrays = bar_arrays(bars)
    fund_bar, fund_rate = broker.funding_arrays()
    llo, lhi = broker._liq_bounds()  # mark or last (venue.liquidation_bounds)
    params = broker.venue_params()
    if abs(params[vc.P_LOT_UNITS] / params[vc.P_QSCALE] - inst.lot_size) > 1e-15 * max(inst.lot_size, 1.0):
        log.info("%s: event path (lot size %r is not a whole number of 10^-%d)", engine.info.strategy, inst.lot_size, inst.qty_decimals)
        return None
    v, kernel_s = run_kernel(
        engine,
        broker,
        "signal",
        BAIL_REASONS,
        2 * len(decide) + 64,
        lambda room: broker.new_venue(orders=room, slots=4, fills=room, funding=2 * len(fund_bar) + 4),
        lambda v: signal_kernel(*arrays, llo, lhi, fund_bar, fund_rate, decide, value, v),
    )
    if v is None:
        return None
    O = v.O[: int(v.S[vc.NORD])]
    tags = np.where(O[:, vc.O_LIQ] != 0, "liquidation", None).astype(object)
    result = build_result(engine, broker, bars, v, tags, kernel_s)
    result.diagnostics = strategy.diagnostics()
    result.elapsed_s = time.perf_counter() - started
    engine.plugins.call_optional("quant_on_run_end", result=result)
    return result

"""The venue core: the one simulator of a USDⓈ-M (or spot) account and its resting orders.

Every backtest path drives this module and nothing else implements a venue rule: the event-path
:class:`~.broker.SimBroker` (backtests of Python strategies, and paper trading) calls these
functions from Python one event at a time; the compiled loops of :mod:`.pairs` (``PairGrid``),
:mod:`.signal` (``SignalStrategy``) and any strategy kernel call the same functions from numba,
adding only their decisions. Same functions, same state, same floats: the fill-for-fill tests
between paths are tests of one core.

State layout
============

One run's state is a :class:`VenueState` (a namedtuple of numpy arrays, passed to every compiled
function as ``v``; build it with :func:`new_state`, grow it with :func:`grow`). All float64 unless
said, row/column indices are the module constants below.

``S[NSTATE]`` account and cursor
    ``WALLET`` wallet balance (realised PnL, fees, funding); ``PRICE`` the current path price;
    ``NOW`` ms of the current bar; ``BAR`` its index; ``SEG`` the path segment being walked
    (0 gap prev-close -> open, 1 open -> first extreme, 2 -> other extreme, 3 -> close, 4 done);
    ``BLOW``/``BHIGH``/``BVOL`` the bar's low, high and volume; ``BLIQLO``/``BLIQHI`` how far down
    a falling and up a rising liquidation can be triggered on the bar (:func:`liquidation_bounds`); ``TRADE_SEQ`` the last trade
    number (``sim-<n>``); ``SEQ`` the queue counter; ``NLIQ`` liquidations; ``INSUR`` insurance
    fund payouts (losses beyond the margin); ``FK`` next funding row; ``NOPEN`` open orders;
    ``NWAIT`` takers waiting for the next open; ``NREJ`` rejected orders; ``NEVT`` events so far
    (anything a strategy is told about); ``NORD``/``NFILL``/``NFUND``/``NLEDGER``/``NMARK``/``NEV``
    rows used in the logs below. The book's bounds, kept by :func:`rest`/:func:`unrest` so that
    the walk need not read every slot at each step (:func:`book_bounds`): ``BUYMAX`` highest open
    buy limit, ``SELLMIN`` lowest open sell limit, ``NMARKET`` open market orders, ``BDIRTY`` 1 =
    an order at a bound left, recompute; ``NSLOT`` slots ever used (the book's scans stop there:
    :func:`rest` takes the first free slot).
``P[NPARAM]`` parameters (read only during a run)
    ``P_MAKER``/``P_TAKER`` fee rates, ``P_LIQFEE`` liquidation clearance fee rate, ``P_LOT`` lot
    size (``P_LOT_UNITS``/``P_QSCALE``: the lot as an integer of 10^-decimals, for exact
    rounding), ``P_MINNOT`` minimum notional, ``P_STRICT`` 1 = a resting limit needs the price
    beyond it (fill model ``through``), 0 = touching it is enough (``touch``), ``P_PATHDIR`` 1 =
    path by bar direction, 0 = nearest extreme first, ``P_CHECK`` margin check of new orders,
    ``P_PERP`` perpetual (else spot), ``P_ISOLATED`` isolated margin, ``P_LEV`` leverage,
    ``P_HEDGE`` hedge mode (Binance ``dualSidePosition=true``), ``P_VOLSHARE`` cap on each
    order's fills per bar as a share of the bar's volume (0 = none), ``P_LOG`` 1 = write the event
    log ``EV`` (the event path reads it; compiled loops need not). Fill model ``prob``
    (:func:`prob_allows`): ``P_PROB`` 1 = on, ``P_PB0``/``P_PB1``/``P_PB2`` the calibration's
    coefficients, ``P_TICK`` the tick size, ``P_SEED`` the seed of the per-order draws.
``POS[2, NPOS]`` positions
    One-way mode (default) uses row 0 with a signed quantity. Hedge mode: row 0 is LONG (qty >= 0)
    and row 1 SHORT (qty <= 0), each with its own entry, isolated margin and liquidation price.
    Columns: ``Q_QTY`` signed quantity, ``Q_ENTRY`` average entry, ``Q_ISO`` isolated margin,
    ``Q_LIQ`` liquidation price (NaN: none), ``Q_LDIR`` +1 liquidated as the price falls to it,
    -1 as it rises, ``Q_REALIZED``, ``Q_FEES``, ``Q_FUNDING`` running totals.
``BB[k, 5]`` the symbol's maintenance-margin brackets
    notional floor, notional cap, maintenance rate, maintenance amount (cum), max leverage.
``O[cap, NO]`` every order of the run, in creation order (an order's row index ``oi`` is its id)
    ``O_SIDE`` +1 buy / -1 sell, ``O_PRICE`` limit price (NaN: market), ``O_QTY``,
    ``O_FILLED``, ``O_AVG`` average fill price, ``O_STATUS`` (``ST_*``), ``O_REASON`` (``R_*``,
    with ``O_NEED``/``O_FREE`` the numbers for its message), ``O_CREATED``/``O_UPDATED`` ms,
    ``O_PO`` post-only, ``O_RO`` reduce-only, ``O_PSIDE`` position side (0 BOTH, 1 LONG,
    2 SHORT), ``O_SLOT`` book slot while open (-1 otherwise), ``O_USED_BAR``/``O_USED`` volume
    filled on that bar (for ``P_VOLSHARE``), ``O_LIQ`` 1 for a liquidation order, ``O_REF`` its
    number, ``O_TAG0``/``O_TAG1`` free for the caller (a pair loop keeps pair and leg there).
``BOOK[slots, 4]`` + ``BOOK_ORDER[slots]`` (int64) the open orders
    price (NaN market), side, state (0 free slot, 1 resting, 2 waiting for the next open: a
    taker, not matched on the path), queue number (lower = older); ``BOOK_ORDER`` the ``oi`` in
    each slot. ``HELD[4]``: value of open buy and sell limit orders and quantity of open buy and
    sell market orders that hold initial margin.
``FL[cap, NF]`` fills: ``F_ORDER``, ``F_PRICE``, ``F_QTY``, ``F_FEE``, ``F_BAR``, ``F_MAKER``,
    ``F_LIQ``, ``F_SEQ`` trade number, ``F_CASH`` cash change, ``F_SQ`` signed quantity,
    ``F_ROW`` position row, ``F_REALIZED``.
``FUNDR[cap, 6]`` funding payments: funding row, bar, mark, position, amount (> 0 paid), row.
``LEDGER[cap, 3]`` (bar, cash change, quantity change) in event order: the equity curve.
``MARKS[cap, 3]`` (bar, liquidation price of row 0, of row 1) after every change.
``EV[cap, 3]`` (kind ``EV_*``, ``oi``, fill row or -1) when ``P_LOG``: what to tell the strategy.
``PATH[5]`` the current bar's path: previous close, open, first extreme, other extreme, close.

Functions (compiled, first argument ``v``)
==========================================

Orders: :func:`new_order` (a row, status NEW, not yet submitted), :func:`submit` (``inside``: the
bar's path is being walked, so a taker fills at once; else it waits for the next open),
:func:`amend` (cancel-replace: loses its place), :func:`cancel`. Path: :func:`advance` (the bar
loop every path runs: skips the bars on which nothing can happen, walks the others, and returns
``ADV_*`` at each event, at a wake bar's close, at an alert, at the end, or when the logs need
room), built of :func:`skip_to` (first bar at or after ``start`` where something can happen),
:func:`begin_bar` and :func:`walk` (walks a bar until one event -- a fill, a liquidation, takers at
the open -- and returns ``WALK_*``; call again until ``WALK_CLOSE``). Account: :func:`fill`, :func:`liquidate`,
:func:`fund`, :func:`refresh_liquidation`, :func:`set_leverage`, :func:`add_isolated_margin`. Margin queries: :func:`available`,
:func:`liquidation_price` (the one production implementation of Binance's formula),
:func:`maintenance_margin`, :func:`max_leverage`, :func:`margin_ratio`. Capacity:
:func:`has_room` (a compiled loop checks it before each event and stops with ``BAIL_CAPACITY``
when false; Python then re-runs with :func:`new_state` of a larger capacity, or :func:`grow`).

Fill models are objects with a ``strict`` flag (``through``: True, ``touch``: False), registered
through ``quant_register_fill_models``; the core reads ``P_STRICT``, and for ``prob`` (a bar fill
model fitted by ``quant calibrate``) ``P_PROB`` and its coefficients: a resting order the bar
reaches (``touch``) fills on that bar only if a deterministic draw for (seed, order, bar) falls
under the fitted probability (:func:`prob_allows`), so runs repeat. A fill model that needs
more than that (a queue or trade-replay model) declares so and the compiled paths refuse it with
a reason (see :mod:`.protocol`).

Every money rule cites its source where it is implemented below.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from btc_quant.core.compiled import njit
from btc_quant.core.model import PositionSide

EPS = 1e-12

#: How every core function is compiled. Without numba's reference counting (``_nrt=False``): the
#: core allocates nothing, and counting the references of the state's arrays at every call between
#: its functions made the pair and signal loops 4-5x slower (CPU time of the kernels over the 28
#: real stretches: grid 0.042 s -> 0.014 s, sma_cross 0.174 s -> 0.030 s).
compiled = njit(cache=True, nogil=True, _nrt=False)

# --- S: account and cursor -------------------------------------------------------------------------
(
    WALLET,
    PRICE,
    NOW,
    BAR,
    SEG,
    BLOW,
    BHIGH,
    BVOL,
    TRADE_SEQ,
    SEQ,
    NLIQ,
    INSUR,
    FK,
    NOPEN,
    NWAIT,
    NREJ,
    NEVT,
    NORD,
    NFILL,
    NFUND,
    NLEDGER,
    NMARK,
    NEV,
    BLIQLO,
    BLIQHI,
    BUYMAX,
    SELLMIN,
    NMARKET,
    BDIRTY,
    NSLOT,
) = range(30)
NSTATE = 30
# --- P: parameters ---------------------------------------------------------------------------------
(
    P_MAKER,
    P_TAKER,
    P_LIQFEE,
    P_LOT,
    P_STRICT,
    P_PATHDIR,
    P_CHECK,
    P_PERP,
    P_ISOLATED,
    P_LEV,
    P_HEDGE,
    P_VOLSHARE,
    P_MINNOT,
    P_LOT_UNITS,
    P_QSCALE,
    P_LOG,
    P_LIQRULE,
    P_PROB,
    P_PB0,
    P_PB1,
    P_PB2,
    P_TICK,
    P_SEED,
) = range(23)
NPARAM = 23
#: ``P_LIQRULE``: whose liquidation-price formula the venue follows (:func:`refresh_liquidation`)
LIQ_BINANCE, LIQ_BYBIT = 0.0, 1.0
#: exchanges whose formula is not Binance's (the readable reference: ``core.margin.LIQUIDATION_FORMULAS``)
LIQ_RULE_OF = {"bybit": LIQ_BYBIT}
# --- POS: positions --------------------------------------------------------------------------------
Q_QTY, Q_ENTRY, Q_ISO, Q_LIQ, Q_LDIR, Q_REALIZED, Q_FEES, Q_FUNDING = range(8)
NPOS = 8
# --- O: orders -------------------------------------------------------------------------------------
(
    O_SIDE,
    O_PRICE,
    O_QTY,
    O_FILLED,
    O_AVG,
    O_STATUS,
    O_REASON,
    O_NEED,
    O_FREE,
    O_CREATED,
    O_UPDATED,
    O_PO,
    O_RO,
    O_PSIDE,
    O_SLOT,
    O_USED_BAR,
    O_USED,
    O_LIQ,
    O_REF,
    O_TAG0,
    O_TAG1,
) = range(21)
NO = 21
ST_NEW, ST_FILLED, ST_CANCELED, ST_REJECTED, ST_EXPIRED, ST_PARTIAL = 0, 1, 2, 3, 4, 5
STATUS_NAMES = np.array(["new", "filled", "canceled", "rejected", "expired", "partially_filled"], dtype=object)
R_NONE, R_MARGIN, R_SPOT, R_CROSS, R_LIQ, R_REDUCE, R_RO_GONE, R_MIN_NOTIONAL = range(8)
PS_BOTH, PS_LONG, PS_SHORT = 0, 1, 2
#: the PositionSide of each PS_* code (what brokers and strategies pass), and each one's code
POSITION_SIDES = (PositionSide.BOTH, PositionSide.LONG, PositionSide.SHORT)
PS_OF = {side: code for code, side in enumerate(POSITION_SIDES)}
# --- FL: fills -------------------------------------------------------------------------------------
F_ORDER, F_PRICE, F_QTY, F_FEE, F_BAR, F_MAKER, F_LIQ, F_SEQ, F_CASH, F_SQ, F_ROW, F_REALIZED = range(12)
NF = 12
# --- BOOK columns ----------------------------------------------------------------------------------
B_PRICE, B_SIDE, B_STATE, B_SEQ = 0, 1, 2, 3
# --- EV kinds --------------------------------------------------------------------------------------
EV_ACCEPTED, EV_FILL, EV_STATUS, EV_AMENDED = 1, 2, 3, 4
# --- walk results and exit codes -------------------------------------------------------------------
WALK_CLOSE, WALK_FILL, WALK_LIQ, WALK_OPEN = 0, 1, 2, 3
OK, BAIL_CAPACITY = 0, 2
# submit outcomes
SUB_REJECTED, SUB_EXPIRED, SUB_RESTING, SUB_WAITING, SUB_FILLED, SUB_FULL = 0, 1, 2, 3, 4, 5

VenueState = collections.namedtuple("VenueState", "S P POS BB O BOOK BOOK_ORDER HELD FL FUNDR LEDGER MARKS EV PATH")


def brackets_array(brackets) -> np.ndarray:
    """``MarginBracket`` tuples as the core's ``BB`` rows (floor, cap, mmr, cum, max leverage)."""
    return np.array(
        [(b.notional_floor, b.notional_cap, b.maintenance_rate, b.maintenance_amount, b.max_leverage) for b in brackets], dtype=np.float64
    ).reshape(-1, 5)


def new_state(
    params: np.ndarray,
    brackets: np.ndarray,
    *,
    initial_cash: float,
    orders: int = 256,
    slots: int = 16,
    fills: int = 256,
    funding: int = 16,
    events: int | None = None,
    marks: int | None = None,
    zeroed: bool = True,
) -> VenueState:
    """A fresh account: ``initial_cash`` in the wallet, flat, no orders; logs of the given sizes
    (``events``/``marks``: rows of ``EV``/``MARKS``, by default from ``orders`` and ``fills``).
    ``zeroed=False`` leaves the rows of ``O`` and the logs unwritten (every row is written in full
    when it is used: :func:`new_order` clears its order's row): for a caller that reads them only
    up to their counters, as the compiled loops do, a long run's capacity is not written to memory
    it never uses."""
    blank = np.zeros if zeroed else np.empty
    S = np.zeros(NSTATE)
    S[WALLET] = initial_cash
    S[PRICE] = np.nan
    S[SEG] = 4.0
    S[BUYMAX] = -np.inf
    S[SELLMIN] = np.inf
    POS = np.zeros((2, NPOS))
    POS[:, Q_LIQ] = np.nan
    if events is None:
        events = max(orders, fills) * 2 + 64
    if marks is None:
        marks = fills + 2 * funding + 16
    return VenueState(
        S=S,
        P=np.ascontiguousarray(params, dtype=np.float64),
        POS=POS,
        BB=np.ascontiguousarray(brackets, dtype=np.float64),
        O=blank((orders, NO)),
        BOOK=np.zeros((slots, 4)),
        BOOK_ORDER=np.full(slots, -1, dtype=np.int64),
        HELD=np.zeros(4),
        FL=blank((fills, NF)),
        FUNDR=blank((funding, 6)),
        LEDGER=blank((fills + 2 * funding + 16, 3)),
        MARKS=blank((marks, 3)),
        EV=blank((events, 3)),
        PATH=np.zeros(5),
    )


def _grown(a: np.ndarray, rows: int, fill=0.0) -> np.ndarray:
    if len(a) >= rows:
        return a
    out = np.full((rows,) + a.shape[1:], fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


def grow(v: VenueState, *, funding_rows: int = 0) -> VenueState:
    """``v`` with room for at least as many more orders, fills, events and open orders as it holds
    (the event path calls it whenever :func:`has_room` says no)."""
    S = v.S
    orders = max(2 * len(v.O), int(S[NORD]) + 64)
    fills = max(2 * len(v.FL), int(S[NFILL]) + 64)
    slots = max(2 * len(v.BOOK), int(S[NOPEN]) + 16)
    return v._replace(
        O=_grown(v.O, orders),
        FL=_grown(v.FL, fills),
        BOOK=_grown(v.BOOK, slots),
        BOOK_ORDER=_grown(v.BOOK_ORDER, slots, -1),
        FUNDR=_grown(v.FUNDR, max(len(v.FUNDR), 2 * funding_rows + 4)),
        LEDGER=_grown(v.LEDGER, max(2 * len(v.LEDGER), int(S[NLEDGER]) + 64 + 2 * funding_rows)),
        MARKS=_grown(v.MARKS, max(2 * len(v.MARKS), int(S[NMARK]) + 64 + 2 * funding_rows)),
        EV=_grown(v.EV, max(2 * len(v.EV), int(S[NEV]) + 2 * slots + 64)),
    )


@compiled
def has_room(v, funding_left):  # pragma: no cover - compiled
    """Can the logs take the worst single event (a liquidation cancelling every open order, two
    positions closed) plus ``funding_left`` funding payments, and one more order?"""
    S = v.S
    nopen = int(S[NOPEN])
    return (
        S[NORD] + 4 <= v.O.shape[0]
        and S[NFILL] + 4 <= v.FL.shape[0]
        and nopen + 2 < v.BOOK.shape[0]
        and S[NEV] + 2 * nopen + 8 <= v.EV.shape[0]
        and S[NLEDGER] + 4 + 2 * funding_left <= v.LEDGER.shape[0]
        and S[NMARK] + 4 + 2 * funding_left <= v.MARKS.shape[0]
        and S[NFUND] + 2 * funding_left <= v.FUNDR.shape[0]
    )


# --- the intrabar path -------------------------------------------------------------------------------
def bar_path(
    prev_close: float, o: float, h: float, low: float, c: float, mode: str = "nearest"
) -> tuple[float, float, float, float, float]:
    """The five path points of a bar: previous close, open, first extreme, other extreme, close.
    ``nearest`` (default, DESIGN.md): the extreme nearer the open first; on a tie (and always with
    ``direction``) the low first for a bar closing at or above its open, the high first otherwise."""
    path = np.empty(5)
    fill_bar_path(path, prev_close, o, h, low, c, mode == "nearest")
    return tuple(float(x) for x in path)


@compiled
def fill_bar_path(path, prev_close, o, h, low, c, nearest):  # pragma: no cover - compiled
    """:func:`bar_path` into ``path`` (5 floats); ``nearest``: the mode."""
    low_first = c >= o
    if nearest:
        down, up = o - low, h - o
        if down != up:
            low_first = down < up
    path[0] = prev_close
    path[1] = o
    path[2] = low if low_first else h
    path[3] = h if low_first else low
    path[4] = c


def liquidation_bounds(bars) -> tuple[np.ndarray, np.ndarray, str]:
    """(low, high, source): per bar, how far down a long's and up a short's liquidation can be
    triggered, and ``"mark"`` or ``"last"``.

    Binance liquidates when the *mark* price reaches the liquidation price, not the last traded
    price. When the run's bars carry the mark price (``BarArrays.mark_low`` / ``mark_high``: the
    mark kline covering each bar), a long is liquidated on a bar only when both the bar's
    last-price low and the mark low reach the liquidation price (a short: both highs); it happens
    where the bar's trade path first reaches the price, and fills there. There is no intrabar mark
    path, so the mark kline decides *whether* the mark got there; *when* is the trade path's first
    touch. Without mark prices the last price triggers it (source ``last``)."""
    if getattr(bars, "mark_low", None) is None:
        return bars.low, bars.high, "last"
    return np.maximum(bars.low, bars.mark_low), np.minimum(bars.high, bars.mark_high), "mark"


@compiled
def first_event_bar(
    low, high, liq_low, liq_high, start, stop, buy_max, sell_min, strict, liq_long, liq_short, alert_low, alert_high
):  # pragma: no cover - compiled
    """First bar in ``[start, stop)`` on which something can happen, else ``stop``: the low reaches
    the highest resting buy (``<`` strict, ``<=`` touch), the high the lowest resting sell,
    ``liq_low`` a long's liquidation price or ``liq_high`` a short's (:func:`liquidation_bounds`),
    or the bar leaves the alert band. Pass -inf / +inf for whatever does not exist."""
    liq = liq_long != -np.inf or liq_short != np.inf  # without a position the scan reads two arrays only
    for j in range(start, stop):
        lo = low[j]
        hi = high[j]
        if strict:
            if lo < buy_max or hi > sell_min:
                return j
        elif lo <= buy_max or hi >= sell_min:
            return j
        if lo <= alert_low or hi >= alert_high or (liq and (liq_low[j] <= liq_long or liq_high[j] >= liq_short)):
            return j
    return stop


@compiled
def next_resting_fill(rows, size, a, b, strict, eps):  # pragma: no cover - compiled
    """The resting order that trades first on the path segment ``a -> b``: (slot, price) or (-1, 0).

    A resting order the price is already beyond (the rest of a volume-capped order) trades at
    ``a``; otherwise buys trade at their price on a falling segment that reaches them by the fill
    model (``b < price`` strict, ``b <= price`` touch) and sells on a rising one. The nearest
    price to ``a`` wins; between equally near orders, the oldest."""
    best = -1
    best_at = 0.0
    best_d = np.inf
    best_seq = np.inf
    for k in range(size):
        if rows[k, 2] != 1.0:
            continue
        p = rows[k, 0]
        if p != p:  # market order
            continue
        if rows[k, 1] > 0:
            if p > a + eps:
                at = a
            elif b < a and ((b < p) if strict else (b <= p)):
                at = p
            else:
                continue
        else:
            if p < a - eps:
                at = a
            elif b > a and ((b > p) if strict else (b >= p)):
                at = p
            else:
                continue
        d = abs(at - a)
        if d < best_d or (d == best_d and rows[k, 3] < best_seq):
            best, best_at, best_d, best_seq = k, at, d, rows[k, 3]
    return best, best_at


@compiled
def resting_bounds(rows, size):  # pragma: no cover - compiled
    """(highest buy price, lowest sell price, any market order) over every open order."""
    buy_max = -np.inf
    sell_min = np.inf
    market = False
    for k in range(size):
        if rows[k, 2] == 0.0:
            continue
        p = rows[k, 0]
        if p != p:
            market = True
        elif rows[k, 1] > 0:
            if p > buy_max:
                buy_max = p
        elif p < sell_min:
            sell_min = p
    return buy_max, sell_min, market


@compiled
def book_bounds(v):  # pragma: no cover - compiled
    """:func:`resting_bounds` of ``v``'s book, from the bounds :func:`rest` and :func:`unrest` keep
    (the slots are read again only after an order at a bound left)."""
    S = v.S
    if S[BDIRTY] != 0:
        buy_max, sell_min, _ = resting_bounds(v.BOOK, int(S[NSLOT]))
        S[BUYMAX] = buy_max
        S[SELLMIN] = sell_min
        S[BDIRTY] = 0.0
    return S[BUYMAX], S[SELLMIN], S[NMARKET] > 0


# --- margin math (Binance USDⓈ-M) ---------------------------------------------------------------------
@compiled
def bracket_index(notional, BB):  # pragma: no cover - compiled
    """The bracket holding ``notional`` (Binance GET /fapi/v1/leverageBracket: the first whose cap
    is above it)."""
    notional = abs(notional)
    for k in range(BB.shape[0]):
        if notional < BB[k, 1]:
            return k
    return BB.shape[0] - 1


@compiled
def maintenance_margin(notional, BB):  # pragma: no cover - compiled
    """``notional * maintMarginRatio - cum`` of the bracket holding it (Binance "Leverage and Margin
    of USDⓈ-M Futures"); 0 without brackets."""
    if BB.shape[0] == 0:
        return 0.0
    notional = abs(notional)
    k = bracket_index(notional, BB)
    return max(notional * BB[k, 2] - BB[k, 3], 0.0)


@compiled
def max_leverage(notional, BB):  # pragma: no cover - compiled
    """The bracket's maximum leverage (``initialLeverage``); 125 without brackets."""
    if BB.shape[0] == 0 or BB.shape[1] < 5:
        return 125.0
    return BB[bracket_index(notional, BB), 4]


@compiled
def hedged_liquidation_price(wallet, long_qty, long_entry, short_qty, short_entry, BB):  # pragma: no cover - compiled
    """Binance USDⓈ-M liquidation price, the one production implementation. Source: Binance FAQ
    "How to Calculate Liquidation Price of USDⓈ-M Futures Contracts"
    (https://www.binance.com/en/support/faq/b3c689c1f50a44cabb3a84e663b81d93)::

        LP = (WB - TMM1 + UPNL1 + cumB + cumL + cumS - Side1*Position1*EP1 - PositionL*EPL + PositionS*EPS)
             / (Position1*MMR_B + PositionL*MMR_L + PositionS*MMR_S - Side1*Position1 - PositionL + PositionS)

    with one symbol and no other contracts (TMM1 = UPNL1 = 0). One-way mode puts its position in
    the LONG or the SHORT term (the BOTH term is the same arithmetic); hedge mode cross margin
    passes both; isolated margin passes one position and its isolated margin as ``wallet``.
    ``long_qty``/``short_qty`` are sizes (>= 0). Each leg's bracket is the one holding its notional
    at LP, found by trying each. Returns (LP, direction): direction +1 when the account is
    liquidated as the price falls to LP, -1 as it rises; (NaN, 0) when there is none (flat, or LP
    <= 0)."""
    if long_qty < 1e-12 and short_qty < 1e-12:
        return np.nan, 0.0
    nb = BB.shape[0]
    nl = nb if long_qty >= 1e-12 else 1
    ns = nb if short_qty >= 1e-12 else 1
    best = np.nan
    best_dir = 0.0
    best_miss = np.inf
    for kl in range(nl):
        mmr_l = BB[kl, 2] if long_qty >= 1e-12 else 0.0
        cum_l = BB[kl, 3] if long_qty >= 1e-12 else 0.0
        for ks in range(ns):
            mmr_s = BB[ks, 2] if short_qty >= 1e-12 else 0.0
            cum_s = BB[ks, 3] if short_qty >= 1e-12 else 0.0
            denominator = long_qty * mmr_l + short_qty * mmr_s - long_qty + short_qty
            if denominator == 0:
                continue
            price = (wallet + cum_l + cum_s - long_qty * long_entry + short_qty * short_entry) / denominator
            miss = 0.0
            inside = True
            if long_qty >= 1e-12:
                notional = long_qty * price
                m = max(BB[kl, 0] - notional, notional - BB[kl, 1], 0.0)
                miss += m
                inside = inside and m == 0.0 and notional < BB[kl, 1]
            if short_qty >= 1e-12:
                notional = short_qty * price
                m = max(BB[ks, 0] - notional, notional - BB[ks, 1], 0.0)
                miss += m
                inside = inside and m == 0.0 and notional < BB[ks, 1]
            direction = 1.0 if denominator < 0 else -1.0
            if inside:
                if price > 0:
                    return price, direction
                return np.nan, 0.0
            if miss < best_miss:  # float rounding can put LP exactly on a cap: keep the nearest
                best, best_dir, best_miss = price, direction, miss
    if best_miss < np.inf and best > 0:
        return best, best_dir
    return np.nan, 0.0


@compiled
def bybit_isolated_liquidation_price(qty, entry, iso, BB):  # pragma: no cover - compiled
    """Bybit's isolated-margin liquidation price of a one-way USDT-perpetual position (signed
    ``qty``; ``iso`` its position margin). Source: Bybit help center "Liquidation Price (USDT
    Contract)", isolated margin mode::

        LP (long)  = Entry Price - (Initial Margin - Maintenance Margin) / Position Size - Extra Margin Added / Position Size
        LP (short) = Entry Price + (Initial Margin - Maintenance Margin) / Position Size + Extra Margin Added / Position Size

    initial plus extra margin being the position margin, and the maintenance margin taken at the
    entry value from the risk-limit tiers ``BB``. Returns (LP, direction) as
    :func:`hedged_liquidation_price` does. (Readable reference and its tests:
    :func:`btc_quant.core.margin.bybit_liquidation_price`.) Cross margin needs no function of its
    own: solved for the price it is Binance's equation with Bybit's tiers."""
    size = abs(qty)
    if size < 1e-12:
        return np.nan, 0.0
    side = 1.0 if qty > 0 else -1.0
    price = entry - side * (iso - maintenance_margin(size * entry, BB)) / size
    if price <= 0:
        return np.nan, 0.0
    return price, side


@compiled
def liquidation_price(qty, entry, wallet, BB):  # pragma: no cover - compiled
    """:func:`hedged_liquidation_price` of one one-way position (signed ``qty``), NaN where none.
    ``wallet``: the cross wallet balance, or the position's isolated margin. (Readable reference
    and its tests: :func:`btc_quant.core.margin.liquidation_price`.)"""
    if qty > 0:
        return hedged_liquidation_price(wallet, qty, entry, 0.0, 0.0, BB)[0]
    return hedged_liquidation_price(wallet, 0.0, 0.0, -qty, entry, BB)[0]


@compiled
def margin_ratio(qty, entry, mark, wallet, BB):  # pragma: no cover - compiled
    """``maintenance margin / (wallet + unrealised PnL)`` of one position; >= 1 is liquidation (inf
    when the margin balance is <= 0)."""
    if abs(qty) < 1e-12:
        return 0.0
    balance = wallet + qty * (mark - entry)
    if balance <= 0:
        return np.inf
    return maintenance_margin(abs(qty) * mark, BB) / balance


@compiled
def position_after_fill(qty, entry, signed_fill, price):  # pragma: no cover - compiled
    """A position's new signed quantity and entry after a fill of ``signed_fill`` at ``price``, and
    the PnL it realised (linear contract: closing q from entry e at p realises q * (p - e) for a
    long, q * (e - p) for a short; Binance "Realized PnL"). Adding averages the entry; reducing keeps
    it; flipping starts at ``price``. Mirrors :meth:`btc_quant.core.model.Position.apply`."""
    if abs(qty) < 1e-12 or (qty > 0) == (signed_fill > 0):
        new_qty = qty + signed_fill
        return new_qty, (entry * abs(qty) + price * abs(signed_fill)) / abs(new_qty), 0.0
    closing = min(abs(signed_fill), abs(qty))
    realized = closing * (price - entry) * (1.0 if qty > 0 else -1.0)
    remainder = abs(signed_fill) - closing
    new_qty = qty + signed_fill
    if abs(new_qty) < 1e-12:
        return 0.0, 0.0, realized
    return new_qty, (price if remainder > 0 else entry), realized


@compiled
def round_qty(q, P):  # pragma: no cover - compiled
    """Instrument.round_qty: floor to the lot, then Python's round(..., qty_decimals), which for
    ``steps`` lots of ``m`` units of 10^-d is the double nearest ``steps * m / 10^d``."""
    steps = math.floor(q / P[P_LOT] + 1e-9)
    return steps * P[P_LOT_UNITS] / P[P_QSCALE]


# --- small pieces ----------------------------------------------------------------------------------
@compiled
def order_row(v, oi):  # pragma: no cover - compiled
    """The position row an order trades: 0 in one-way mode; LONG 0 / SHORT 1 in hedge mode."""
    if v.P[P_HEDGE] != 0 and v.O[oi, O_PSIDE] == PS_SHORT:
        return 1
    return 0


@compiled
def closes_only(v, oi):  # pragma: no cover - compiled
    """Reduce-only, or in hedge mode a SELL LONG / BUY SHORT (which can only close)."""
    O = v.O
    if O[oi, O_RO] != 0:
        return True
    if v.P[P_HEDGE] != 0:
        return (O[oi, O_PSIDE] == PS_LONG and O[oi, O_SIDE] < 0) or (O[oi, O_PSIDE] == PS_SHORT and O[oi, O_SIDE] > 0)
    return False


@compiled
def _event(v, kind, oi, fi):  # pragma: no cover - compiled
    S = v.S
    S[NEVT] += 1
    if v.P[P_LOG] != 0:
        e = int(S[NEV])
        S[NEV] = e + 1
        v.EV[e, 0] = kind
        v.EV[e, 1] = oi
        v.EV[e, 2] = fi


@compiled
def _ledger(v, bar, cash, qty):  # pragma: no cover - compiled
    r = int(v.S[NLEDGER])
    v.S[NLEDGER] = r + 1
    v.LEDGER[r, 0] = bar
    v.LEDGER[r, 1] = cash
    v.LEDGER[r, 2] = qty


@compiled
def refresh_liquidation(v):  # pragma: no cover - compiled
    """Recompute every position's liquidation price after a change and mark it on the bar."""
    S, P, POS = v.S, v.P, v.POS
    if P[P_PERP] == 0:
        POS[0, Q_LIQ] = np.nan
        POS[1, Q_LIQ] = np.nan
    elif P[P_HEDGE] == 0 or P[P_ISOLATED] != 0:
        for r in range(2 if P[P_HEDGE] != 0 else 1):
            q = POS[r, Q_QTY]
            wallet = POS[r, Q_ISO] if P[P_ISOLATED] != 0 else S[WALLET]
            if P[P_ISOLATED] != 0 and P[P_LIQRULE] == LIQ_BYBIT:
                lp, d = bybit_isolated_liquidation_price(q, POS[r, Q_ENTRY], wallet, v.BB)
            elif q > 0:
                lp, d = hedged_liquidation_price(wallet, q, POS[r, Q_ENTRY], 0.0, 0.0, v.BB)
            else:
                lp, d = hedged_liquidation_price(wallet, 0.0, 0.0, -q, POS[r, Q_ENTRY], v.BB)
            POS[r, Q_LIQ] = lp
            POS[r, Q_LDIR] = d
    else:  # hedge mode, cross margin: one price for both legs
        lp, d = hedged_liquidation_price(S[WALLET], POS[0, Q_QTY], POS[0, Q_ENTRY], -POS[1, Q_QTY], POS[1, Q_ENTRY], v.BB)
        for r in range(2):
            POS[r, Q_LIQ] = lp if abs(POS[r, Q_QTY]) >= 1e-12 else np.nan
            POS[r, Q_LDIR] = d
    m = int(S[NMARK])
    S[NMARK] = m + 1
    v.MARKS[m, 0] = S[BAR]
    v.MARKS[m, 1] = POS[0, Q_LIQ]
    v.MARKS[m, 2] = POS[1, Q_LIQ]


@compiled
def available(v):  # pragma: no cover - compiled
    """Binance availableBalance: what new orders can use as initial margin (Binance "Initial
    Margin": notional / leverage). One-way: per side, open orders against the position up to its
    size hold nothing and the larger side counts. Hedge mode: every opening order holds margin."""
    S, P, POS, held = v.S, v.P, v.POS, v.HELD
    price = S[PRICE]
    lev = P[P_LEV]
    buys = held[0] + held[2] * price
    sells = held[1] + held[3] * price
    if P[P_HEDGE] == 0:
        q = POS[0, Q_QTY]
        if P[P_ISOLATED] != 0:
            free = S[WALLET] - POS[0, Q_ISO]
        else:
            free = S[WALLET] + q * (price - POS[0, Q_ENTRY]) - abs(q) * price / lev
        pos_value = abs(q) * price
        if q > 0:
            sells = max(0.0, sells - pos_value)
        elif q < 0:
            buys = max(0.0, buys - pos_value)
        return free - max(buys, sells) / lev
    if P[P_ISOLATED] != 0:
        free = S[WALLET] - POS[0, Q_ISO] - POS[1, Q_ISO]
    else:
        free = S[WALLET]
        for r in range(2):
            q = POS[r, Q_QTY]
            free += q * (price - POS[r, Q_ENTRY]) - abs(q) * price / lev
    return free - (buys + sells) / lev


@compiled
def set_leverage(v, leverage):  # pragma: no cover - compiled
    """Binance POST /fapi/v1/leverage: 1 .. the bracket's maximum leverage for the notional of the
    current position (both legs in hedge mode) at the current price; False (nothing changed) when
    outside it."""
    notional = (abs(v.POS[0, Q_QTY]) + abs(v.POS[1, Q_QTY])) * v.S[PRICE]
    if not (1.0 <= leverage <= max_leverage(notional, v.BB)):
        return False
    v.P[P_LEV] = leverage
    return True


@compiled
def add_isolated_margin(v, row, amount):  # pragma: no cover - compiled
    """Binance POST /fapi/v1/positionMargin: move ``amount`` into (> 0) or out of the isolated margin
    of position ``row``; its liquidation price follows. The caller checks the available balance."""
    v.POS[row, Q_ISO] += amount
    refresh_liquidation(v)


# --- the book ------------------------------------------------------------------------------------------
@compiled
def _hold(v, oi, sign):  # pragma: no cover - compiled
    """Add (+1) or remove (-1) an open order's initial margin; reduce-only (and hedge-mode closing)
    orders hold none."""
    O = v.O
    if closes_only(v, oi):
        return
    side = 0 if O[oi, O_SIDE] > 0 else 1
    remaining = max(O[oi, O_QTY] - O[oi, O_FILLED], 0.0)
    price = O[oi, O_PRICE]
    if price != price:
        v.HELD[2 + side] += sign * remaining
    else:
        v.HELD[side] += sign * remaining * price


@compiled
def rest(v, oi, slot, waiting):  # pragma: no cover - compiled
    """Put order ``oi`` at the back of the queue in ``slot`` (-1: the first free one); its slot, or
    -1 when the book is full. ``waiting``: a taker waiting for the next open."""
    S, BOOK = v.S, v.BOOK
    if slot < 0:
        for k in range(BOOK.shape[0]):
            if BOOK[k, B_STATE] == 0.0:
                slot = k
                break
        if slot < 0:
            return -1
    S[SEQ] += 1.0
    BOOK[slot, B_PRICE] = v.O[oi, O_PRICE]
    BOOK[slot, B_SIDE] = v.O[oi, O_SIDE]
    BOOK[slot, B_STATE] = 2.0 if waiting else 1.0
    BOOK[slot, B_SEQ] = S[SEQ]
    v.BOOK_ORDER[slot] = oi
    v.O[oi, O_SLOT] = slot
    S[NOPEN] += 1
    if slot + 1 > S[NSLOT]:
        S[NSLOT] = slot + 1
    price = BOOK[slot, B_PRICE]
    if price != price:
        S[NMARKET] += 1
    elif BOOK[slot, B_SIDE] > 0:
        S[BUYMAX] = max(S[BUYMAX], price)
    else:
        S[SELLMIN] = min(S[SELLMIN], price)
    if waiting:
        S[NWAIT] += 1
    _hold(v, oi, 1.0)
    return slot


@compiled
def unrest(v, oi):  # pragma: no cover - compiled
    """Take order ``oi`` off the book (filled, canceled, expired); False when it was not open."""
    S = v.S
    slot = int(v.O[oi, O_SLOT])
    if slot < 0 or v.BOOK_ORDER[slot] != oi or v.BOOK[slot, B_STATE] == 0.0:
        return False
    if v.BOOK[slot, B_STATE] == 2.0:
        S[NWAIT] -= 1
    price = v.BOOK[slot, B_PRICE]
    if price != price:
        S[NMARKET] -= 1
    elif (price >= S[BUYMAX]) if v.BOOK[slot, B_SIDE] > 0 else (price <= S[SELLMIN]):
        S[BDIRTY] = 1.0  # the bound left: book_bounds reads the slots again
    v.BOOK[slot, B_STATE] = 0.0
    v.BOOK_ORDER[slot] = -1
    v.O[oi, O_SLOT] = -1
    S[NOPEN] -= 1
    if S[NOPEN] > 0:
        _hold(v, oi, -1.0)
    else:  # nothing rests: start the running totals afresh (no rounding carried over)
        v.HELD[:] = 0.0
        S[BUYMAX] = -np.inf
        S[SELLMIN] = np.inf
        S[NMARKET] = 0.0
        S[BDIRTY] = 0.0
    return True


@compiled
def new_order(v, side, price, qty, post_only, reduce_only, position_side):  # pragma: no cover - compiled
    """A new order row (status NEW, created now); its index ``oi``, or -1 when ``O`` is full.
    ``price`` NaN: market order. Submit it with :func:`submit`."""
    S, O = v.S, v.O
    oi = int(S[NORD])
    if oi >= O.shape[0]:
        return -1
    S[NORD] = oi + 1
    O[oi, :] = 0.0
    O[oi, O_SIDE] = side
    O[oi, O_PRICE] = price
    O[oi, O_QTY] = qty
    O[oi, O_STATUS] = ST_NEW
    O[oi, O_CREATED] = S[NOW]
    O[oi, O_UPDATED] = S[NOW]
    O[oi, O_PO] = post_only
    O[oi, O_RO] = reduce_only
    O[oi, O_PSIDE] = position_side
    O[oi, O_SLOT] = -1
    O[oi, O_USED_BAR] = -1
    return oi


@compiled
def crosses(v, oi):  # pragma: no cover - compiled
    """Would the order trade at once against the current price? (Market orders always.)"""
    p = v.O[oi, O_PRICE]
    if p != p:
        return True
    return p >= v.S[PRICE] if v.O[oi, O_SIDE] > 0 else p <= v.S[PRICE]


@compiled
def refusal(v, oi):  # pragma: no cover - compiled
    """Why the venue refuses order ``oi`` (``R_*``, with ``O_NEED``/``O_FREE`` set), or R_NONE."""
    S, P, O, POS = v.S, v.P, v.O, v.POS
    buy = O[oi, O_SIDE] > 0
    r = order_row(v, oi)
    pos = POS[r, Q_QTY]
    closing = closes_only(v, oi)
    price = O[oi, O_PRICE]
    if price != price:
        price = S[PRICE]
    if closing and (abs(pos) < EPS or (pos > 0) == buy):
        return R_REDUCE  # Binance -2022
    if not closing:
        # Binance MIN_NOTIONAL -4164 "Order's notional must be no smaller than ... (unless you
        # choose reduce only)"; a market order is valued at the last price.
        notional = O[oi, O_QTY] * price
        if notional < P[P_MINNOT] - 1e-9:
            O[oi, O_NEED] = notional
            O[oi, O_FREE] = P[P_MINNOT]
            return R_MIN_NOTIONAL
    if P[P_CHECK] == 0 or closing:
        return R_NONE
    against = 0.0
    if P[P_HEDGE] == 0 and abs(pos) > EPS and (pos > 0) != buy:
        against = abs(pos)
    opening = max(O[oi, O_QTY] - against, 0.0)
    if opening <= EPS:
        return R_NONE
    if P[P_PERP] == 0 and not buy:
        O[oi, O_NEED] = O[oi, O_QTY]
        O[oi, O_FREE] = max(pos, 0.0)
        return R_SPOT
    need = opening * price / P[P_LEV]
    free = available(v)
    if need > free + 1e-9:  # Binance -2019 "Margin is insufficient"
        O[oi, O_NEED] = need
        O[oi, O_FREE] = free
        return R_MARGIN
    return R_NONE


@compiled
def _finish(v, oi, status, reason):  # pragma: no cover - compiled
    v.O[oi, O_STATUS] = status
    v.O[oi, O_REASON] = reason
    v.O[oi, O_UPDATED] = v.S[NOW]
    _event(v, EV_STATUS, oi, -1)


@compiled
def submit(v, oi, inside):  # pragma: no cover - compiled
    """Binance POST /fapi/v1/order for order ``oi``: refused (REJECTED), post-only crossing
    (EXPIRED, Binance GTX), else accepted at the back of the queue. A taker (market, or a limit
    crossing the price) fills at once at the path price when ``inside`` a bar's walk, else waits
    for the next open. Returns ``SUB_*`` (``SUB_FULL``: nothing done, grow the state and call
    again)."""
    if not has_room(v, 0):
        return SUB_FULL
    reason = refusal(v, oi)
    if reason != R_NONE:
        v.S[NREJ] += 1
        _finish(v, oi, ST_REJECTED, reason)
        return SUB_REJECTED
    return _accept(v, oi, inside, EV_ACCEPTED)


@compiled
def _accept(v, oi, inside, kind):  # pragma: no cover - compiled
    taker = crosses(v, oi)
    if taker and v.O[oi, O_PO] != 0:
        v.O[oi, O_NEED] = v.S[PRICE]
        _finish(v, oi, ST_EXPIRED, R_CROSS)
        return SUB_EXPIRED
    v.O[oi, O_UPDATED] = v.S[NOW]
    if rest(v, oi, -1, taker and not inside) < 0:
        return SUB_FULL
    _event(v, kind, oi, -1)
    if taker and inside:
        fill(v, oi, v.S[PRICE], False, False)
        return SUB_FILLED
    return SUB_WAITING if taker else SUB_RESTING


@compiled
def amend(v, oi, price, qty, inside):  # pragma: no cover - compiled
    """Binance PUT /fapi/v1/order as cancel-replace: new price and quantity, same order, back of
    the queue (it can only fill on the path after the amend). The caller checks that the order is
    an open limit order and ``qty`` is above what is filled. Returns ``SUB_*`` (``SUB_FULL``:
    nothing done, grow the state and call again)."""
    if not has_room(v, 0):
        return SUB_FULL
    unrest(v, oi)
    v.O[oi, O_PRICE] = price
    v.O[oi, O_QTY] = qty
    return _accept(v, oi, inside, EV_AMENDED)


@compiled
def cancel(v, oi, reason):  # pragma: no cover - compiled
    """Cancel open order ``oi``; False when it was not open."""
    if not unrest(v, oi):
        return False
    _finish(v, oi, ST_CANCELED, reason)
    return True


# --- the account -----------------------------------------------------------------------------------------
@compiled
def fill(v, oi, price, maker, liquidation):  # pragma: no cover - compiled
    """:func:`fill_up_to` without a quantity limit: the whole remainder (as the cap allows)."""
    return fill_up_to(v, oi, price, maker, liquidation, np.inf)


@compiled
def fill_up_to(v, oi, price, maker, liquidation, most):  # pragma: no cover - compiled
    """Order ``oi`` trades at ``price``: as much as the volume cap allows (nothing: no event), and at
    most ``most`` rounded down to the lot (trade replay: what a print left for it; np.inf: all);
    reduce-only orders are cut to the position, or EXPIRED when it is gone (Binance -2022); fees
    (maker/taker; liquidation: the clearance fee, never more than the margin left); isolated
    margin; position and wallet; a liquidation's loss beyond the margin is paid by the insurance
    fund (the wallet never goes below zero). Returns the fill row, or -1."""
    S, P, O, POS = v.S, v.P, v.O, v.POS
    bar = int(S[BAR])
    r = order_row(v, oi)
    isolated = P[P_ISOLATED] != 0
    side = O[oi, O_SIDE]
    qty = max(O[oi, O_QTY] - O[oi, O_FILLED], 0.0)
    if P[P_VOLSHARE] > 0 and not liquidation:
        used = O[oi, O_USED] if O[oi, O_USED_BAR] == bar else 0.0
        cap = P[P_VOLSHARE] * S[BVOL] - used
        qty = min(qty, round_qty(max(cap, 0.0), P))
        if qty <= EPS:
            return -1
    if most < qty:
        qty = round_qty(most, P)
        if qty <= EPS:
            return -1
    before = POS[r, Q_QTY]
    if closes_only(v, oi) and not liquidation:
        if abs(before) < EPS or (before > 0) == (side > 0):
            unrest(v, oi)
            _finish(v, oi, ST_EXPIRED, R_RO_GONE)
            return -1
        qty = min(qty, abs(before))
    notional = qty * price
    closing = 0.0
    if abs(before) > EPS and (before > 0) != (side > 0):
        closing = min(qty, abs(before))
    left = 0.0
    if liquidation:
        # Binance: the clearance fee is charged on the liquidated notional but never more than the
        # margin left at the fill (exchangeInfo liquidationFee; "Liquidation Protocols").
        realized = closing * (price - POS[r, Q_ENTRY]) * (1.0 if before > 0 else -1.0)
        left = (POS[r, Q_ISO] if isolated else S[WALLET]) + realized
        fee = min(notional * P[P_LIQFEE], max(left, 0.0))
    else:
        fee = notional * (P[P_MAKER] if maker else P[P_TAKER])
    S[TRADE_SEQ] += 1
    fi = int(S[NFILL])
    S[NFILL] = fi + 1
    FL = v.FL
    if isolated:
        if closing > 0:
            POS[r, Q_ISO] -= POS[r, Q_ISO] * closing / abs(before)
        POS[r, Q_ISO] += (qty - closing) * price / P[P_LEV]
    sq = side * qty
    POS[r, Q_QTY], POS[r, Q_ENTRY], realized = position_after_fill(POS[r, Q_QTY], POS[r, Q_ENTRY], sq, price)
    POS[r, Q_REALIZED] += realized
    POS[r, Q_FEES] += fee
    S[WALLET] += realized - fee
    cash = -sq * price - fee
    if liquidation:
        shortfall = max(-left, 0.0)
        if shortfall > 0:
            S[WALLET] += shortfall
            S[INSUR] += shortfall
            cash += shortfall
        POS[r, Q_ISO] = 0.0
    elif abs(POS[r, Q_QTY]) < 1e-12:
        POS[r, Q_ISO] = 0.0
    FL[fi, F_ORDER] = oi
    FL[fi, F_PRICE] = price
    FL[fi, F_QTY] = qty
    FL[fi, F_FEE] = fee
    FL[fi, F_BAR] = bar
    FL[fi, F_MAKER] = 1.0 if maker else 0.0
    FL[fi, F_LIQ] = 1.0 if liquidation else 0.0
    FL[fi, F_SEQ] = S[TRADE_SEQ]
    FL[fi, F_CASH] = cash
    FL[fi, F_SQ] = sq
    FL[fi, F_ROW] = r
    FL[fi, F_REALIZED] = realized
    _ledger(v, bar, cash, sq)
    if O[oi, O_USED_BAR] != bar:
        O[oi, O_USED_BAR] = bar
        O[oi, O_USED] = 0.0
    O[oi, O_USED] += qty
    filled = O[oi, O_FILLED] + qty
    O[oi, O_AVG] = (O[oi, O_AVG] * O[oi, O_FILLED] + price * qty) / filled
    O[oi, O_UPDATED] = v.S[NOW]
    if O[oi, O_QTY] - filled <= P[P_LOT] / 2:
        unrest(v, oi)  # releases the margin of the remaining quantity before the fill
        O[oi, O_FILLED] = O[oi, O_QTY]
        O[oi, O_STATUS] = ST_FILLED
    else:  # same place in the queue, less left to hold margin for
        _hold(v, oi, -1.0)
        O[oi, O_FILLED] = filled
        O[oi, O_STATUS] = ST_PARTIAL
        _hold(v, oi, 1.0)
    _event(v, EV_FILL, oi, fi)
    refresh_liquidation(v)
    return fi


@compiled
def liquidate(v, row, price):  # pragma: no cover - compiled
    """Liquidation at ``price``: Binance cancels the symbol's open orders, then closes the position
    of ``row`` (hedge mode cross margin: both positions) with a market order at that price."""
    S, O, POS = v.S, v.O, v.POS
    BOOK = v.BOOK
    while S[NOPEN] > 0:  # oldest first, as the exchange lists them
        slot = -1
        best = np.inf
        for k in range(int(S[NSLOT])):
            if BOOK[k, B_STATE] != 0.0 and BOOK[k, B_SEQ] < best:
                slot, best = k, BOOK[k, B_SEQ]
        cancel(v, v.BOOK_ORDER[slot], R_LIQ)
    both = v.P[P_HEDGE] != 0 and v.P[P_ISOLATED] == 0
    for r in range(2):
        if not (r == row or both):
            continue
        q = POS[r, Q_QTY]
        if abs(q) < 1e-12:
            continue
        S[TRADE_SEQ] += 1
        pside = PS_BOTH if v.P[P_HEDGE] == 0 else (PS_LONG if r == 0 else PS_SHORT)
        oi = new_order(v, -1.0 if q > 0 else 1.0, np.nan, abs(q), 0.0, 0.0, pside)
        O[oi, O_LIQ] = 1.0
        O[oi, O_REF] = S[TRADE_SEQ]
        rest(v, oi, -1, False)
        S[NLIQ] += 1
        fill(v, oi, price, False, True)


@compiled
def fund(v, bar, mark, fund_bar, fund_rate):  # pragma: no cover - compiled
    """The funding payments due at ``bar``'s open: each position pays ``quantity * mark * rate``
    (Binance "Introduction to Funding Rates": funding amount = position nominal value x funding
    rate; longs pay when the rate is positive); an isolated position's margin carries it."""
    S, P, POS = v.S, v.P, v.POS
    while S[FK] < len(fund_bar) and fund_bar[int(S[FK])] <= bar:
        fk = int(S[FK])
        rate = fund_rate[fk]
        S[FK] += 1
        for r in range(2 if P[P_HEDGE] != 0 else 1):
            qty = POS[r, Q_QTY]
            if abs(qty) < EPS:
                continue
            amount = qty * mark * rate  # > 0: paid by the account
            POS[r, Q_FUNDING] += amount
            S[WALLET] -= amount
            if P[P_ISOLATED] != 0:
                POS[r, Q_ISO] -= amount
            _ledger(v, bar, -amount, 0.0)
            k = int(S[NFUND])
            S[NFUND] = k + 1
            v.FUNDR[k, 0] = fk
            v.FUNDR[k, 1] = bar
            v.FUNDR[k, 2] = mark
            v.FUNDR[k, 3] = qty
            v.FUNDR[k, 4] = amount
            v.FUNDR[k, 5] = r
            refresh_liquidation(v)


@compiled
def has_position(v):  # pragma: no cover - compiled
    return abs(v.POS[0, Q_QTY]) >= 1e-12 or abs(v.POS[1, Q_QTY]) >= 1e-12


@compiled
def position_liquidation(v):  # pragma: no cover - compiled
    """(highest price at which a falling price liquidates, lowest at which a rising one does)."""
    lo = -np.inf
    hi = np.inf
    for r in range(2):
        lp = v.POS[r, Q_LIQ]
        if lp == lp and abs(v.POS[r, Q_QTY]) >= 1e-12:
            if v.POS[r, Q_LDIR] > 0:
                lo = max(lo, lp)
            else:
                hi = min(hi, lp)
    return lo, hi


# --- walking the path ------------------------------------------------------------------------------------
@compiled
def _exhausted(v, oi):  # pragma: no cover - compiled
    used = v.O[oi, O_USED] if v.O[oi, O_USED_BAR] == v.S[BAR] else 0.0
    return round_qty(max(v.P[P_VOLSHARE] * v.S[BVOL] - used, 0.0), v.P) <= EPS


@compiled
def unit_draw(seed, oi, bar):  # pragma: no cover - compiled
    """A number in [0, 1) fixed by (``seed``, order row, bar): splitmix64's finaliser (Steele,
    Lea, Flood 2014) of the three mixed together. The same order on the same bar always draws the
    same number, however often the walk asks, so runs repeat and paths agree."""
    x = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(oi) * np.uint64(0xD1B54A32D192ED03) + np.uint64(bar)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return float(x >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@compiled
def fill_probability(ticks_past, volume, b0, b1, b2):  # pragma: no cover - compiled
    """The ``prob`` model of ``quant calibrate`` (plugins/brokers/calibrate.py, ``Calibration``):
    ``1 / (1 + exp(-(b0 + b1 * ticks_past + b2 * ln(1 + volume))))``."""
    z = b0 + b1 * ticks_past + b2 * math.log1p(max(volume, 0.0))
    return 1.0 / (1.0 + math.exp(-min(max(z, -700.0), 700.0)))


@compiled
def prob_allows(v, oi):  # pragma: no cover - compiled
    """Fill model ``prob``: may resting order ``oi`` fill on the current bar? Its probability from
    how many ticks the bar traded past it (buy: price - low, sell: high - price) and the bar's
    volume, against :func:`unit_draw` of (seed, order, bar). One draw per order and bar: an order
    the draw refuses waits for the next bar (the whole order fills when allowed, as ``touch``)."""
    P = v.P
    price = v.O[oi, O_PRICE]
    past = (price - v.S[BLOW]) if v.O[oi, O_SIDE] > 0 else (v.S[BHIGH] - price)
    ticks = max(past / P[P_TICK], 0.0) if P[P_TICK] > 0 else 0.0
    p = fill_probability(ticks, v.S[BVOL], P[P_PB0], P[P_PB1], P[P_PB2])
    return unit_draw(int(P[P_SEED]), oi, int(v.S[BAR])) < p


@compiled
def next_event(v):  # pragma: no cover - compiled
    """The first thing that happens on the rest of the current segment: (kind, oi or row, price);
    kind 0 nothing, 1 a resting order fills, 2 a liquidation."""
    S, BOOK = v.S, v.BOOK
    a = S[PRICE]
    b = v.PATH[int(S[SEG]) + 1]
    kind = 0
    who = -1
    at = 0.0
    size = int(S[NSLOT])
    strict = v.P[P_STRICT] != 0
    reach = False
    if S[NOPEN] > 0:  # can any resting order trade on this segment? (the test of next_resting_fill on the bounds)
        buy_max, sell_min, _ = book_bounds(v)
        reach = (
            buy_max > a + EPS
            or (b < a and ((b < buy_max) if strict else (b <= buy_max)))
            or sell_min < a - EPS
            or (b > a and ((b > sell_min) if strict else (b >= sell_min)))
        )
    if reach:
        slot, at = next_resting_fill(BOOK, size, a, b, strict, EPS)
        capped = v.P[P_VOLSHARE] > 0
        prob = v.P[P_PROB] != 0
        if slot >= 0 and (capped or prob):
            skipped = 0
            # used its share of this bar's volume, or (fill model prob) this bar's draw says no fill
            while slot >= 0 and ((capped and _exhausted(v, v.BOOK_ORDER[slot])) or (prob and not prob_allows(v, v.BOOK_ORDER[slot]))):
                BOOK[slot, B_STATE] = 3.0
                skipped += 1
                slot, at = next_resting_fill(BOOK, size, a, b, strict, EPS)
            if skipped:
                for k in range(size):
                    if BOOK[k, B_STATE] == 3.0:
                        BOOK[k, B_STATE] = 1.0
        if slot >= 0:
            kind = 1
            who = v.BOOK_ORDER[slot]
    for r in range(2):
        liq = v.POS[r, Q_LIQ]
        if liq != liq or abs(v.POS[r, Q_QTY]) < 1e-12:
            continue
        if v.POS[r, Q_LDIR] > 0:  # on this bar's mark too (liquidation_bounds)
            if S[BLIQLO] <= liq and b < a and b <= liq and liq <= a + EPS and (kind == 0 or abs(liq - a) < abs(at - a)):
                kind, who, at = 2, r, liq
        elif S[BLIQHI] >= liq and b > a and a - EPS <= liq and liq <= b and (kind == 0 or abs(liq - a) < abs(at - a)):
            kind, who, at = 2, r, liq
    return kind, who, at


@compiled
def quiet(v, low, high):  # pragma: no cover - compiled
    """Can nothing happen between ``low`` and ``high``? (No resting order the fill model lets trade
    there, no liquidation price the bar triggers, no taker waiting.)"""
    S = v.S
    if S[NWAIT] > 0:
        return False
    liq_fall, liq_rise = position_liquidation(v)
    if liq_fall >= S[BLIQLO] or liq_rise <= S[BLIQHI]:
        return False
    if S[NOPEN] == 0:
        return True
    buy_max, sell_min, market = book_bounds(v)
    if market:
        return False
    if v.P[P_STRICT] != 0:
        return not (low < buy_max or high > sell_min)
    return not (low <= buy_max or high >= sell_min)


@compiled
def skip_to(v, low, high, liq_low, liq_high, start, stop, fund_bar, alert_low, alert_high):  # pragma: no cover - compiled
    """First bar in ``[start, stop)`` on which something can happen (a fill, a liquidation --
    ``liq_low``/``liq_high`` from :func:`liquidation_bounds` --, funding with a position, the alert
    band left, a taker waiting), else ``stop``."""
    S = v.S
    if S[NWAIT] > 0:
        return start
    if has_position(v) and S[FK] < len(fund_bar):
        stop = min(stop, fund_bar[int(S[FK])])
    if stop <= start:
        return start
    buy_max, sell_min, market = -np.inf, np.inf, False
    if S[NOPEN] > 0:
        buy_max, sell_min, market = book_bounds(v)
    if market:
        return start
    liq_fall, liq_rise = position_liquidation(v)
    return first_event_bar(
        low, high, liq_low, liq_high, start, stop, buy_max, sell_min, v.P[P_STRICT] != 0, liq_fall, liq_rise, alert_low, alert_high
    )


@compiled
def begin_bar(v, i, ts, prev_close, o, h, low, c, volume, liq_low, liq_high):  # pragma: no cover - compiled
    """Start walking bar ``i``: its path from the previous close, the price at the previous close;
    ``liq_low``/``liq_high``: the bar's :func:`liquidation_bounds`."""
    S = v.S
    S[BLIQLO] = liq_low
    S[BLIQHI] = liq_high
    S[BAR] = i
    S[NOW] = ts
    S[BLOW] = low
    S[BHIGH] = h
    S[BVOL] = volume
    fill_bar_path(v.PATH, prev_close, o, h, low, c, v.P[P_PATHDIR] == 0)
    S[PRICE] = prev_close
    S[SEG] = 0.0


@compiled
def _open_takers(v):  # pragma: no cover - compiled
    """The takers that waited for this open fill there, oldest first (a limit that no longer
    crosses rests)."""
    BOOK = v.BOOK
    while v.S[NWAIT] > 0:
        slot = -1
        best = np.inf
        for k in range(int(v.S[NSLOT])):
            if BOOK[k, B_STATE] == 2.0 and BOOK[k, B_SEQ] < best:
                slot, best = k, BOOK[k, B_SEQ]
        if slot < 0:
            break
        BOOK[slot, B_STATE] = 1.0
        v.S[NWAIT] -= 1
        oi = v.BOOK_ORDER[slot]
        if crosses(v, oi):
            fill(v, oi, v.S[PRICE], False, False)


@compiled
def walk(v, mark_open, fund_bar, fund_rate):  # pragma: no cover - compiled
    """Walk the current bar's path until one event (``WALK_FILL``, ``WALK_LIQ``; ``WALK_OPEN``: the
    takers at the open traded) or its close (``WALK_CLOSE``). Funding is paid when the path reaches
    the open (``mark_open``: the mark price there). Orders placed between calls trade only on the
    rest of the path. A resting order that a gap between bars jumps over fills at its price clipped
    into the new bar's range."""
    S = v.S
    events = S[NEVT]
    look = S[SEG] >= 1  # past the open: the rest of the path lies inside the bar's range
    while S[SEG] < 4:
        if look:
            look = False
            if quiet(v, S[BLOW], S[BHIGH]):
                S[SEG] = 4.0
                break
        kind, who, at = next_event(v)
        if kind != 0:
            if S[SEG] == 0:
                at = min(max(at, S[BLOW]), S[BHIGH])
            S[PRICE] = at
            if kind == 2:
                liquidate(v, who, at)
                return WALK_LIQ
            fill(v, who, at, True, False)
            if S[NEVT] > events:
                return WALK_FILL
            continue
        S[SEG] += 1
        if S[SEG] < 4:
            S[PRICE] = v.PATH[int(S[SEG])]
        if S[SEG] == 1:
            if S[FK] < len(fund_bar):
                fund(v, int(S[BAR]), mark_open, fund_bar, fund_rate)
            _open_takers(v)
            if S[NEVT] > events:
                return WALK_OPEN
            look = True
    S[PRICE] = v.PATH[4]
    return WALK_CLOSE


ADV_EVENT, ADV_CLOSED, ADV_ALERT, ADV_END, ADV_ROOM = 0, 1, 2, 3, 4


@compiled
def advance(
    v, ts, op, hi, lo, cl, vol, liq_low, liq_high, fund_bar, fund_rate, i, inside, wake_at, alert_low, alert_high
):  # pragma: no cover - compiled
    """The event path's bar loop, from bar ``i`` (``inside``: its walk has begun): skip the bars on
    which nothing can happen, walk the others, and stop at the first event (``ADV_EVENT``, inside
    bar ``i``), at the close of bar ``wake_at`` or later (``ADV_CLOSED``), at the close of a bar
    that left the alert band (``ADV_ALERT``), after the last bar (``ADV_END``), or when the logs
    need room (``ADV_ROOM``: grow the state and call again). Returns (code, bar, inside)."""
    n = len(op)
    left = len(fund_bar) - int(v.S[FK])
    while i < n:
        if not has_room(v, min(left, 4)):
            return ADV_ROOM, i, inside
        if not inside:
            j = skip_to(v, lo, hi, liq_low, liq_high, i, min(max(wake_at, i), n), fund_bar, alert_low, alert_high)
            if j >= n:
                return ADV_END, n, False
            i = j
            begin_bar(v, i, ts[i], cl[i - 1] if i > 0 else op[i], op[i], hi[i], lo[i], cl[i], vol[i], liq_low[i], liq_high[i])
            inside = True
        if walk(v, op[i], fund_bar, fund_rate) != WALK_CLOSE:
            return ADV_EVENT, i, True
        v.S[PRICE] = cl[i]
        if lo[i] <= alert_low or hi[i] >= alert_high:
            return ADV_ALERT, i, False
        if i >= wake_at:
            return ADV_CLOSED, i, False
        i += 1
        inside = False
    return ADV_END, n, False


# --- results -------------------------------------------------------------------------------------------
def equity_curve(v: VenueState, close: np.ndarray, initial_cash: float) -> np.ndarray:
    """Equity at every bar's close: wallet plus the position at the close, from the ledger."""
    n = len(close)
    out = np.empty(n)
    _equity_per_bar(v.LEDGER[: int(v.S[NLEDGER])], np.asarray(close, dtype=np.float64), float(initial_cash), np.zeros(n), np.zeros(n), out)
    return out


@compiled
def _equity_per_bar(rows, close, initial_cash, cash, qty, out):  # pragma: no cover - compiled
    """:func:`equity_curve` in one pass: each bar's ledger rows summed in order, then the running
    wallet plus the running position at the close (the sums of ``np.add.at`` and ``np.cumsum``,
    in their order, so the same floats)."""
    for r in range(rows.shape[0]):
        b = int(rows[r, 0])
        cash[b] += rows[r, 1]
        qty[b] += rows[r, 2]
    wallet = 0.0
    held = 0.0
    for i in range(len(close)):
        wallet += cash[i]
        held += qty[i]
        out[i] = initial_cash + wallet + held * close[i]


def liquidation_marks(v: VenueState, n: int, row: int = 0) -> np.ndarray:
    """Per-bar liquidation price of position ``row`` at each bar's close (NaN when none)."""
    liq = np.empty(n)
    _marks_per_bar(v.MARKS[: int(v.S[NMARK])], 1 + row, np.full(n, -1, dtype=np.int64), liq)
    return liq


@compiled
def _marks_per_bar(marks, col, at, liq):  # pragma: no cover - compiled
    """:func:`liquidation_marks`: the last mark of each bar (``at``: its row) holds at its close
    and after, until a later mark's."""
    m = marks.shape[0]
    for r in range(m):
        if r == m - 1 or marks[r + 1, 0] != marks[r, 0]:
            at[int(marks[r, 0])] = r
    latest = -1
    for i in range(len(liq)):
        latest = max(latest, at[i])
        liq[i] = marks[latest, col] if latest >= 0 else np.nan


def reason_text(v: VenueState, oi: int) -> str | None:
    """The message of an order's reason (the exchange's words and error code)."""
    O = v.O
    code = int(O[oi, O_REASON])
    side = "buy" if O[oi, O_SIDE] > 0 else "sell"
    if code == R_NONE:
        return None
    if code == R_MARGIN:
        return f"margin is insufficient: needs {O[oi, O_NEED]:,.2f}, available {O[oi, O_FREE]:,.2f} (Binance -2019)"
    if code == R_SPOT:
        return f"spot: cannot sell {O[oi, O_NEED]:g}, holding {O[oi, O_FREE]:g}"
    if code == R_CROSS:
        return f"post-only {side} at {float(O[oi, O_PRICE])} would cross {float(O[oi, O_NEED])} (GTX)"
    if code == R_REDUCE:
        return "reduce-only order would not reduce the position (Binance -2022)"
    if code == R_RO_GONE:
        return "reduce-only: no position left to reduce"
    if code == R_MIN_NOTIONAL:
        return f"notional {O[oi, O_NEED]:.2f} is below the minimum {O[oi, O_FREE]:g} (Binance -4164; reduce-only orders are exempt)"
    return "liquidation"

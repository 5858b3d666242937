"""Perpetual-futures margin math, as Binance USDⓈ-M computes it (one-way mode, linear contracts).

Pure functions over numbers, used by the simulated broker and usable by strategies and live
brokers. Sources:

* Maintenance margin and brackets: Binance "Leverage and Margin of USDⓈ-M Futures"
  (https://www.binance.com/en/futures/trading-rules/perpetual/leverage-margin) and
  ``GET /fapi/v1/leverageBracket``: ``maintenance margin = notional * maintMarginRatio - cum``,
  the bracket chosen by the position's notional. BTCUSDT's table ships in
  ``core/data/binance_usdm_brackets.json``.
* Liquidation price: Binance FAQ "How to Calculate Liquidation Price of USDⓈ-M Futures
  Contracts" (https://www.binance.com/en/support/faq/b3c689c1f50a44cabb3a84e663b81d93)::

      LP = (WB - TMM1 + UPNL1 + cumB - Side1 * Position1 * EP1) / (Position1 * MMR_B - Side1 * Position1)

  WB is the wallet balance (cross: the cross wallet balance; isolated: the position's isolated
  margin), TMM1 / UPNL1 the maintenance margin and unrealised PnL of the *other* contracts (0 in
  isolated mode), cumB the maintenance amount, Side1 = 1 long / -1 short, Position1 the absolute
  size and EP1 the entry price. The bracket is the one that contains the notional at the
  liquidation price (Position1 * LP), found by trying each bracket.
* Margin ratio: ``maintenance margin / margin balance`` (margin balance = wallet balance +
  unrealised PnL); Binance liquidates when it reaches 100 %.
* Initial margin: ``notional / leverage`` (Binance "Initial Margin").

Bybit's USDT perpetuals (``exchange=bybit``) differ in one rule, the isolated-margin liquidation
price, which :func:`bybit_liquidation_price` computes; :func:`liquidation_formula` picks the
venue's function by exchange, and every caller goes through it. Bybit's risk-limit tiers
(``core/data/bybit_linear_risk_limits.json``) play the part of Binance's brackets: maintenance
margin = position value * MMR - maintenance-margin deduction, the same shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import cache
from pathlib import Path

from .model import MarginBracket

BRACKETS_FILE = Path(__file__).with_name("data") / "binance_usdm_brackets.json"
#: Bybit's BTCUSDT risk-limit tiers, in the same layout (see the file's ``source``).
BYBIT_RISK_LIMITS_FILE = Path(__file__).with_name("data") / "bybit_linear_risk_limits.json"

#: Used for perpetuals that have no bracket table: no maintenance margin, leverage up to 125.
NO_BRACKETS = (MarginBracket(0.0, math.inf, 125.0, 0.0, 0.0),)


@cache
def load_brackets(path: str | Path = BRACKETS_FILE) -> dict[str, tuple[MarginBracket, ...]]:
    """The bracket tables of a JSON file in ``core/data/binance_usdm_brackets.json``'s layout,
    by ccxt symbol. The last bracket's cap is open-ended."""
    raw = json.loads(Path(path).read_text())
    tables = {}
    for symbol, rows in raw["symbols"].items():
        rows = sorted(rows, key=lambda r: r["notionalFloor"])
        tables[symbol] = tuple(
            MarginBracket(
                float(r["notionalFloor"]),
                math.inf if i == len(rows) - 1 else float(r["notionalCap"]),
                float(r["initialLeverage"]),
                float(r["maintMarginRatio"]),
                float(r["cum"]),
            )
            for i, r in enumerate(rows)
        )
    return tables


def bracket_for(notional: float, brackets: tuple[MarginBracket, ...]) -> MarginBracket:
    brackets = brackets or NO_BRACKETS
    notional = abs(notional)
    for b in brackets:
        if notional < b.notional_cap:
            return b
    return brackets[-1]


def maintenance_margin(notional: float, brackets: tuple[MarginBracket, ...]) -> float:
    """``notional * mmr - cum`` of the bracket holding ``notional`` (Binance leverage-and-margin page)."""
    notional = abs(notional)
    b = bracket_for(notional, brackets)
    return max(notional * b.maintenance_rate - b.maintenance_amount, 0.0)


def max_leverage(notional: float, brackets: tuple[MarginBracket, ...]) -> float:
    return bracket_for(notional, brackets).max_leverage


def liquidation_price(
    quantity: float,
    entry_price: float,
    wallet_balance: float,
    brackets: tuple[MarginBracket, ...],
    *,
    other_maintenance: float = 0.0,
    other_upnl: float = 0.0,
    isolated: bool = False,
) -> float | None:
    """Binance USDⓈ-M liquidation price of a one-way position (formula in the module docstring).

    ``quantity`` is signed (> 0 long). ``wallet_balance`` is the cross wallet balance (cross
    margin) or the position's isolated margin (isolated; then leave the ``other_*`` at 0).
    ``isolated`` changes nothing here (Binance's formula is one for both modes, only ``WB``
    differs); it is accepted so that every venue's function takes the same arguments.
    Returns None when there is no position or a long cannot be liquidated at any positive price.
    """
    if abs(quantity) < 1e-12:
        return None
    side = 1.0 if quantity > 0 else -1.0
    size = abs(quantity)
    brackets = brackets or NO_BRACKETS
    base = wallet_balance - other_maintenance + other_upnl
    best, best_miss = None, math.inf
    for b in brackets:
        denominator = size * b.maintenance_rate - side * size
        if denominator == 0:
            continue
        price = (base + b.maintenance_amount - side * size * entry_price) / denominator
        notional = size * price
        miss = max(b.notional_floor - notional, notional - b.notional_cap, 0.0)
        if miss == 0.0 and notional < b.notional_cap:
            return price if price > 0 else None
        if miss < best_miss:  # float rounding can put LP exactly on a cap: keep the nearest
            best, best_miss = price, miss
    return best if best is not None and best > 0 else None


def bybit_liquidation_price(
    quantity: float,
    entry_price: float,
    wallet_balance: float,
    brackets: tuple[MarginBracket, ...],
    *,
    other_maintenance: float = 0.0,
    other_upnl: float = 0.0,
    isolated: bool = False,
) -> float | None:
    """Bybit USDT-perpetual liquidation price of a one-way position; arguments as
    :func:`liquidation_price`, ``brackets`` being Bybit's risk-limit tiers.

    Isolated margin, Bybit help center "Liquidation Price (USDT Contract)"
    (https://www.bybit.com/en/help-center/article/Liquidation-Price-USDT-Contract)::

        LP (long)  = Entry Price - (Initial Margin - Maintenance Margin) / Position Size - Extra Margin Added / Position Size
        LP (short) = Entry Price + (Initial Margin - Maintenance Margin) / Position Size + Extra Margin Added / Position Size

    with Position Value = size * entry price, Initial Margin = Position Value / leverage,
    Maintenance Margin = Position Value * MMR - deduction, MMR and deduction from the risk-limit
    tier of the position value. Initial margin plus extra margin is the position's isolated
    margin (``wallet_balance``), so ``LP = entry -/+ (isolated margin - MM at entry) / size``.
    Unlike Binance, the maintenance margin is taken at the entry value, not at the liquidation
    price (Bybit's example: 1 BTC long at 20,000 with 50x and MMR 0.5 % -> 19,700).

    Cross margin: liquidation when the margin balance (wallet + unrealised PnL) falls to the
    maintenance margin at the mark price, the tier chosen by the position value there (Bybit
    "Liquidation Price (USDT Contract)", cross margin mode; "Margin Parameters"). Solved for the
    price this is Binance's equation with Bybit's MMR and deduction in place of Binance's rate and
    ``cum``, so it is computed by :func:`liquidation_price` with Bybit's tiers. Bybit's fee to close
    the position, which its own figure may include, is left out here as in the Binance formula.
    """
    if not isolated:
        return liquidation_price(
            quantity, entry_price, wallet_balance, brackets, other_maintenance=other_maintenance, other_upnl=other_upnl
        )
    if abs(quantity) < 1e-12:
        return None
    side = 1.0 if quantity > 0 else -1.0
    size = abs(quantity)
    price = entry_price - side * (wallet_balance - maintenance_margin(size * entry_price, brackets)) / size
    return price if price > 0 else None


#: Liquidation-price functions of venues whose formula is not Binance's, by exchange id.
LIQUIDATION_FORMULAS: dict[str, Callable[..., float | None]] = {"bybit": bybit_liquidation_price}


def liquidation_formula(exchange: str) -> Callable[..., float | None]:
    """The liquidation-price function of ``exchange`` (Binance USDⓈ-M's unless it has its own)."""
    return LIQUIDATION_FORMULAS.get(exchange, liquidation_price)


def margin_ratio(
    quantity: float, entry_price: float, mark_price: float, wallet_balance: float, brackets: tuple[MarginBracket, ...]
) -> float:
    """``maintenance margin / (wallet balance + unrealised PnL)``; >= 1 means liquidation.

    ``wallet_balance`` as in :func:`liquidation_price`. A margin balance <= 0 gives ``inf``."""
    if abs(quantity) < 1e-12:
        return 0.0
    balance = wallet_balance + quantity * (mark_price - entry_price)
    mm = maintenance_margin(abs(quantity) * mark_price, brackets)
    return math.inf if balance <= 0 else mm / balance


def initial_margin(notional: float, leverage: float) -> float:
    return abs(notional) / leverage

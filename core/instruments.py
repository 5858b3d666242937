"""Instrument definitions for backtests: exchange filters and fees of the markets we know.

A live broker reads these from the exchange (ccxt ``load_markets``); a backtest uses this table,
overridden key by key by the ``instrument.*`` config. Figures are the exchanges' published
defaults (lowest fee tier) as of 2024-2026:

- Binance spot BTCUSDT: PRICE_FILTER tickSize 0.01, LOT_SIZE stepSize 0.00001, NOTIONAL
  minNotional 5; fees 0.1% maker and taker (binance.com/en/fee/schedule).
- Binance USD-M BTCUSDT perpetual: tickSize 0.10, stepSize 0.001, MIN_NOTIONAL 100; fees 0.02%
  maker, 0.05% taker (binance.com/en/fee/futureFee). Maintenance-margin brackets come from
  ``core/data/binance_usdm_brackets.json`` (Binance ``GET /fapi/v1/leverageBracket``; see
  :mod:`btc_quant.core.margin`); plugins can replace them with :func:`register_brackets`.
- Bybit BTCUSDT USDT perpetual: tickSize 0.10, qtyStep 0.001, minNotionalValue 5 USDT
  (``GET /v5/market/instruments-info``); fees 0.02% maker, 0.055% taker (Bybit "Trading Fee
  Structure", non-VIP derivatives); risk-limit tiers from ``core/data/bybit_linear_risk_limits.json``
  and Bybit's own liquidation formula (:func:`btc_quant.core.margin.bybit_liquidation_price`).
- Coinbase BTC-USD: quote_increment 0.01, base_increment 0.00000001, min market funds 1 USD;
  Advanced Trade lowest tier 0.40% maker / 0.60% taker.
"""

from __future__ import annotations

from dataclasses import replace

from .config import InstrumentConfig
from .margin import BYBIT_RISK_LIMITS_FILE, load_brackets
from .model import Instrument, MarginBracket, MarketKind

_KNOWN: dict[tuple[str, str], Instrument] = {
    (i.exchange, i.symbol): i
    for i in (
        # exchange, symbol, kind, tick size, lot size, minimum notional, maker fee, taker fee (figures above)
        Instrument("binance", "BTC/USDT", MarketKind.SPOT, 0.01, 0.00001, 5.0, 0.001, 0.001),
        Instrument("binanceusdm", "BTC/USDT:USDT", MarketKind.PERPETUAL, 0.1, 0.001, 100.0, 0.0002, 0.0005),
        Instrument("bybit", "BTC/USDT:USDT", MarketKind.PERPETUAL, 0.1, 0.001, 5.0, 0.0002, 0.00055),
        Instrument("coinbase", "BTC/USD", MarketKind.SPOT, 0.01, 0.00000001, 1.0, 0.004, 0.006),
    )
}

_BRACKETS: dict[tuple[str, str], tuple[MarginBracket, ...]] = {
    **{("binanceusdm", s): t for s, t in load_brackets().items()},
    **{("bybit", s): t for s, t in load_brackets(BYBIT_RISK_LIMITS_FILE).items()},
}


def register_brackets(exchange: str, symbol: str, brackets: tuple[MarginBracket, ...]) -> None:
    """Attach maintenance-margin brackets to a known perpetual (called by the exchange plugin)."""
    _BRACKETS[(exchange, symbol)] = tuple(sorted(brackets, key=lambda b: b.notional_floor))


def known_instruments() -> list[Instrument]:
    return [instrument_for(e, s) for e, s in sorted(_KNOWN)]


def instrument_for(exchange: str, symbol: str, overrides: InstrumentConfig | None = None) -> Instrument:
    """The instrument for a market: the table's entry (or a generic one) with config overrides.

    A market not in the table gets a generic definition (perpetual if the symbol has a ``:settle``
    part, as in ccxt notation; tick 0.01, lot 0.00001, no fees) so that any bars can be backtested;
    set ``instrument.*`` to make it realistic.
    """
    base = _KNOWN.get((exchange, symbol))
    if base is None:
        kind = MarketKind.PERPETUAL if ":" in symbol else MarketKind.SPOT
        base = Instrument(exchange, symbol, kind)
    brackets = _BRACKETS.get((exchange, symbol))
    if brackets:
        base = replace(base, margin_brackets=brackets)
    if overrides is not None:
        changes = {k: v for k, v in overrides.model_dump().items() if v is not None}
        if "kind" in changes:
            changes["kind"] = MarketKind(changes["kind"])
        base = replace(base, **changes)
    return base

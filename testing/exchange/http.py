"""Small helpers shared by the route tables: Binance-style parameters and answers."""

from __future__ import annotations

from aiohttp import web

from .market import BinanceError

STATE = web.AppKey("state", object)
#: the fault the middleware chose for this request (handlers apply page faults)
FAULT = web.RequestKey("fault", object)


def state_of(request: web.Request):
    return request.app[STATE]


def int_param(
    request: web.Request, name: str, default: int | None = None, *, low: int | None = None, high: int | None = None
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise BinanceError(-1130, f"Invalid data sent for a parameter: {name}={raw}.")
    return value


def required(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return value


def cut(rows: list, request: web.Request) -> list:
    """Apply a ``short_page``/``empty_page`` fault to a list answer."""
    fault = request.get(FAULT)
    if fault == "empty_page":
        return []
    if fault == "short_page":
        return rows[: len(rows) // 2]
    return rows

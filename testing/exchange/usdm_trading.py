"""Binance USD-M trading endpoints (signed ``/fapi`` routes) as ccxt's ``binanceusdm`` calls them.

Every signed request is checked the way Binance checks it: ``X-MBX-APIKEY`` names an account
(-2014 when missing, -2015 when unknown), ``signature`` is the HMAC-SHA256 of the query string
followed by the body, without the signature itself, under the account's secret (-1022 when it is
wrong), and ``timestamp`` lies within ``recvWindow`` (default 5000 ms) before the server's wall
clock and at most 1000 ms after it (-1021 otherwise). The recvWindow check uses real time (what
ccxt's nonce is), not the replayed market clock; :attr:`~.trading.Trading.clock_skew_ms` shifts it
to provoke -1021. Order, trade and position timestamps are exchange (replayed) time.

Routes (ccxt 4.5 method -> endpoint):

================================  =============================================================
create_order                      ``POST /fapi/v1/order``
cancel_order                      ``DELETE /fapi/v1/order``
edit_order                        ``PUT /fapi/v1/order`` (LIMIT only, as Binance)
cancel_all_orders                 ``DELETE /fapi/v1/allOpenOrders``
fetch_order                       ``GET /fapi/v1/order`` (``orderId`` or ``origClientOrderId``)
fetch_open_orders                 ``GET /fapi/v1/openOrders``
fetch_orders / fetch_closed...    ``GET /fapi/v1/allOrders``
fetch_my_trades                   ``GET /fapi/v1/userTrades``
fetch_positions                   ``GET /fapi/v3/positionRisk`` (+ ``/fapi/v1/leverageBracket``);
                                  ``/fapi/v2/positionRisk`` with ``useV2``
fetch_balance                     ``GET /fapi/v3/account`` (``/fapi/v2/account`` with ``useV2``);
                                  also ``GET /fapi/v2/balance`` and ``/fapi/v3/balance``
fetch_leverages / margin modes    ``GET /fapi/v1/symbolConfig``
set_leverage                      ``POST /fapi/v1/leverage``
set_margin_mode                   ``POST /fapi/v1/marginType``
add_margin / reduce_margin        ``POST /fapi/v1/positionMargin``
set_position_mode                 ``POST /fapi/v1/positionSide/dual`` (``dualSidePosition``)
fetch_position_mode               ``GET /fapi/v1/positionSide/dual``
fetch_funding_history             ``GET /fapi/v1/income``
(ccxt.pro authenticate)           ``POST/PUT/DELETE /fapi/v1/listenKey`` (API key only, unsigned)
================================  =============================================================
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from aiohttp import web

from .http import state_of
from .market import BinanceError
from .trading import BRACKETS, Account, Trading, bracket_for, fmt, max_notional, order_json, trade_json


def routes() -> list[web.RouteDef]:
    return [
        web.post("/fapi/v1/order", new_order),
        web.delete("/fapi/v1/order", cancel_order),
        web.put("/fapi/v1/order", modify_order),
        web.get("/fapi/v1/order", get_order),
        web.delete("/fapi/v1/allOpenOrders", cancel_all),
        web.get("/fapi/v1/openOrders", open_orders),
        web.get("/fapi/v1/allOrders", all_orders),
        web.get("/fapi/v1/userTrades", user_trades),
        web.get("/fapi/v2/positionRisk", position_risk_v2),
        web.get("/fapi/v3/positionRisk", position_risk_v3),
        web.get("/fapi/v2/account", account_v2),
        web.get("/fapi/v3/account", account_v3),
        web.get("/fapi/v2/balance", balance),
        web.get("/fapi/v3/balance", balance),
        web.get("/fapi/v1/symbolConfig", symbol_config),
        web.get("/fapi/v1/leverageBracket", leverage_bracket),
        web.post("/fapi/v1/leverage", set_leverage),
        web.post("/fapi/v1/marginType", set_margin_type),
        web.post("/fapi/v1/positionMargin", position_margin),
        web.post("/fapi/v1/positionSide/dual", set_position_mode),
        web.get("/fapi/v1/positionSide/dual", position_mode),
        web.get("/fapi/v1/income", income),
        web.post("/fapi/v1/listenKey", listen_key),
        web.put("/fapi/v1/listenKey", listen_key),
        web.delete("/fapi/v1/listenKey", listen_key),
    ]


def trading_of(request: web.Request) -> Trading:
    return state_of(request).trading


def _strip_signature(raw: str) -> tuple[str, str | None]:
    parts, signature = [], None
    for part in raw.split("&") if raw else []:
        if part.startswith("signature="):
            signature = part[len("signature=") :]
        else:
            parts.append(part)
    return "&".join(parts), signature


async def signed(request: web.Request) -> tuple[Account, dict]:
    """Verify a SIGNED request (see module doc); return the account and all parameters."""
    trading = trading_of(request)
    key = request.headers.get("X-MBX-APIKEY")
    if not key:
        raise BinanceError(-2014, "API-key format invalid.", 401)
    account = trading.account(key)
    query_raw = request.rel_url.raw_query_string
    body_raw = await request.text() if request.body_exists else ""
    query_payload, query_sig = _strip_signature(query_raw)
    body_payload, body_sig = _strip_signature(body_raw)
    signature = query_sig or body_sig
    params = dict(parse_qsl(body_raw, keep_blank_values=True))
    params.update(parse_qsl(query_raw, keep_blank_values=True))  # the query string wins, as on Binance
    params.pop("signature", None)
    if "timestamp" not in params:
        raise BinanceError(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
    if not signature:
        raise BinanceError(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
    if account.sign(query_payload + body_payload) != signature.lower():
        raise BinanceError(-1022, "Signature for this request is not valid.")
    try:
        stamp = int(params["timestamp"])
        window = int(params.get("recvWindow", 5000))
    except ValueError:
        raise BinanceError(-1100, "Illegal characters found in parameter 'timestamp'; legal range is '^[0-9]{1,20}$'.") from None
    server_ms = int(time.time() * 1000) + trading.skew_ms(key)
    if stamp < server_ms - window or stamp > server_ms + 1000:
        raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")
    return account, params


def reader(build):
    """A signed read-only route: ``build(trading, account, params)`` runs on a synced book, under its lock."""

    async def route(request: web.Request) -> web.Response:
        account, params = await signed(request)
        trading = trading_of(request)
        with trading.lock:
            trading.sync()
            return web.json_response(build(trading, account, params))

    return route


async def new_order(request: web.Request) -> web.Response:
    account, params = await signed(request)
    order = trading_of(request).place(account.api_key, params)
    return web.json_response(order_json(order))


async def modify_order(request: web.Request) -> web.Response:
    account, params = await signed(request)
    return web.json_response(order_json(trading_of(request).modify(account.api_key, params)))


async def cancel_order(request: web.Request) -> web.Response:
    account, params = await signed(request)
    order = trading_of(request).cancel(account.api_key, params)
    return web.json_response(order_json(order))


async def get_order(request: web.Request) -> web.Response:
    account, params = await signed(request)
    return web.json_response(order_json(trading_of(request).query(account.api_key, params)))


async def cancel_all(request: web.Request) -> web.Response:
    account, params = await signed(request)
    symbol = params.get("symbol")
    if not symbol:
        raise BinanceError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
    trading_of(request).cancel_all(account.api_key, symbol)
    return web.json_response({"code": 200, "msg": "The operation of cancel all open order is done."})


def _open_orders(trading: Trading, account: Account, params: dict) -> list:
    symbol = params.get("symbol")
    if symbol:
        trading.market(symbol)
    return [order_json(o) for o in account.open_orders(symbol or None)]


open_orders = reader(_open_orders)


def _window(rows: list, params: dict, time_key: str, id_key: str, from_key: str) -> list:
    start, end = params.get("startTime"), params.get("endTime")
    if start:
        rows = [r for r in rows if r[time_key] >= int(start)]
    if end:
        rows = [r for r in rows if r[time_key] <= int(end)]
    if params.get(from_key):
        rows = [r for r in rows if r[id_key] >= int(params[from_key])]
        return rows[: int(params.get("limit", 500))]
    limit = int(params.get("limit", 500))
    return rows[:limit] if start and not end else rows[-limit:]


def _all_orders(trading: Trading, account: Account, params: dict) -> list:
    symbol = params.get("symbol")
    trading.market(symbol)
    rows = sorted((order_json(o) for o in account.orders.values() if o.symbol == symbol), key=lambda r: r["orderId"])
    return _window(rows, params, "time", "orderId", "orderId")


def _user_trades(trading: Trading, account: Account, params: dict) -> list:
    symbol = params.get("symbol")
    trading.market(symbol)
    rows = [trade_json(t) for t in account.trades if t.symbol == symbol]
    if params.get("orderId"):
        rows = [r for r in rows if r["orderId"] == int(params["orderId"])]
    return _window(rows, params, "time", "id", "fromId")


all_orders = reader(_all_orders)
user_trades = reader(_user_trades)


def _position_numbers(trading: Trading, account: Account, symbol: str, position_side: str = "BOTH") -> dict:
    pos = account.position(symbol, position_side)
    mark = trading.price(symbol)
    notional = pos.amt * mark
    upnl = pos.amt * (mark - pos.entry) if pos.amt else 0.0
    _, _, _, mmr, cum = bracket_for(abs(notional))
    maint = max(abs(notional) * mmr - cum, 0.0) if pos.amt else 0.0
    lev = account.lev(symbol)
    position_im = abs(notional) / lev
    order_im = sum(
        trading._order_margin(account, o, trading.state.clock.now_ms())
        for o in account.open_orders(symbol)
        if position_side == "BOTH" or o.position_side == position_side
    )
    isolated = account.isolated(symbol)
    return {
        "pos": pos,
        "mark": mark,
        "notional": notional,
        "upnl": upnl,
        "maint": maint,
        "lev": lev,
        "position_im": position_im,
        "order_im": order_im,
        "isolated": isolated,
        "isolated_margin": pos.isolated_wallet + upnl if isolated and pos.amt else 0.0,
        "liq": trading.liquidation_price(account, symbol, position_side),
        "side": position_side,
    }


def _legs(trading: Trading, account: Account, symbol: str) -> list[dict]:
    """:func:`_position_numbers` of each of the symbol's positions: BOTH, or in hedge mode LONG and SHORT."""
    return [_position_numbers(trading, account, symbol, ps) for ps, _ in account.legs(symbol)]


def _symbols(trading: Trading, params: dict) -> list[str]:
    if params.get("symbol"):
        trading.market(params["symbol"])
        return [params["symbol"]]
    return [sym for fam, sym in trading.state.markets if fam == "usdm"]


def _position_risk_v3(trading: Trading, account: Account, params: dict) -> list:
    rows = []
    for symbol in _symbols(trading, params):
        for n in _legs(trading, account, symbol):
            if not n["pos"].amt and not any(o.position_side == n["side"] for o in account.open_orders(symbol)):
                continue  # v3 lists only positions with an amount or open orders
            rows.append(
                {
                    "symbol": symbol,
                    "positionSide": n["side"],
                    "positionAmt": fmt(n["pos"].amt),
                    "entryPrice": fmt(n["pos"].entry),
                    "breakEvenPrice": fmt(n["pos"].entry),
                    "markPrice": fmt(n["mark"]),
                    "unRealizedProfit": fmt(n["upnl"]),
                    "liquidationPrice": fmt(n["liq"]),
                    "isolatedMargin": fmt(n["isolated_margin"]),
                    "notional": fmt(n["notional"]),
                    "marginAsset": "USDT",
                    "isolatedWallet": fmt(n["pos"].isolated_wallet),
                    "initialMargin": fmt(n["position_im"] + n["order_im"]),
                    "maintMargin": fmt(n["maint"]),
                    "positionInitialMargin": fmt(n["position_im"]),
                    "openOrderInitialMargin": fmt(n["order_im"]),
                    "adl": 0,
                    "bidNotional": "0",
                    "askNotional": "0",
                    "updateTime": n["pos"].update_time,
                }
            )
    return rows


def _position_risk_v2(trading: Trading, account: Account, params: dict) -> list:
    rows = []
    for symbol in _symbols(trading, params):
        for n in _legs(trading, account, symbol):
            rows.append(
                {
                    "symbol": symbol,
                    "positionAmt": fmt(n["pos"].amt),
                    "entryPrice": fmt(n["pos"].entry),
                    "breakEvenPrice": fmt(n["pos"].entry),
                    "markPrice": fmt(n["mark"]),
                    "unRealizedProfit": fmt(n["upnl"]),
                    "liquidationPrice": fmt(n["liq"]),
                    "leverage": str(n["lev"]),
                    "maxNotionalValue": fmt(max_notional(n["lev"])),
                    "marginType": "isolated" if n["isolated"] else "cross",
                    "isolatedMargin": fmt(n["isolated_margin"]),
                    "isAutoAddMargin": "false",
                    "positionSide": n["side"],
                    "notional": fmt(n["notional"]),
                    "isolatedWallet": fmt(n["pos"].isolated_wallet),
                    "updateTime": n["pos"].update_time,
                }
            )
    return rows


position_risk_v3 = reader(_position_risk_v3)
position_risk_v2 = reader(_position_risk_v2)


def _asset_numbers(trading: Trading, account: Account) -> dict:
    cross_upnl = upnl = position_im = order_im = maint = 0.0
    positions = []
    for symbol in [sym for fam, sym in trading.state.markets if fam == "usdm"]:
        for n in _legs(trading, account, symbol):
            upnl += n["upnl"]
            if not n["isolated"]:
                cross_upnl += n["upnl"]
            position_im += n["position_im"]
            order_im += n["order_im"]
            maint += n["maint"]
            positions.append((symbol, n))
    wallet = account.wallet
    return {
        "wallet": wallet,
        "cross_wallet": trading.cross_wallet(account),
        "upnl": upnl,
        "cross_upnl": cross_upnl,
        "position_im": position_im,
        "order_im": order_im,
        "maint": maint,
        "available": trading.available(account),
        "positions": positions,
    }


def _account_body(trading: Trading, account: Account, v2: bool) -> dict:
    a = _asset_numbers(trading, account)
    asset = {
        "asset": "USDT",
        "walletBalance": fmt(a["wallet"]),
        "unrealizedProfit": fmt(a["upnl"]),
        "marginBalance": fmt(a["wallet"] + a["upnl"]),
        "maintMargin": fmt(a["maint"]),
        "initialMargin": fmt(a["position_im"] + a["order_im"]),
        "positionInitialMargin": fmt(a["position_im"]),
        "openOrderInitialMargin": fmt(a["order_im"]),
        "crossWalletBalance": fmt(a["cross_wallet"]),
        "crossUnPnl": fmt(a["cross_upnl"]),
        "availableBalance": fmt(a["available"]),
        "maxWithdrawAmount": fmt(max(a["available"], 0.0)),
        "updateTime": account.update_time or 1,
    }
    if v2:
        asset["marginAvailable"] = True
    positions = []
    for symbol, n in a["positions"]:
        if not v2 and not n["pos"].amt:
            continue
        row = {
            "symbol": symbol,
            "positionSide": n["side"],
            "positionAmt": fmt(n["pos"].amt),
            "unrealizedProfit": fmt(n["upnl"]),
            "isolatedMargin": fmt(n["isolated_margin"]),
            "notional": fmt(n["notional"]),
            "isolatedWallet": fmt(n["pos"].isolated_wallet),
            "initialMargin": fmt(n["position_im"] + n["order_im"]),
            "maintMargin": fmt(n["maint"]),
            "updateTime": n["pos"].update_time,
        }
        if v2:
            row.update(
                leverage=str(n["lev"]),
                isolated=n["isolated"],
                entryPrice=fmt(n["pos"].entry),
                breakEvenPrice=fmt(n["pos"].entry),
                positionInitialMargin=fmt(n["position_im"]),
                openOrderInitialMargin=fmt(n["order_im"]),
                maxNotional="0",
                bidNotional="0",
                askNotional="0",
            )
        positions.append(row)
    body = {
        "totalInitialMargin": asset["initialMargin"],
        "totalMaintMargin": asset["maintMargin"],
        "totalWalletBalance": asset["walletBalance"],
        "totalUnrealizedProfit": asset["unrealizedProfit"],
        "totalMarginBalance": asset["marginBalance"],
        "totalPositionInitialMargin": asset["positionInitialMargin"],
        "totalOpenOrderInitialMargin": asset["openOrderInitialMargin"],
        "totalCrossWalletBalance": asset["crossWalletBalance"],
        "totalCrossUnPnl": asset["crossUnPnl"],
        "availableBalance": asset["availableBalance"],
        "maxWithdrawAmount": asset["maxWithdrawAmount"],
        "assets": [asset],
        "positions": positions,
    }
    if v2:
        body.update(feeTier=0, canTrade=True, canDeposit=True, canWithdraw=True, updateTime=0, multiAssetsMargin=False)
    return body


account_v2 = reader(lambda trading, account, params: _account_body(trading, account, v2=True))
account_v3 = reader(lambda trading, account, params: _account_body(trading, account, v2=False))


def _balance(trading: Trading, account: Account, params: dict) -> list:
    a = _asset_numbers(trading, account)
    return [
        {
            "accountAlias": "local",
            "asset": "USDT",
            "balance": fmt(a["wallet"]),
            "crossWalletBalance": fmt(a["cross_wallet"]),
            "crossUnPnl": fmt(a["cross_upnl"]),
            "availableBalance": fmt(a["available"]),
            "maxWithdrawAmount": fmt(max(a["available"], 0.0)),
            "marginAvailable": True,
            "updateTime": account.update_time,
        }
    ]


def _symbol_config(trading: Trading, account: Account, params: dict) -> list:
    return [
        {
            "symbol": symbol,
            "marginType": account.margin_type.get(symbol, "CROSSED"),
            "isAutoAddMargin": "false",
            "leverage": account.lev(symbol),
            "maxNotionalValue": fmt(max_notional(account.lev(symbol))),
        }
        for symbol in _symbols(trading, params)
    ]


def _leverage_bracket(trading: Trading, account: Account, params: dict) -> list:
    brackets = [
        {"bracket": k + 1, "initialLeverage": lev, "notionalCap": cap, "notionalFloor": floor, "maintMarginRatio": rate, "cum": cum}
        for k, (floor, cap, lev, rate, cum) in enumerate(BRACKETS)
    ]
    return [{"symbol": s, "notionalCoef": 1.0, "brackets": brackets} for s in _symbols(trading, params)]


def _income(trading: Trading, account: Account, params: dict) -> list:
    account.income_read_ms = trading.last_ms  # the reader synced the book to now just before
    rows = [r for r in account.income if not params.get("incomeType") or r["incomeType"] == params["incomeType"]]
    if params.get("symbol"):
        rows = [r for r in rows if r["symbol"] == params["symbol"]]
    return _window(rows, params, "time", "tranId", "page-not-used")[: int(params.get("limit", 100))]


balance = reader(_balance)
symbol_config = reader(_symbol_config)
leverage_bracket = reader(_leverage_bracket)
income = reader(_income)


async def set_leverage(request: web.Request) -> web.Response:
    account, params = await signed(request)
    try:
        leverage = int(params.get("leverage", ""))
    except ValueError:
        raise BinanceError(-1102, "Mandatory parameter 'leverage' was not sent, was empty/null, or malformed.") from None
    return web.json_response(trading_of(request).set_leverage(account.api_key, params.get("symbol", ""), leverage))


async def set_margin_type(request: web.Request) -> web.Response:
    account, params = await signed(request)
    return web.json_response(trading_of(request).set_margin_type(account.api_key, params.get("symbol", ""), params.get("marginType", "")))


async def position_margin(request: web.Request) -> web.Response:
    account, params = await signed(request)
    try:
        amount, kind = float(params.get("amount", "")), int(params.get("type", ""))
    except ValueError:
        raise BinanceError(-1102, "Mandatory parameter 'amount' or 'type' was not sent, was empty/null, or malformed.") from None
    position_side = str(params.get("positionSide", "BOTH")).upper()
    return web.json_response(trading_of(request).position_margin(account.api_key, params.get("symbol", ""), amount, kind, position_side))


async def set_position_mode(request: web.Request) -> web.Response:
    """``POST /fapi/v1/positionSide/dual``: ``dualSidePosition`` ``true`` (hedge mode) or ``false``."""
    account, params = await signed(request)
    raw = str(params.get("dualSidePosition", "")).lower()
    if raw not in ("true", "false"):
        raise BinanceError(-1102, "Mandatory parameter 'dualSidePosition' was not sent, was empty/null, or malformed.")
    return web.json_response(trading_of(request).set_position_mode(account.api_key, raw == "true"))


position_mode = reader(lambda trading, account, params: {"dualSidePosition": account.dual_side})


async def listen_key(request: web.Request) -> web.Response:
    """``POST`` creates (or returns the live) listen key; ``PUT`` keeps it alive; ``DELETE`` closes it."""
    trading = trading_of(request)
    key = request.headers.get("X-MBX-APIKEY")
    if not key:
        raise BinanceError(-2014, "API-key format invalid.", 401)
    account = trading.account(key)
    if request.method == "POST":
        return web.json_response({"listenKey": trading.listen_key_for(account)})
    if request.method == "DELETE":
        trading.close_listen_keys(account)
    elif not trading.keep_alive(account):
        raise BinanceError(-1125, "This listenKey does not exist.")
    return web.json_response({})

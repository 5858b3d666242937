"""Bybit v5 signed REST for the linear USDT perpetual, over the venue's trading book.

The book (:mod:`..trading`) is the same one the Binance dialect trades on; this module speaks
Bybit's API to it, as ccxt's ``bybit`` client calls it for a Unified Trading Account:

* auth: headers ``X-BAPI-API-KEY``, ``X-BAPI-TIMESTAMP``, ``X-BAPI-RECV-WINDOW``, ``X-BAPI-SIGN`` =
  HMAC-SHA256(secret, timestamp + api key + recv window + query string (GET) or raw body (POST))
  (bybit-exchange.github.io/docs/v5/guide#authentication); 10003 bad key, 10004 bad signature,
  10002 timestamp outside the receive window;
* ``GET /v5/user/query-api`` (``uta: 1``) and ``GET /v5/account/info``: ccxt asks them once to learn
  the account is unified; ``GET /v5/asset/coin/query-info`` (``load_markets`` with keys);
* ``POST /v5/order/create`` (``orderType`` Limit/Market, ``timeInForce`` GTC/PostOnly/IOC,
  ``reduceOnly``, ``orderLinkId``), ``POST /v5/order/cancel`` (``orderId`` or ``orderLinkId``),
  ``GET /v5/order/realtime`` (open orders; with an id, that order whatever its state),
  ``GET /v5/order/history`` (ended orders, newest first, 1..50 a page, ``cursor`` paging),
  ``GET /v5/execution/list``;
* ``GET /v5/position/list``, ``GET /v5/account/wallet-balance`` (``accountType=UNIFIED``),
  ``POST /v5/position/set-leverage``, ``POST /v5/account/set-margin-mode`` (account-wide on a UTA:
  ``ISOLATED_MARGIN`` / ``REGULAR_MARGIN``), ``POST /v5/position/switch-isolated`` and
  ``POST /v5/position/add-margin`` (isolated margin in or out; ccxt has no ``addMargin`` for Bybit,
  the live broker calls this endpoint itself).

Where Bybit's rules differ from Binance's, Bybit's apply: a PostOnly order that would take is
*accepted and then cancelled* (docs/v5/order/create-order: "If the order would be filled
immediately when submitted, it will be cancelled"; ``orderStatus`` Cancelled, ``rejectReason``
``EC_PostOnlyWillTakeLiquidity``), not refused; an ``orderLinkId`` may not repeat any earlier order
of the account (110072 "OrderLinkedID is duplicate"; assumed here for every order the account ever
had, the strictest reading of "unique"), where Binance only refuses a duplicate of an open order;
fees are Bybit's (set on the book by :func:`.bybit.bybit_state`). Refusals carry
Bybit's ``retCode`` (bybit-exchange.github.io/docs/v5/error): 110007 margin, 110017 reduce-only,
110094 below the minimum order value, 110001 unknown order, 110043 leverage not modified,
110026 margin mode not modified, 10001 parameters.

Not served: the private websocket (order/execution/position/wallet pushes), hedge mode
(``positionIdx`` 1/2), conditional and TP/SL orders, amend, batch endpoints, ``cancel-all``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import parse_qsl

from aiohttp import web

from btc_quant.core import margin as mm

from ..http import state_of
from ..market import BinanceError
from ..trading import Account, Order, Trading, fmt
from .bybit import BybitBook, BybitError, envelope

#: Binance error code of the book -> Bybit's (retCode, retMsg) for the same refusal.
ERRORS = {
    -2019: (110007, "ab not enough for new order"),
    -2022: (110017, "Reduce-only rule not satisfied"),
    -4164: (110094, "Order notional value below the lower limit"),
    -2011: (110001, "Order does not exist."),
    -2013: (110001, "Order does not exist."),
    -4046: (110026, "Cross/isolated margin mode is not modified"),
    -4116: (110072, "OrderLinkedID is duplicate"),
}
#: The book's order status -> Bybit's ``orderStatus`` for linear contracts. A partly filled order
#: that is canceled is ``Cancelled`` with its ``cumExecQty`` (v5 "Enums", orderStatus: Cancelled
#: "in derivatives, orders with this status may have an executed qty"); ``PartiallyFilledCanceled``
#: is Bybit's for spot only, and ccxt reads it as ``closed``.
STATUS = {"NEW": "New", "PARTIALLY_FILLED": "PartiallyFilled", "FILLED": "Filled", "CANCELED": "Cancelled", "EXPIRED": "Cancelled"}
TIF_IN = {"GTC": "GTC", "POSTONLY": "GTX", "IOC": "IOC"}
TIF_OUT = {"GTC": "GTC", "GTX": "PostOnly", "IOC": "IOC"}
RECV_WINDOW_MS = 5000
#: Last path segments of Bybit's data and trading endpoints, plus the websocket and matching
#: channels (``FaultPlan(paths=...)``; ``python -m btc_quant.testing.exchange --dialect bybit --trading-faults``)
FAULT_PATHS = (
    "kline",
    "history",
    "create",
    "cancel",
    "realtime",
    "list",
    "wallet-balance",
    "set-leverage",
    "set-margin-mode",
    "switch-isolated",
    "add-margin",
    "ws",
    "match",
)


def _bybit(exc: BinanceError) -> BybitError:
    code, msg = ERRORS.get(exc.code, (10001, f"params error: {exc.msg}"))
    return BybitError(code, msg)


async def _signed(request: web.Request) -> tuple[Trading, Account, dict]:
    trading: Trading = state_of(request).trading
    key = request.headers.get("X-BAPI-API-KEY", "")
    account = trading.accounts.get(key)
    if account is None:
        raise BybitError(10003, "API key is invalid.")
    stamp = request.headers.get("X-BAPI-TIMESTAMP", "")
    window = request.headers.get("X-BAPI-RECV-WINDOW", str(RECV_WINDOW_MS))
    body = await request.text() if request.method == "POST" else ""
    payload = body if request.method == "POST" else request.query_string
    want = hmac.new(account.secret.encode(), f"{stamp}{key}{window}{payload}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, request.headers.get("X-BAPI-SIGN", "").lower()):
        raise BybitError(10004, "error sign! origin_string[...]")
    try:
        stamp_ms, window_ms = int(stamp), int(window)
    except ValueError:
        raise BybitError(10002, "invalid request, please check your server timestamp or recv_window param") from None
    server_ms = int(time.time() * 1000) + trading.clock_skew_ms
    if not (server_ms - window_ms <= stamp_ms < server_ms + 1000):
        raise BybitError(10002, "invalid request, please check your server timestamp or recv_window param")
    params = json.loads(body) if body else dict(parse_qsl(request.query_string, keep_blank_values=True))
    return trading, account, params


def _route(build):
    """A signed route: ``build(request, trading, account, params)`` -> result, in Bybit's envelope."""

    async def route(request: web.Request) -> web.Response:
        now = state_of(request).clock.now_ms()
        try:
            trading, account, params = await _signed(request)
            if params.get("category", "linear") != "linear":
                raise BybitError(10001, "params error: only category=linear is served here")
            result = build(request, trading, account, params)
            return web.json_response(envelope(result, now))
        except BybitError as exc:
            return web.json_response(envelope({}, now, exc.ret_code, exc.ret_msg))
        except BinanceError as exc:  # a refusal of the book: Bybit's code for it
            bybit = _bybit(exc)
            return web.json_response(envelope({}, now, bybit.ret_code, bybit.ret_msg))

    return route


# -- what Bybit answers -----------------------------------------------------------------------


def order_json(trading: Trading, account: Account, order: Order, reject: str = "EC_NoError") -> dict:
    fee = sum(t.commission for t in account.trades if t.order_id == order.order_id)
    status = STATUS[order.status]  # a partly filled order canceled stays Cancelled here: see STATUS
    return {
        "orderId": str(order.order_id),
        "orderLinkId": order.client_id,
        "blockTradeId": "",
        "symbol": order.symbol,
        "price": fmt(order.price),
        "qty": fmt(order.qty),
        "side": order.side.capitalize(),
        "isLeverage": "",
        "positionIdx": 0,
        "orderStatus": status,
        "cancelType": "UNKNOWN",
        "rejectReason": reject,
        "avgPrice": fmt(order.avg_price) if order.executed else "",
        "leavesQty": fmt(order.remaining if order.open else 0.0),
        "leavesValue": fmt((order.remaining if order.open else 0.0) * order.price),
        "cumExecQty": fmt(order.executed),
        "cumExecValue": fmt(order.cum_quote),
        "cumExecFee": fmt(fee),
        "timeInForce": TIF_OUT.get(order.time_in_force, "GTC"),
        "orderType": order.type.capitalize(),
        "stopOrderType": "",
        "orderIv": "",
        "triggerPrice": "",
        "takeProfit": "",
        "stopLoss": "",
        "tpTriggerBy": "",
        "slTriggerBy": "",
        "triggerDirection": 0,
        "triggerBy": "",
        "lastPriceOnCreated": "",
        "reduceOnly": order.reduce_only,
        "closeOnTrigger": False,
        "smpType": "None",
        "smpGroup": 0,
        "smpOrderId": "",
        "tpslMode": "",
        "tpLimitPrice": "",
        "slLimitPrice": "",
        "placeType": "",
        "createdTime": str(order.time),
        "updatedTime": str(order.update_time or order.time),
        "createType": "CreateByUser" if order.orig_type != "LIQUIDATION" else "CreateByLiq",
        "cumFeeDetail": {"USDT": fmt(fee)},
        "slippageToleranceType": "UNKNOWN",
        "slippageTolerance": "0",
        "extraFees": "",
    }


def book_of(trading: Trading) -> BybitBook:
    return trading.dialect_books["bybit"]


def _all_orders(trading: Trading, account: Account) -> list[tuple[Order, str]]:
    out = [(o, "EC_NoError") for o in account.orders.values()]
    out += [(o, "EC_PostOnlyWillTakeLiquidity") for o in book_of(trading).rejects.get(account.api_key, {}).values()]
    return sorted(out, key=lambda item: item[0].order_id)


def _find(trading: Trading, account: Account, params: dict) -> tuple[Order, str] | None:
    order_id, link_id = params.get("orderId"), params.get("orderLinkId")
    for order, reject in _all_orders(trading, account):
        if (order_id and str(order.order_id) == str(order_id)) or (link_id and order.client_id == link_id):
            return order, reject
    return None


# -- routes -----------------------------------------------------------------------------------


def query_api(request, trading, account, params) -> dict:
    return {
        "id": "1",
        "note": "local",
        "apiKey": account.api_key,
        "readOnly": 0,
        "secret": "",
        "permissions": {
            "ContractTrade": ["Order", "Position"],
            "Spot": [],
            "Wallet": ["AccountTransfer"],
            "Options": [],
            "Derivatives": [],
            "CopyTrading": [],
            "BlockTrade": [],
            "Exchange": [],
            "NFT": [],
        },
        "ips": ["*"],
        "type": 1,
        "deadlineDay": 90,
        "expiredAt": "",
        "createdAt": "",
        "unified": 0,
        "uta": 1,
        "userID": 1,
        "inviterID": 0,
        "vipLevel": "No VIP",
        "mktMakerLevel": "0",
        "affiliateID": 0,
    }


def account_info(request, trading, account, params) -> dict:
    isolated = any(account.isolated(s) for s in account.margin_type)
    return {
        "unifiedMarginStatus": 6,
        "marginMode": "ISOLATED_MARGIN" if isolated else "REGULAR_MARGIN",
        "isMasterTrader": False,
        "spotHedgingStatus": "OFF",
        "updatedTime": str(account.update_time or 0),
        "dcpStatus": "OFF",
        "timeWindow": 0,
        "smpGroup": 0,
    }


def coin_info(request, trading, account, params) -> dict:
    return {"rows": [{"name": c, "coin": c, "remainAmount": "0", "chains": []} for c in ("BTC", "USDT")]}


def create_order(request, trading: Trading, account: Account, params: dict) -> dict:
    link_id = params.get("orderLinkId") or ""
    with trading.lock:
        if link_id and _find(trading, account, {"orderLinkId": link_id}) is not None:
            raise BybitError(110072, "OrderLinkedID is duplicate")  # any earlier order, not only open ones
        tif = TIF_IN.get(str(params.get("timeInForce", "GTC")).upper())
        if tif is None:
            raise BybitError(10001, f"params error: timeInForce {params.get('timeInForce')} is not served")
        side = str(params.get("side", "")).upper()
        book = {
            "symbol": params.get("symbol", ""),
            "side": side,
            "type": str(params.get("orderType", "")).upper(),
            "quantity": str(params.get("qty", "")),
            "reduceOnly": "true" if str(params.get("reduceOnly")).lower() == "true" else "false",
            "newClientOrderId": link_id or None,
        }
        if book["type"] == "LIMIT":
            book.update(timeInForce=tif, price=str(params.get("price", "")))
        book = {k: v for k, v in book.items() if v is not None}
        try:
            order = trading.place(account.api_key, book)
        except BinanceError as exc:
            if exc.code != -5022:
                raise
            # Bybit accepts a PostOnly order that would take, then cancels it (rejectReason
            # EC_PostOnlyWillTakeLiquidity): the order exists, with its id, as Cancelled
            now = trading.state.clock.now_ms()
            order = Order(
                next(trading._order_ids),
                link_id or f"local-{now}",
                book["symbol"],
                side,
                "LIMIT",
                "GTX",
                float(book["quantity"]),
                float(book["price"]),
                book["reduceOnly"] == "true",
                now,
                status="CANCELED",
                update_time=now,
            )
            book_of(trading).rejects.setdefault(account.api_key, {})[order.order_id] = order
            account.events.append(
                (
                    next(trading._seq),
                    {"e": "BYBIT_ORDER", "E": now, "o": order_json(trading, account, order, "EC_PostOnlyWillTakeLiquidity")},
                )
            )
        return {"orderId": str(order.order_id), "orderLinkId": order.client_id}


def cancel_order(request, trading: Trading, account: Account, params: dict) -> dict:
    with trading.lock:
        found = _find(trading, account, params)
        if found is None or not found[0].open or found[1] != "EC_NoError":
            raise BybitError(110001, "Order does not exist.")
        order = trading.cancel(account.api_key, {"symbol": params.get("symbol", ""), "orderId": str(found[0].order_id)})
        return {"orderId": str(order.order_id), "orderLinkId": order.client_id}


def _listing(rows: list[dict]) -> dict:
    return {"list": rows, "nextPageCursor": "", "category": "linear"}


def realtime(request, trading: Trading, account: Account, params: dict) -> dict:
    with trading.lock:
        trading.sync()
        if params.get("orderId") or params.get("orderLinkId"):
            found = _find(trading, account, params)
            return _listing([order_json(trading, account, *found)] if found else [])
        symbol = params.get("symbol")
        rows = [order_json(trading, account, o) for o in account.open_orders(symbol or None)]
        return _listing(sorted(rows, key=lambda r: int(r["createdTime"]), reverse=True)[: int(params.get("limit", 20))])


def history(request, trading: Trading, account: Account, params: dict) -> dict:
    with trading.lock:
        trading.sync()
        if params.get("orderId") or params.get("orderLinkId"):
            found = _find(trading, account, params)
            return _listing([order_json(trading, account, *found)] if found else [])
        limit = int(params.get("limit", 20))
        if not 1 <= limit <= 50:
            raise BybitError(10001, "params error: limit must be in [1, 50]")
        # newest first; nextPageCursor continues below the last order id of the page
        done = [
            (o, r)
            for o, r in reversed(_all_orders(trading, account))
            if not o.open and (not params.get("symbol") or o.symbol == params["symbol"])
        ]
        if params.get("cursor"):
            done = [(o, r) for o, r in done if o.order_id < int(params["cursor"])]
        page = done[:limit]
        cursor = str(page[-1][0].order_id) if len(done) > limit else ""
        return {**_listing([order_json(trading, account, o, r) for o, r in page]), "nextPageCursor": cursor}


def executions(request, trading: Trading, account: Account, params: dict) -> dict:
    with trading.lock:
        trading.sync()
        orders = {o.order_id: o for o in account.orders.values()}
        rows = []
        for t in account.trades:
            if params.get("symbol") and t.symbol != params["symbol"]:
                continue
            if params.get("orderId") and str(t.order_id) != str(params["orderId"]):
                continue
            order = orders.get(t.order_id)
            rows.append(
                {
                    "symbol": t.symbol,
                    "orderType": order.type.capitalize() if order else "Limit",
                    "underlyingPrice": "",
                    "orderLinkId": order.client_id if order else "",
                    "side": t.side.capitalize(),
                    "indexPrice": "",
                    "orderId": str(t.order_id),
                    "stopOrderType": "UNKNOWN",
                    "leavesQty": fmt(order.remaining if order else 0.0),
                    "execTime": str(t.time),
                    "feeCurrency": "",
                    "isMaker": t.maker,
                    "execFee": fmt(t.commission),
                    "feeRate": fmt(trading.maker_fee if t.maker else trading.taker_fee),
                    "execId": str(t.trade_id),
                    "tradeIv": "",
                    "blockTradeId": "",
                    "markPrice": fmt(t.price),
                    "execPrice": fmt(t.price),
                    "markIv": "",
                    "orderQty": fmt(order.qty if order else t.qty),
                    "orderPrice": fmt(order.price if order else t.price),
                    "execValue": fmt(t.quote_qty),
                    "execType": "Trade",
                    "execQty": fmt(t.qty),
                    "closedSize": "",
                    "seq": t.trade_id,
                }
            )
        rows.reverse()  # newest first
        return _listing(rows[: int(params.get("limit", 50))])


def _position_json(trading: Trading, account: Account, symbol: str) -> dict:
    pos = account.position(symbol)
    mark = trading.price(symbol)
    size = abs(pos.amt)
    lev = account.lev(symbol)
    value = size * pos.entry
    upnl = pos.amt * (mark - pos.entry) if pos.amt else 0.0
    brackets = book_of(trading).risk_limits
    mm_value = mm.maintenance_margin(size * mark, brackets) if pos.amt else 0.0
    liq = trading.liquidation_price(account, symbol) if pos.amt else 0.0
    return {
        "positionIdx": 0,
        "riskId": 1,
        "riskLimitValue": fmt(brackets[0].notional_cap),
        "symbol": symbol,
        "side": "" if not pos.amt else ("Buy" if pos.amt > 0 else "Sell"),
        "size": fmt(size),
        "avgPrice": fmt(pos.entry),
        "positionValue": fmt(value),
        "tradeMode": 1 if account.isolated(symbol) else 0,
        "positionStatus": "Normal",
        "autoAddMargin": 0,
        "adlRankIndicator": 2 if pos.amt else 0,
        "leverage": str(lev),
        "positionBalance": fmt(pos.isolated_wallet if account.isolated(symbol) else value / lev),
        "markPrice": fmt(mark),
        "liqPrice": fmt(liq) if liq else "",
        "bustPrice": "",
        "positionMM": fmt(mm_value),
        "positionIM": fmt(value / lev),
        "tpslMode": "Full",
        "takeProfit": "",
        "stopLoss": "",
        "trailingStop": "",
        "unrealisedPnl": fmt(upnl),
        "curRealisedPnl": "0",
        "cumRealisedPnl": fmt(sum(t.realized_pnl - t.commission for t in account.trades if t.symbol == symbol)),
        "seq": len(account.trades),
        "isReduceOnly": False,
        "mmrSysUpdatedTime": "",
        "leverageSysUpdatedTime": "",
        "createdTime": str(pos.update_time),
        "updatedTime": str(pos.update_time),
    }


def positions(request, trading: Trading, account: Account, params: dict) -> dict:
    with trading.lock:
        trading.sync()
        symbols = [params["symbol"]] if params.get("symbol") else [s for f, s in trading.state.markets if f == trading.family]
        for symbol in symbols:
            trading.market(symbol)
        return _listing([_position_json(trading, account, s) for s in symbols])


def wallet(request, trading: Trading, account: Account, params: dict) -> dict:
    if params.get("accountType", "UNIFIED") != "UNIFIED":
        raise BybitError(10001, "accountType only support UNIFIED")
    with trading.lock:
        trading.sync()
        upnl = pos_im = pos_mm = 0.0
        for symbol in [s for f, s in trading.state.markets if f == trading.family]:
            p = _position_json(trading, account, symbol)
            upnl += float(p["unrealisedPnl"])
            pos_im += float(p["positionIM"]) if account.position(symbol).amt else 0.0
            pos_mm += float(p["positionMM"])
        now = trading.state.clock.now_ms()
        order_im = sum(trading._order_margin(account, o, now) for o in account.open_orders())
        equity = account.wallet + upnl
        available = trading.available(account, now)
        coin = {
            "availableToBorrow": "",
            "bonus": "0",
            "accruedInterest": "0",
            "availableToWithdraw": "",
            "totalOrderIM": fmt(order_im),
            "equity": fmt(equity),
            "totalPositionMM": fmt(pos_mm),
            "usdValue": fmt(equity),
            "unrealisedPnl": fmt(upnl),
            "collateralSwitch": True,
            "spotHedgingQty": "0",
            "borrowAmount": "0",
            "totalPositionIM": fmt(pos_im),
            "walletBalance": fmt(account.wallet),
            "cumRealisedPnl": fmt(sum(t.realized_pnl - t.commission for t in account.trades)),
            "locked": "0",
            "marginCollateral": True,
            "coin": "USDT",
        }
        return {
            "list": [
                {
                    "totalEquity": fmt(equity),
                    "accountIMRate": fmt((pos_im + order_im) / equity if equity > 0 else 0.0),
                    "totalMarginBalance": fmt(equity),
                    "totalInitialMargin": fmt(pos_im + order_im),
                    "accountType": "UNIFIED",
                    "totalAvailableBalance": fmt(available),
                    "accountMMRate": fmt(pos_mm / equity if equity > 0 else 0.0),
                    "totalPerpUPL": fmt(upnl),
                    "totalWalletBalance": fmt(account.wallet),
                    "accountLTV": "0",
                    "totalMaintenanceMargin": fmt(pos_mm),
                    "coin": [coin],
                }
            ]
        }


def set_leverage(request, trading: Trading, account: Account, params: dict) -> dict:
    symbol = params.get("symbol", "")
    try:
        buy, sell = float(params.get("buyLeverage", "")), float(params.get("sellLeverage", ""))
    except ValueError:
        raise BybitError(10001, "params error: buyLeverage/sellLeverage invalid") from None
    if buy != sell:
        raise BybitError(10001, "params error: buyLeverage must equal sellLeverage in one-way mode")
    if buy != int(buy) or not 1 <= buy <= book_of(trading).max_leverage:
        raise BybitError(
            10001, f"params error: leverage {buy:g} is out of range [1, {book_of(trading).max_leverage}] (whole numbers served here)"
        )
    with trading.lock:
        trading.market(symbol)
        if account.lev(symbol) == int(buy):
            raise BybitError(110043, "Set leverage not modified")
        trading.set_leverage(account.api_key, symbol, int(buy))
    return {}


def _set_mode(trading: Trading, account: Account, symbols: list[str], isolated: bool) -> None:
    with trading.lock:
        if all(account.isolated(s) == isolated for s in symbols):
            raise BybitError(110026, "Cross/isolated margin mode is not modified")
        for symbol in symbols:
            if account.isolated(symbol) != isolated:
                trading.set_margin_type(account.api_key, symbol, "ISOLATED" if isolated else "CROSSED")


def set_margin_mode(request, trading: Trading, account: Account, params: dict) -> dict:
    mode = params.get("setMarginMode", "")
    if mode not in ("ISOLATED_MARGIN", "REGULAR_MARGIN"):
        raise BybitError(10001, f"params error: setMarginMode {mode or '(empty)'} is not served (ISOLATED_MARGIN, REGULAR_MARGIN)")
    _set_mode(trading, account, [s for f, s in trading.state.markets if f == trading.family], mode == "ISOLATED_MARGIN")
    return {"reasons": []}


def switch_isolated(request, trading: Trading, account: Account, params: dict) -> dict:
    symbol = params.get("symbol", "")
    trading.market(symbol)
    _set_mode(trading, account, [symbol], int(params.get("tradeMode", 0)) == 1)
    return {}


def add_margin(request, trading: Trading, account: Account, params: dict) -> dict:
    """``POST /v5/position/add-margin``: ``margin`` > 0 adds isolated margin, < 0 takes it out."""
    symbol = params.get("symbol", "")
    try:
        amount = float(params.get("margin", ""))
    except ValueError:
        raise BybitError(10001, "params error: margin invalid") from None
    if not amount:
        raise BybitError(10001, "params error: margin must not be 0")
    trading.position_margin(account.api_key, symbol, abs(amount), 1 if amount > 0 else 2)
    with trading.lock:
        return _position_json(trading, account, symbol)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v5/user/query-api", _route(query_api)),
        web.get("/v5/account/info", _route(account_info)),
        web.get("/v5/asset/coin/query-info", _route(coin_info)),
        web.post("/v5/order/create", _route(create_order)),
        web.post("/v5/order/cancel", _route(cancel_order)),
        web.get("/v5/order/realtime", _route(realtime)),
        web.get("/v5/order/history", _route(history)),
        web.get("/v5/execution/list", _route(executions)),
        web.get("/v5/position/list", _route(positions)),
        web.get("/v5/account/wallet-balance", _route(wallet)),
        web.post("/v5/position/set-leverage", _route(set_leverage)),
        web.post("/v5/account/set-margin-mode", _route(set_margin_mode)),
        web.post("/v5/position/switch-isolated", _route(switch_isolated)),
        web.post("/v5/position/add-margin", _route(add_margin)),
    ]

"""The live broker in hedge mode (``broker.position_mode=hedge``) against the local Binance USD-M
through the real ccxt.pro client: it switches the account on start (and refuses clearly when the
account cannot switch), sends ``positionSide``, mirrors and reconciles each side, and a restarted
bot starts from both sides of its journal."""

from __future__ import annotations

import pytest
from test_live_broker import START_MS, exchange, exchange_orders, run, settled  # noqa: F401 - fixtures

from btc_quant.plugins.exchanges.journal import Journal
from btc_quant.sdk import ExchangeError, Order, OrderStatus, PositionSide, Side

KEY = "local-test-key"
LONG, SHORT = PositionSide.LONG, PositionSide.SHORT


def market(broker, cid: str, side: Side, qty: float, position_side: PositionSide, **kw) -> Order:
    order = Order.create(broker.instrument, cid, side, qty, ts_ms=START_MS, position_side=position_side, **kw)
    broker.submit(order)
    return order


def test_hedge_mode_is_set_on_start_and_both_sides_are_mirrored_and_reconciled(exchange, tmp_path, plugins):  # noqa: F811
    async def body(broker, server):
        account = server.state.trading.account(KEY)
        assert account.dual_side is True  # set by connect (ccxt set_position_mode(True))
        market(broker, "t-1-l", Side.BUY, 0.004, LONG)
        market(broker, "t-1-s", Side.SELL, 0.003, SHORT)
        await settled(broker)
        assert [o.position_side for o in account.orders.values()] == ["LONG", "SHORT"]
        assert (broker.position(LONG).quantity, broker.position(SHORT).quantity) == (0.004, -0.003)
        summary = await broker.reconcile()
        assert summary["position"] == {"LONG": 0.004, "SHORT": -0.003}
        assert broker.stats["disagreements"] == 0
        # a manual close of part of the short, outside the bot: reconciliation takes the exchange's side
        server.state.trading.place(
            KEY, {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001", "positionSide": "SHORT"}
        )
        await broker.reconcile()
        assert broker.position(SHORT).quantity == pytest.approx(-0.002) and broker.position(LONG).quantity == 0.004
        # SELL LONG closes (no reduceOnly in hedge mode); a reduce-only order is refused before it is sent
        market(broker, "t-2-l", Side.SELL, 0.004, LONG)
        refused = market(broker, "t-3-s", Side.BUY, 0.002, SHORT, reduce_only=True)
        await settled(broker)
        assert broker.position(LONG).is_flat
        assert not exchange_orders(server, refused.client_id)
        rejected = [e.order for e in broker.events() if getattr(e, "order", None) and e.order.client_id == refused.client_id]
        assert rejected[-1].status is OrderStatus.REJECTED and "-1106" in rejected[-1].reason
        return True

    assert run(exchange, tmp_path, plugins, body, position_mode="hedge")

    async def later_life(broker, server):  # a restarted bot: both sides from its journal and the offset found
        assert broker.position(LONG).is_flat and broker.position(SHORT).quantity == pytest.approx(-0.002)
        await broker.reconcile()
        assert broker.stats["disagreements"] == 0

    run(exchange, tmp_path, plugins, later_life, position_mode="hedge")
    journal = Journal(tmp_path / "t.db")
    try:
        orders = {o.client_id: o.position_side for o in journal.orders()}
        assert orders["t-1-l"] is LONG and orders["t-1-s"] is SHORT
        notes = [m for _, kind, m in journal.notes(100) if kind == "position"]
        assert notes == ["mirror had SHORT -0.003, exchange has -0.002: exchange wins"]
    finally:
        journal.close()


def test_an_account_that_cannot_switch_is_refused_with_one_line(exchange, tmp_path, plugins):  # noqa: F811
    trading = exchange.state.trading
    trading.place(KEY, {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.003"})  # one-way position

    async def body(broker, server):
        raise AssertionError("connect should have refused")

    with pytest.raises(ExchangeError, match=r"position_mode=hedge: .* holds a position .* cannot switch"):
        run(exchange, tmp_path, plugins, body, position_mode="hedge")
    assert trading.account(KEY).dual_side is False


def test_an_account_already_in_hedge_mode_is_fine(exchange, tmp_path, plugins):  # noqa: F811
    exchange.state.trading.set_position_mode(KEY, True)  # Binance answers -4059 to the bot's switch: success

    async def body(broker, server):
        market(broker, "t-1-s", Side.SELL, 0.003, SHORT)
        await settled(broker)
        return broker.position(SHORT).quantity

    assert run(exchange, tmp_path, plugins, body, position_mode="hedge") == pytest.approx(-0.003)


def test_isolated_margin_goes_to_the_side_named(exchange, tmp_path, plugins):  # noqa: F811
    async def body(broker, server):
        market(broker, "t-1-s", Side.SELL, 0.003, SHORT)
        await settled(broker)
        short = server.state.trading.account(KEY).position("BTCUSDT", "SHORT")
        before = short.isolated_wallet
        broker.adjust_margin(10, position_side=SHORT)
        await settled(broker)
        return short.isolated_wallet - before

    assert run(exchange, tmp_path, plugins, body, position_mode="hedge", margin_mode="isolated") == pytest.approx(10)


def test_hedge_mode_on_bybit_is_refused_with_one_line_before_trading(plugins):
    """Bybit's hedge mode (positionIdx 1/2, switch-mode) is not built: asking for it stops the run
    at start with a line naming the setting, and no order is sent."""
    from test_live_bybit import LIVE, SMA
    from test_live_bybit import START_MS as BYBIT_START

    from btc_quant.core.config import load_run_config
    from btc_quant.plugins.exchanges.driver import LiveRun
    from btc_quant.testing.exchange import ExchangeServer
    from btc_quant.testing.exchange.dialects.bybit import bybit_state

    with ExchangeServer(bybit_state(clock_start_ms=BYBIT_START, speed=0)) as server:
        cfg = load_run_config([*SMA, *LIVE, "exchange=bybit", "symbol=BTC/USDT:USDT", "broker.position_mode=hedge"], plugins.registry)
        run = LiveRun(cfg, plugins, url=server.url, testnet=True, max_seconds=30, warmup=20)
        with pytest.raises(ExchangeError, match=r"broker.position_mode=hedge: .*binanceusdm only, not bybit"):
            run.run()
        assert "/v5/order/create" not in {p for _, p, _, _ in server.state.requests}


def test_margin_of_each_side_is_its_positionrisk_row(exchange, tmp_path, plugins):  # noqa: F811
    """``margin(LONG|SHORT)`` in hedge mode: that side's row of Binance positionRisk (isolated
    margin, liquidation price), a top-up under way counted on the side it goes to only."""

    async def body(broker, server):
        market(broker, "t-1-l", Side.BUY, 0.004, LONG)
        market(broker, "t-1-s", Side.SELL, 0.003, SHORT)
        await settled(broker)
        await broker.reconcile()
        long_before, short_before = broker.margin(LONG), broker.margin(SHORT)
        broker.adjust_margin(10, position_side=SHORT)
        pending = broker.margin(LONG).position_margin, broker.margin(SHORT).position_margin
        await settled(broker)
        await broker.reconcile()
        account = server.state.trading.account(KEY)
        truth = {side: account.position("BTCUSDT", side) for side in ("LONG", "SHORT")}
        lines = {side: server.state.trading.liquidation_price(account, "BTCUSDT", side) for side in ("LONG", "SHORT")}
        return long_before, short_before, pending, broker.margin(LONG), broker.margin(SHORT), truth, lines

    long_before, short_before, pending, long, short, truth, lines = run(
        exchange, tmp_path, plugins, body, position_mode="hedge", margin_mode="isolated"
    )
    assert pending == (pytest.approx(long_before.position_margin), pytest.approx(short_before.position_margin + 10))
    assert long.position_margin == pytest.approx(truth["LONG"].isolated_wallet, rel=1e-6)
    assert short.position_margin == pytest.approx(truth["SHORT"].isolated_wallet, rel=1e-6)
    assert short.position_margin == pytest.approx(short_before.position_margin + 10, rel=1e-6)
    assert long.liquidation_price == pytest.approx(lines["LONG"], rel=1e-6)
    assert short.liquidation_price == pytest.approx(lines["SHORT"], rel=1e-6)
    assert long.liquidation_price < short.liquidation_price and short.liquidation_price > short_before.liquidation_price

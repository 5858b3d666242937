import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from btc_quant.core.errors import OrderError
from btc_quant.core.instruments import instrument_for
from btc_quant.core.model import Account, Fill, Order, OrderStatus, Position, PositionSide, Side

PERP = instrument_for("binanceusdm", "BTC/USDT:USDT")


def fill(trade_id, side, price, qty, fee=0.0, symbol="BTC/USDT:USDT"):
    return Fill(trade_id, "c1", symbol, Side(side), price, qty, fee, 0)


@pytest.mark.parametrize(
    "qty, price, message",
    [
        (0.0, 40000.0, "quantity must be positive"),
        (-0.01, 40000.0, "quantity must be positive"),
        (math.nan, 40000.0, "quantity must be a finite number"),
        (0.01, math.inf, "price must be a finite number"),
        (0.01, -5.0, "price must be positive"),
        (0.01, 40000.05, "not a multiple of the tick size 0.1"),
        (0.0105, 40000.0, "not a multiple of the lot size 0.001"),
        (0.001, 40000.0, "below the minimum 100 of BTC/USDT:USDT"),
    ],
)
def test_order_rejects_bad_values_with_a_message_naming_them(qty, price, message):
    with pytest.raises(OrderError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Order.create(PERP, "c1", "buy", qty, price)


def test_order_on_grid_is_accepted_and_keeps_values():
    order = Order.create(PERP, "c1", "buy", 0.012, 40123.4, post_only=True)
    assert (order.quantity, order.price, order.post_only, order.status) == (0.012, 40123.4, True, OrderStatus.PENDING)


def test_instrument_rounding_goes_the_safe_way():
    assert PERP.round_price(40000.06, "down") == 40000.0
    assert PERP.round_price(40000.01, "up") == 40000.1
    assert PERP.round_price(40000.06) == 40000.1
    assert PERP.round_qty(0.0129) == 0.012


def test_order_status_follows_the_transition_table():
    order = Order.create(PERP, "c1", "buy", 0.01, 40000.0)
    accepted = order.transition(OrderStatus.NEW)
    filled = accepted.transition(OrderStatus.FILLED, filled_qty=0.01)
    assert filled.status is OrderStatus.FILLED and order.status is OrderStatus.PENDING
    with pytest.raises(OrderError, match="cannot go from filled to canceled"):
        filled.transition(OrderStatus.CANCELED)
    with pytest.raises(OrderError, match="cannot go from new to rejected"):
        accepted.transition(OrderStatus.REJECTED)


def test_position_realises_pnl_on_close_and_flip():
    pos = Position("BTC/USDT:USDT")
    assert pos.apply(fill("t1", "buy", 100.0, 2.0)) == 0.0
    assert pos.apply(fill("t2", "buy", 110.0, 2.0)) == 0.0
    assert pos.entry_price == pytest.approx(105.0)
    assert pos.apply(fill("t3", "sell", 120.0, 1.0)) == pytest.approx(15.0)
    # sell 5 from +3: closes 3 at 100 (loss 3 * 5) and opens a short of 2 at 100
    assert pos.apply(fill("t4", "sell", 100.0, 5.0)) == pytest.approx(-15.0)
    assert pos.quantity == pytest.approx(-2.0) and pos.entry_price == 100.0
    assert pos.realized_pnl == pytest.approx(0.0)


def test_position_refuses_the_same_trade_twice():
    pos = Position("BTC/USDT:USDT")
    pos.apply(fill("t1", "buy", 100.0, 1.0))
    with pytest.raises(OrderError, match="t1 was already applied"):
        pos.apply(fill("t1", "buy", 100.0, 1.0))
    assert pos.quantity == 1.0


@given(
    st.lists(
        st.tuples(st.sampled_from(["buy", "sell"]), st.floats(10, 1000), st.floats(0.001, 5), st.floats(0, 1)),
        min_size=1,
        max_size=40,
    ),
    st.floats(10, 1000),
)
def test_account_equity_equals_cash_flow_identity(trades, mark):
    """wallet + unrealised == initial - sum(signed qty * price) - fees + qty * mark, for any fills."""
    account = Account(10_000.0)
    cash = 10_000.0
    qty = 0.0
    for i, (side, price, size, fee) in enumerate(trades):
        f = fill(f"t{i}", side, price, size, fee)
        account.apply(f)
        cash -= f.signed_qty * price + fee
        qty += f.signed_qty
    equity = account.equity({"BTC/USDT:USDT": mark})
    assert equity == pytest.approx(cash + qty * mark, rel=1e-9, abs=1e-6)


def test_order_built_without_dataclass_init_equals_the_validated_one():
    """Order.create and transition build orders directly (validated once); the result must be the
    order the dataclass constructor and dataclasses.replace would make, field for field."""
    import dataclasses

    from btc_quant.core import model

    assert [f.name for f in dataclasses.fields(Order)] == list(model._order.__code__.co_varnames[: model._order.__code__.co_argcount])
    inst = instrument_for("binanceusdm", "BTC/USDT:USDT")
    made = Order.create(inst, "c-1", "buy", 0.01, 40000.0, post_only=True, ts_ms=5, tag="b1")
    assert made == Order(
        client_id="c-1",
        symbol=inst.symbol,
        side=Side.BUY,
        type=made.type,
        quantity=0.01,
        price=40000.0,
        post_only=True,
        created_ms=5,
        updated_ms=5,
        tag="b1",
    )
    filled = made.transition(OrderStatus.FILLED, filled_qty=0.01, avg_fill_price=40000.0, updated_ms=9, reason="r")
    assert filled == dataclasses.replace(made, status=OrderStatus.FILLED, filled_qty=0.01, avg_fill_price=40000.0, updated_ms=9, reason="r")
    short = Order.create(inst, "c-3", "sell", 0.01, 40000.0, position_side="SHORT")
    assert short.position_side is PositionSide.SHORT and short.transition(OrderStatus.NEW).position_side is PositionSide.SHORT
    with pytest.raises(OrderError, match="quantity"):  # a change of a validated field is validated
        made.transition(OrderStatus.NEW, quantity=-1.0)
    with pytest.raises(OrderError, match="1-36"):
        Order.create(inst, "x" * 37, "buy", 0.01, 40000.0)
    with pytest.raises(OrderError, match="post_only"):
        Order.create(inst, "c-2", "buy", 0.01, post_only=True)


def test_hedge_mode_positions_are_kept_per_side_and_fills_go_to_their_side():
    account = Account(1_000.0)
    fills = [
        Fill("t1", "c1", "BTC/USDT:USDT", Side.BUY, 100.0, 1.0, 0.0, 1, position_side=PositionSide.LONG),
        Fill("t2", "c2", "BTC/USDT:USDT", Side.SELL, 110.0, 2.0, 0.0, 2, position_side=PositionSide.SHORT),
        Fill("t3", "c3", "BTC/USDT:USDT", Side.SELL, 120.0, 1.0, 0.0, 3, position_side=PositionSide.LONG),
    ]
    for fill in fills:
        account.apply(fill)
    long, short = account.position("BTC/USDT:USDT", "LONG"), account.position("BTC/USDT:USDT", PositionSide.SHORT)
    assert (long.quantity, long.realized_pnl) == (0.0, 20.0)  # SELL LONG closed the long, did not open a short
    assert (short.quantity, short.entry_price) == (-2.0, 110.0)
    assert account.position("BTC/USDT:USDT").is_flat  # the one-way position is another key
    assert account.wallet_balance == 1_020.0 and account.equity({"BTC/USDT:USDT": 100.0}) == 1_040.0

"""The stable surface for strategy and plugin authors: import from here, not from ``core``.

from btc_quant.sdk import Strategy, StrategyConfig, Field, hookimpl

class Breakout(Strategy):
    class Config(StrategyConfig):
        period: int = Field(20, gt=1, description="channel length in bars")

    def on_bar(self, ctx, bar):
        ...

@hookimpl
def quant_register_strategies(register):
    register("breakout", Breakout)
"""

from pydantic import Field

from ..core.broker import Broker, BrokerConfig, BrokerEvent, FillEvent, MarginState, OrderEvent, SimulatedBroker, Step
from ..core.config import Duration, QuantModel, Timestamp, parse_duration, registered
from ..core.data import BarArrays, timeframe_ms
from ..core.engine import Context
from ..core.errors import (
    ConfigError,
    DataError,
    ExchangeError,
    OrderError,
    PluginError,
    QuantError,
    RiskError,
    StoreError,
    StrategyError,
)
from ..core.fills import PROB, QUEUE, THROUGH, TOUCH, FillModel
from ..core.hookspecs import hookimpl
from ..core.model import (
    Account,
    Bar,
    Fill,
    Instrument,
    MarginBracket,
    MarketKind,
    Order,
    OrderStatus,
    OrderType,
    Position,
    PositionSide,
    Side,
)
from ..core.report import ReportSection
from ..core.results import RunResult
from ..core.risk import KillSwitch, RiskCheck, RiskCheckConfig, RiskState
from ..core.runtime import Runtime
from ..core.store import Store, StoreConfig
from ..core.strategy import CompiledDecisions, Strategy, StrategyConfig
from .ordersync import BrokerVenue, OrderSync, SyncReport, VirtualOrder
from .pairs import OrderPair, PairGrid
from .signals import SignalStrategy

__all__ = [
    "Account",
    "Bar",
    "BarArrays",
    "Broker",
    "BrokerVenue",
    "OrderSync",
    "SyncReport",
    "VirtualOrder",
    "BrokerConfig",
    "BrokerEvent",
    "ConfigError",
    "Context",
    "DataError",
    "Duration",
    "ExchangeError",
    "Field",
    "Fill",
    "FillEvent",
    "FillModel",
    "Instrument",
    "KillSwitch",
    "MarginBracket",
    "MarginState",
    "MarketKind",
    "Order",
    "OrderError",
    "OrderPair",
    "PairGrid",
    "OrderEvent",
    "OrderStatus",
    "OrderType",
    "PluginError",
    "Position",
    "PositionSide",
    "QuantError",
    "QuantModel",
    "RiskCheck",
    "RiskCheckConfig",
    "RiskError",
    "ReportSection",
    "RiskState",
    "RunResult",
    "Runtime",
    "Side",
    "SignalStrategy",
    "SimulatedBroker",
    "Step",
    "Store",
    "StoreConfig",
    "StoreError",
    "CompiledDecisions",
    "Strategy",
    "StrategyConfig",
    "StrategyError",
    "PROB",
    "QUEUE",
    "THROUGH",
    "TOUCH",
    "Timestamp",
    "hookimpl",
    "parse_duration",
    "registered",
    "timeframe_ms",
]

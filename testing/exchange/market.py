"""The local exchange's state, kept apart from the web app: a clock, markets with real bars and
funding rates, and the answers Binance's market-data endpoints give.

The exchange replays recorded 1-minute bars. Its clock (:class:`Clock`) is either frozen (a
historical exchange: every bar up to ``now`` is closed) or runs at ``speed`` times real time from a
start inside the data (a live exchange for collectors and, later, order matching). Within a minute
the price follows the bar's recorded values along a fixed path, open -> nearer extreme -> other
extreme -> close, each leg a third of the minute (the same intra-bar path the backtester assumes),
so the candle still forming at ``now`` is the real bar as far as it has got, never invented.
Higher intervals are aggregated from the 1-minute bars the way Binance builds them (epoch-aligned
buckets; weeks open on Monday 00:00 UTC).

A minute with no recorded bar is a minute the exchange has no candle for (Binance's own
maintenance holes are in the data): klines skip it, exactly as Binance does.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from btc_quant.core.data import SAMPLE, SAMPLE_MARK, BarArrays, read_bars_file

MINUTE_MS = 60_000
#: Kline intervals served (Binance names), in ms. ``1M`` (calendar month) is not served.
INTERVALS_MS = {
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
    "3d": 3 * 86_400_000,
    "1w": 7 * 86_400_000,
}
#: Binance weeks open on Monday 00:00 UTC; the Unix epoch was a Thursday, so week buckets are
#: shifted by four days (1970-01-05 was the first Monday).
WEEK_OFFSET_MS = 4 * 86_400_000


class BinanceError(Exception):
    """An error answer in Binance's shape: HTTP ``status`` with ``{"code": code, "msg": msg}``."""

    def __init__(self, code: int, msg: str, status: int = 400):
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


def bucket_start(ts_ms: np.ndarray | int, interval_ms: int):
    """Open time of the ``interval_ms`` bucket holding ``ts_ms`` (Binance alignment)."""
    offset = WEEK_OFFSET_MS if interval_ms == INTERVALS_MS["1w"] else 0
    return (np.asarray(ts_ms) - offset) // interval_ms * interval_ms + offset


class Clock:
    """Exchange time in ms: frozen at ``start_ms`` (``speed=0``) or running at ``speed`` x real time."""

    def __init__(self, start_ms: int, speed: float = 0.0):
        self._lock = threading.Lock()
        self.set(start_ms, speed)

    def set(self, start_ms: int, speed: float | None = None) -> None:
        with self._lock:
            self._start_ms = int(start_ms)
            self._t0 = time.monotonic()
            if speed is not None:
                self.speed = float(speed)

    def now_ms(self) -> int:
        with self._lock:
            return int(self._start_ms + (time.monotonic() - self._t0) * 1000.0 * self.speed)


@dataclass
class Market:
    """One listed market: its Binance id and filters, recorded 1m bars and funding rates."""

    symbol_id: str  # Binance id, e.g. BTCUSDT
    family: str  # "spot" (/api/v3) or "usdm" (/fapi/v1)
    base: str
    quote: str
    bars: BarArrays
    tick_size: float = 0.01
    lot_size: float = 0.00001
    min_notional: float = 5.0
    funding_ts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    funding_rate: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    #: recorded mark-price klines (USD-M; real Binance 1h klines) and their interval in ms
    mark: BarArrays | None = None
    mark_ms: int = 3_600_000

    # -- the replayed price path ----------------------------------------------------------------

    def _path(self, i: int) -> tuple[float, float, float, float]:
        o, h, lo, c = self.bars.open[i], self.bars.high[i], self.bars.low[i], self.bars.close[i]
        first, second = (h, lo) if h - o <= o - lo else (lo, h)
        return float(o), float(first), float(second), float(c)

    def partial_bar(self, i: int, now_ms: int) -> tuple[float, float, float, float, float]:
        """Bar ``i`` as far as it has got at ``now_ms``: (open, high, low, close, volume)."""
        frac = min(max((now_ms - int(self.bars.ts[i])) / MINUTE_MS, 0.0), 1.0)
        points = self._path(i)
        seen = [points[0]]
        for leg in range(3):
            lo_t, hi_t = leg / 3, (leg + 1) / 3
            if frac >= hi_t:
                seen.append(points[leg + 1])
            else:
                w = (frac - lo_t) * 3 if frac > lo_t else 0.0
                seen.append(points[leg] + (points[leg + 1] - points[leg]) * w)
                break
        return points[0], max(seen), min(seen), seen[-1], float(self.bars.volume[i]) * frac

    def price_at(self, now_ms: int) -> float | None:
        """Last traded price at ``now_ms`` on the replayed path (None before the first bar)."""
        i = int(np.searchsorted(self.bars.ts, now_ms, "right")) - 1
        if i < 0:
            return None
        if now_ms >= int(self.bars.ts[i]) + MINUTE_MS:
            return float(self.bars.close[i])
        return self.partial_bar(i, now_ms)[3]

    # -- market data answers ----------------------------------------------------------------------

    def klines(self, interval: str, now_ms: int, start_ms: int | None, end_ms: int | None, limit: int) -> list[list]:
        """Rows of Binance's klines answer: open time >= start, <= end, at most ``limit``, ascending.

        Without ``start`` the latest ``limit`` candles up to ``end`` (or now) are returned. The
        candle holding ``now_ms`` is included as it stands (not closed yet), as on Binance.
        """
        if interval not in INTERVALS_MS:
            raise BinanceError(-1120, "Invalid interval.")
        tf = INTERVALS_MS[interval]
        ts = self.bars.ts
        upper = now_ms if end_ms is None else min(now_ms, end_ms + tf - 1)
        lo = 0 if start_ms is None else int(np.searchsorted(ts, bucket_start(start_ms, tf), "left"))
        hi = int(np.searchsorted(ts, upper, "right"))
        if start_ms is None:
            # latest `limit` buckets: walk back far enough, then trim after aggregation
            lo = int(np.searchsorted(ts, bucket_start(upper, tf) - (limit + 1) * tf, "left"))
        if hi <= lo:
            return []
        idx = np.arange(lo, hi)
        opens = self.bars.open[idx].copy()
        highs = self.bars.high[idx].copy()
        lows = self.bars.low[idx].copy()
        closes = self.bars.close[idx].copy()
        vols = self.bars.volume[idx].copy()
        last = hi - 1
        forming = now_ms < int(ts[last]) + MINUTE_MS
        if forming:
            o, h, lw, c, v = self.partial_bar(last, now_ms)
            opens[-1], highs[-1], lows[-1], closes[-1], vols[-1] = o, h, lw, c, v
        keys = bucket_start(ts[idx], tf)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(keys)] - 1
        rows_ts = keys[starts]
        agg_open = opens[starts]
        agg_close = closes[ends]
        agg_high = np.maximum.reduceat(highs, starts)
        agg_low = np.minimum.reduceat(lows, starts)
        agg_vol = np.add.reduceat(vols, starts)
        keep = np.ones(len(rows_ts), bool)
        if start_ms is not None:
            keep &= rows_ts >= start_ms
        if end_ms is not None:
            keep &= rows_ts <= end_ms
        sel = np.flatnonzero(keep)
        sel = sel[:limit] if start_ms is not None else sel[-limit:]
        out = []
        for k in sel:
            t = int(rows_ts[k])
            out.append(
                [
                    t,
                    _num(agg_open[k]),
                    _num(agg_high[k]),
                    _num(agg_low[k]),
                    _num(agg_close[k]),
                    _num(agg_vol[k]),
                    t + tf - 1,
                    _num(agg_vol[k] * agg_close[k]),
                    0,
                    "0",
                    "0",
                    "0",
                ]
            )
        return out

    def mark_klines(self, interval: str, now_ms: int, start_ms: int | None, end_ms: int | None, limit: int) -> list[list]:
        """Rows of ``GET /fapi/v1/markPriceKlines``: the recorded mark klines, aggregated to
        ``interval`` in epoch-aligned buckets (open of the first, extremes, close of the last;
        volume "0", as Binance sends for mark klines). Only intervals that are whole multiples of the
        recorded ones are served (the data has no finer mark path; Binance serves 1m too); only mark
        klines that opened by ``now_ms`` count."""
        if interval not in INTERVALS_MS:
            raise BinanceError(-1120, "Invalid interval.")
        tf = INTERVALS_MS[interval]
        if self.mark is None or len(self.mark) == 0 or tf % self.mark_ms or interval == "1w":
            raise BinanceError(-1120, f"Invalid interval: this exchange records mark prices every {self.mark_ms // 60_000} min.")
        ts = self.mark.ts
        upper = now_ms if end_ms is None else min(now_ms, end_ms + tf - 1)
        hi = int(np.searchsorted(ts, upper, "right"))
        lo = 0 if start_ms is None else int(np.searchsorted(ts, bucket_start(start_ms, tf), "left"))
        if start_ms is None:
            lo = int(np.searchsorted(ts, bucket_start(upper, tf) - (limit + 1) * tf, "left"))
        if hi <= lo:
            return []
        keys = bucket_start(ts[lo:hi], tf)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(keys)] - 1
        rows_ts = keys[starts]
        o = self.mark.open[lo:hi][starts]
        c = self.mark.close[lo:hi][ends]
        h = np.maximum.reduceat(self.mark.high[lo:hi], starts)
        low = np.minimum.reduceat(self.mark.low[lo:hi], starts)
        keep = np.ones(len(rows_ts), bool)
        if start_ms is not None:
            keep &= rows_ts >= start_ms
        if end_ms is not None:
            keep &= rows_ts <= end_ms
        sel = np.flatnonzero(keep)
        sel = sel[:limit] if start_ms is not None else sel[-limit:]
        return [
            [int(rows_ts[k]), _num(o[k]), _num(h[k]), _num(low[k]), _num(c[k]), "0", int(rows_ts[k]) + tf - 1, "0", 0, "0", "0", "0"]
            for k in sel
        ]

    def funding(self, now_ms: int, start_ms: int | None, end_ms: int | None, limit: int) -> list[dict]:
        """Rows of ``GET /fapi/v1/fundingRate``: settled rates with start <= fundingTime <= end."""
        ts = self.funding_ts
        upper = now_ms if end_ms is None else min(now_ms, end_ms)
        hi = int(np.searchsorted(ts, upper, "right"))
        if start_ms is None:
            lo = max(0, hi - limit)
        else:
            lo = int(np.searchsorted(ts, start_ms, "left"))
            hi = min(hi, lo + limit)
        return [
            {"symbol": self.symbol_id, "fundingTime": int(ts[i]), "fundingRate": f"{self.funding_rate[i]:.8f}", "markPrice": ""}
            for i in range(lo, max(lo, hi))
        ]

    def symbol_info(self) -> dict:
        """This market's entry in ``exchangeInfo.symbols`` (the fields ccxt's parser reads)."""
        filters = [
            {"filterType": "PRICE_FILTER", "minPrice": _num(self.tick_size), "maxPrice": "4529764", "tickSize": _num(self.tick_size)},
            {"filterType": "LOT_SIZE", "minQty": _num(self.lot_size), "maxQty": "1000", "stepSize": _num(self.lot_size)},
            {"filterType": "MARKET_LOT_SIZE", "minQty": _num(self.lot_size), "maxQty": "120", "stepSize": _num(self.lot_size)},
        ]
        info = {
            "symbol": self.symbol_id,
            "status": "TRADING",
            "baseAsset": self.base,
            "quoteAsset": self.quote,
            "orderTypes": ["LIMIT", "MARKET"],
        }
        if self.family == "spot":
            filters.append({"filterType": "NOTIONAL", "minNotional": _num(self.min_notional), "applyMinToMarket": True})
            info.update(
                baseAssetPrecision=8,
                quotePrecision=8,
                quoteAssetPrecision=8,
                isSpotTradingAllowed=True,
                isMarginTradingAllowed=False,
                permissions=[],
                permissionSets=[["SPOT"]],
                orderTypes=["LIMIT", "LIMIT_MAKER", "MARKET"],
            )
        else:
            filters.append({"filterType": "MIN_NOTIONAL", "notional": _num(self.min_notional)})
            info.update(
                pair=self.symbol_id,
                contractType="PERPETUAL",
                deliveryDate=4133404800000,
                onboardDate=1569398400000,
                marginAsset=self.quote,
                pricePrecision=_decimals(self.tick_size),
                quantityPrecision=_decimals(self.lot_size),
                baseAssetPrecision=8,
                quotePrecision=8,
                underlyingType="COIN",
                underlyingSubType=[],
                maintMarginPercent="2.5000",
                requiredMarginPercent="5.0000",
                triggerProtect="0.0500",
                liquidationFee="0.012500",
                marketTakeBound="0.05",
                timeInForce=["GTC", "IOC", "FOK", "GTX"],
                orderTypes=["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"],
            )
        info["filters"] = filters
        return info


def _num(value: float) -> str:
    """Binance sends decimals as strings; ``repr`` keeps every digit a float64 holds."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _decimals(step: float) -> int:
    text = f"{step:.10f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


class ExchangeState:
    """Everything the local exchange knows: markets by (family, Binance id), the clock, faults, a log.

    The web app (:mod:`.server`) only translates HTTP and websocket messages into calls on this
    object, so a test can inspect or change the state directly (``state.clock.set(...)``).
    """

    def __init__(self, markets: list[Market], clock: Clock, faults=None):
        from .faults import FaultPlan

        self.markets = {(m.family, m.symbol_id): m for m in markets}
        self.clock = clock
        self.faults = faults if faults is not None else FaultPlan()
        #: (family, path, query, status) of every request, in arrival order
        self.requests: list[tuple[str, str, dict, int]] = []
        #: answered requests per (HTTP method, path): tells a cancel (DELETE) from a query (GET)
        self.calls: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        from .trading import Trading

        #: the USD-M trading book (accounts, orders, positions); see :mod:`.trading`
        self.trading = Trading(self)
        #: trade tapes served by ``aggTrades`` per (family, Binance id); see :mod:`.tapes`
        self.tapes: dict = {}
        self._agg: dict = {}

    def agg_tape(self, family: str, symbol_id: str):
        """The market's tape as Binance's aggregate trades (empty if none is attached)."""
        from btc_quant.core.trades import TradeArrays

        from .tapes import aggregate

        tape = self.tapes.get((family, symbol_id))
        if tape is None:
            return TradeArrays.empty()
        cached = self._agg.get((family, symbol_id))
        if cached is None or cached[0] is not tape:
            cached = self._agg[(family, symbol_id)] = (tape, aggregate(tape))
        return cached[1]

    def market(self, family: str, symbol_id: str | None) -> Market:
        market = self.markets.get((family, symbol_id or ""))
        if market is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return market

    def families(self) -> set[str]:
        return {family for family, _ in self.markets}

    def exchange_info(self, family: str) -> dict:
        now = self.clock.now_ms()
        limits = [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000 if family == "spot" else 2400},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100 if family == "spot" else 300},
        ]
        symbols = [m.symbol_info() for (fam, _), m in sorted(self.markets.items()) if fam == family]
        out = {"timezone": "UTC", "serverTime": now, "rateLimits": limits, "exchangeFilters": [], "symbols": symbols}
        if family == "usdm":
            out["assets"] = [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}]
        return out

    def log(self, family: str, path: str, query: dict, status: int, method: str = "GET") -> None:
        with self.lock:
            self.requests.append((family, path, dict(query), status))
            self.calls[(method, path)] += 1

    def count(self, path_suffix: str, status: int | None = None) -> int:
        """How many requests went to a path ending in ``path_suffix`` (with ``status`` if given)."""
        with self.lock:
            return sum(1 for _, p, _, s in self.requests if p.endswith(path_suffix) and (status is None or s == status))

    @property
    def end_ms(self) -> int:
        """Open time of the last recorded 1m bar across markets, plus one minute."""
        return max(int(m.bars.ts[-1]) for m in self.markets.values() if len(m.bars)) + MINUTE_MS


def _data_file(name: str) -> Path:
    return Path(str(resources.files("btc_quant.testing.exchange").joinpath("data", name)))


#: Real data served when no files are given (see ``data/README.md``).
DEFAULT_SPOT_FILE = _data_file("binance_btcusdt_1m_2021-04-19_21.parquet")
DEFAULT_FUNDING_FILE = _data_file("binance_btcusdt_funding.csv")


def read_funding_file(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """``ts``/``rate`` columns (or Binance's ``fundingTime``/``fundingRate``) from CSV or parquet."""
    path = Path(path)
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    frame = frame.rename(columns={"fundingTime": "ts", "fundingRate": "rate"})
    frame = frame.sort_values("ts")
    return frame["ts"].to_numpy(np.int64), frame["rate"].to_numpy(np.float64)


def binance_state(
    *,
    spot_file: Path | str | None = DEFAULT_SPOT_FILE,
    usdm_file: Path | str | None = None,
    funding_file: Path | str | None = DEFAULT_FUNDING_FILE,
    mark_file: Path | str | None = SAMPLE_MARK.path,
    clock_start_ms: int | None = None,
    speed: float = 0.0,
    faults=None,
    usdt: float = 10_000.0,
) -> ExchangeState:
    """A Binance with spot BTCUSDT and USD-M BTCUSDT (perpetual) serving real recorded data.

    Defaults: spot bars from ``data/`` here, perpetual bars from the package's bundled sample
    (January 2022), real funding rates and real Binance 1h mark-price klines for it. The clock defaults to one minute after the last
    bar, frozen: a historical exchange where every bar is closed. One trading account exists:
    API key ``local-test-key``, secret ``local-test-secret`` (:mod:`.trading`), ``usdt`` in its
    USD-M wallet; add more with ``state.trading.add_account(...)``.
    """
    markets = []
    if spot_file is not None:
        markets.append(Market("BTCUSDT", "spot", "BTC", "USDT", read_bars_file(spot_file), 0.01, 0.00001, 5.0))
    perp = Market("BTCUSDT", "usdm", "BTC", "USDT", read_bars_file(usdm_file or SAMPLE.path), 0.1, 0.001, 100.0)
    if mark_file is not None:
        perp.mark = read_bars_file(mark_file)
        perp.mark_ms = int(np.diff(perp.mark.ts).min()) if len(perp.mark) > 1 else 3_600_000
    if funding_file is not None:
        perp.funding_ts, perp.funding_rate = read_funding_file(funding_file)
    markets.append(perp)
    state = ExchangeState(markets, Clock(0), faults)
    state.clock.set(state.end_ms if clock_start_ms is None else clock_start_ms, speed)
    state.trading.add_account(usdt=usdt)
    return state

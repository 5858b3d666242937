"""Deterministic fault injection for the local exchange.

A :class:`FaultPlan` decides, event by event, whether to behave normally or inject a fault. Events
come on three channels, each with its own random stream so that one channel's traffic never shifts
another's faults:

* ``http``  - every eligible REST request (``random.Random(seed)``);
* ``ws``    - every message the exchange pushes on a websocket (kline or user-data stream);
* ``match`` - every fill and every accepted order of the trading book (:mod:`.trading`).

Two ways to drive it, usable together:

* **seeded rates**: ``FaultPlan(seed=7, rates={"rate_limit": 0.1, "server_error": 0.05})`` draws one
  number per eligible event; the same seed and the same sequence of events give the same faults,
  so a failing run can be replayed exactly;
* **scripts**: ``plan.script("klines", "rate_limit", "short_page")`` makes the next matching requests
  fail in exactly that order (scripts win over rates; ``plan.script("match", "partial_fill")``
  scripts the matching channel, ``plan.script("ws", "drop")`` the websocket one).

Kinds of fault (``KINDS``), by channel:

``rate_limit``       (http) HTTP 429 with ``Retry-After: retry_after_s`` and Binance's -1003 body.
                     A client that sends again within that window gets 429 again, and after
                     ``ban_after`` such requests HTTP 418 (IP banned for ``ban_s``), as Binance does.
``ip_ban``           (http) HTTP 418 at once, IP banned for ``ban_s`` seconds.
``server_error``     (http) HTTP 503 (``status`` configurable) with Binance's -1001 body; the
                     request was NOT executed.
``accepted_error``   (http) the request IS executed (an order is placed or cancelled), then the
                     answer is HTTP 503 with Binance's -1007 "execution status unknown" body.
``timeout``          (http) the answer is held ``timeout_s`` seconds (longer than the client waits)
                     before the request is executed; a client that gives up cancels it.
``accepted_timeout`` (http) the request IS executed, then the answer is held ``timeout_s``
                     seconds: the order exists although the client saw a timeout.
``slow``             (http) the answer is held ``slow_s`` seconds, then given normally.
``late_execution``   (http) the request reaches the book ``late_s`` seconds after it arrived (a
                     request delayed in the network), after the client gave up on it (its answer
                     is held ``timeout_s``) and typically after the client looked it up and was
                     told "no such order". Binance's rule decides then: the signed request is
                     executed only while the exchange clock is within ``timestamp + recvWindow``,
                     else refused -1021 (counted as ``late_refused``, executed ones as
                     ``late_executed``).
``recv_window``      (http) answered -1021 "Timestamp for this request is outside of the
                     recvWindow" at once; the request was NOT executed.
``clock_skew``       (http) the exchange clock the recvWindow check and the ``Date`` header use
                     jumps by ``skew_step_ms`` (either way, at most ``skew_max_ms`` off the real
                     clock) from this request on; this request is then handled normally.
``short_page``       (http) a list answer (klines, funding) is cut to its first half.
``empty_page``       (http) a list answer is empty.
``drop``             (ws) the connection is closed without a close frame.
``ws_delay``         (ws, user-data stream) the event is held ``ws_delay_s`` seconds; later events
                     overtake it (out-of-order delivery).
``silent``           (ws, user-data stream) the stream stops pushing without a word: the socket
                     stays open and answers pings, nothing more arrives on it.
``partial_fill``     (match) a fill takes only part (20-80%, at least one lot) of what the price
                     allowed; the rest stays open and fills when the price trades through again.
``user_cancel``      (match) an accepted order is cancelled "by the user" ``user_cancel_after_ms``
                     of exchange time later, unless it is done by then.

Behaviour of the book the client must never trigger, counted in :meth:`FaultPlan.counts` when it
happens: ``duplicate_client_id`` - an order accepted under the client id of an earlier order that
is no longer open (Binance refuses a duplicate only while the first is open, -4116).

Plans per account: ``state.trading.plans[api_key] = FaultPlan(seed=...)`` gives one account its
own seeded streams and counts (requests carrying that API key, its user-data stream, its
fills), so many seeded lives can share one exchange and each still replays from its seed.

By default faults apply only to the data endpoints (``klines``, ``fundingRate``) and websocket
pushes, so ``load_markets`` works; pass ``paths=None`` to make every request, push and fill
eligible, or list last path segments (``"order"``, ``"openOrders"``...) plus ``"ws"`` and
``"match"`` for the channels (``TRADING_PATHS`` lists the trading ones).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

HTTP_KINDS = (
    "rate_limit",
    "server_error",
    "timeout",
    "slow",
    "short_page",
    "empty_page",
    "accepted_timeout",
    "accepted_error",
    "ip_ban",
    "late_execution",
    "recv_window",
    "clock_skew",
)
WS_KINDS = ("drop", "ws_delay", "silent")
MATCH_KINDS = ("partial_fill", "user_cancel")
KINDS = HTTP_KINDS + WS_KINDS + MATCH_KINDS
CHANNELS = {"http": HTTP_KINDS, "ws": WS_KINDS, "match": MATCH_KINDS}
#: Last path segments of the USD-M trading endpoints (for ``FaultPlan(paths=...)``), plus the
#: websocket and matching channels.
TRADING_PATHS = (
    "order",
    "allOpenOrders",
    "openOrders",
    "allOrders",
    "userTrades",
    "positionRisk",
    "account",
    "balance",
    "leverage",
    "marginType",
    "positionMargin",
    "dual",
    "symbolConfig",
    "leverageBracket",
    "income",
    "listenKey",
    "ws",
    "match",
)


def channel_of(kinds: tuple[str, ...]) -> str:
    for name, members in CHANNELS.items():
        if kinds and all(kind in members for kind in kinds):
            return name
    raise ValueError(f"fault kinds {kinds} mix channels")


@dataclass(frozen=True)
class Injected:
    """A fault that was injected: request number (0-based, eligible requests only), path, kind."""

    n: int
    path: str
    kind: str


@dataclass
class FaultPlan:
    seed: int = 0
    rates: dict[str, float] = field(default_factory=dict)
    #: last path segments eligible for faults; None = every request
    paths: tuple[str, ...] | None = ("klines", "fundingRate", "ws")
    retry_after_s: float = 1.0
    timeout_s: float = 5.0
    slow_s: float = 0.3
    ws_delay_s: float = 0.5
    status: int = 503
    ban_after: int = 3
    ban_s: float = 2.0
    user_cancel_after_ms: int = 30_000
    late_s: float = 1.0
    skew_step_ms: int = 3000
    skew_max_ms: int = 6000
    #: current offset of the exchange's recvWindow clock from the real one (``clock_skew`` moves it)
    skew_ms: int = 0
    #: no seeded or scripted fault while set (``POST /_control/faults/paused``): a test holds the
    #: faults off while it measures, then lets them go on from where they were
    paused: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; choose from {', '.join(KINDS)}")
        for channel, members in CHANNELS.items():
            if sum(self.rates.get(kind, 0.0) for kind in members) > 1:
                raise ValueError(f"fault rates of the {channel} channel add up to more than 1")
        self._rngs = {name: random.Random(self.seed if name == "http" else f"{self.seed}/{name}") for name in CHANNELS}
        self._lock = threading.Lock()
        self._scripts: list[tuple[str, list[str]]] = []
        self._n = dict.fromkeys(CHANNELS, 0)
        self.injected: list[Injected] = []
        self._limited_until = 0.0
        self._violations = 0
        self._banned_until = 0.0

    def script(self, path_suffix: str, *kinds: str) -> FaultPlan:
        """The next requests whose path ends in ``path_suffix`` get these faults, in order."""
        for kind in kinds:
            if kind not in KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; choose from {', '.join(KINDS)}")
        with self._lock:
            self._scripts.append((path_suffix, list(kinds)))
        return self

    def eligible(self, path: str, channel: str = "http") -> bool:
        if self.paths is None:
            return True
        if channel != "http":
            return channel in self.paths
        return path.rstrip("/").rsplit("/", 1)[-1] in self.paths

    def decide(self, path: str, allowed: tuple[str, ...] = HTTP_KINDS) -> str | None:
        """The fault for this request (or websocket push), or None.

        Called once per eligible event in arrival order; ``allowed`` limits the kinds that apply
        (a drawn kind outside it means no fault, so the sequence of draws never shifts).
        """
        channel = channel_of(allowed)
        if not self.eligible(path, channel):
            return None
        with self._lock:
            n = self._n[channel]
            self._n[channel] += 1
            if self.paused:  # the draw is made all the same, so the sequence does not shift
                self._rngs[channel].random()
                return None
            kind = None
            for entry in self._scripts:
                suffix, kinds = entry
                if kinds and path.endswith(suffix) and kinds[0] in allowed:
                    kind = kinds.pop(0)
                    break
            draw = self._rngs[channel].random()  # drawn for every eligible event so scripts do not shift the sequence
            if kind is None:
                edge = 0.0
                for name in CHANNELS[channel]:
                    edge += self.rates.get(name, 0.0)
                    if draw < edge:
                        kind = name if name in allowed else None
                        break
            if kind is not None:
                self.injected.append(Injected(n, path, kind))
            return kind

    def skew(self) -> int:
        """A ``clock_skew`` fault: move the exchange clock ``skew_step_ms`` one way or the other
        (the way drawn from the http stream), staying within ``skew_max_ms``; returns the offset."""
        with self._lock:
            step = self.skew_step_ms if self._rngs["http"].random() < 0.5 else -self.skew_step_ms
            if abs(self.skew_ms + step) > self.skew_max_ms:
                step = -step
            self.skew_ms += step
            return self.skew_ms

    def draw(self, channel: str = "match") -> float:
        """One more number from a channel's stream (e.g. the size of a partial fill)."""
        with self._lock:
            return self._rngs[channel].random()

    def record(self, path: str, kind: str) -> None:
        """Count a fault that follows from the client's behaviour (a 429 or 418 while limited)."""
        with self._lock:
            self.injected.append(Injected(-1, path, kind))

    def gate(self, now_s: float, fault: str | None) -> str | None:
        """Binance's escalation: after a 429, requests within ``Retry-After`` get 429 again and,
        after ``ban_after`` of them, 418 for ``ban_s``; a 418 ban answers 418 until it ends.
        ``now_s`` is ``time.monotonic()``; returns the answer to give (or ``fault`` unchanged)."""
        with self._lock:
            if now_s < self._banned_until:
                return "banned"
            if fault == "ip_ban":
                self._banned_until = now_s + self.ban_s
                return fault
            if now_s < self._limited_until:
                self._violations += 1
                if self._violations >= self.ban_after:
                    self._banned_until = now_s + self.ban_s
                    self._violations = 0
                    return "escalated_ban"
                return "still_limited"
            if fault == "rate_limit":
                self._limited_until = now_s + self.retry_after_s
                self._violations = 0
            return fault

    def counts(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for item in self.injected:
                out[item.kind] = out.get(item.kind, 0) + 1
            return out

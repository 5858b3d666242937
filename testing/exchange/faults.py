"""Deterministic fault injection for the local exchange.

A :class:`FaultPlan` decides, request by request, whether to answer normally or with a fault. Two
ways to drive it, usable together:

* **seeded rates**: ``FaultPlan(seed=7, rates={"rate_limit": 0.1, "server_error": 0.05})`` draws one
  number per eligible request from ``random.Random(seed)``; the same seed and the same sequence of
  requests give the same faults, so a failing run can be replayed exactly;
* **scripts**: ``plan.script("klines", "rate_limit", "short_page")`` makes the next matching requests
  fail in exactly that order (scripts win over rates).

Kinds of fault (``KINDS``):

``rate_limit``   HTTP 429 with ``Retry-After`` and Binance's -1003 body.
``server_error`` HTTP 503 (``status`` configurable) with Binance's -1001 body.
``timeout``      the answer is held ``timeout_s`` seconds (longer than the client waits).
``slow``         the answer is held ``slow_s`` seconds, then given normally.
``short_page``   a list answer (klines, funding) is cut to its first half.
``empty_page``   a list answer is empty.
``drop``         (websockets) the connection is closed without a close frame.
``ws_delay``     (user-data websocket) the event is held ``ws_delay_s`` seconds; later events
                 overtake it (out-of-order delivery).

By default faults apply only to the data endpoints (``klines``, ``fundingRate``) and websocket
pushes, so ``load_markets`` works; pass ``paths=None`` to make every request eligible.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

KINDS = ("rate_limit", "server_error", "timeout", "slow", "short_page", "empty_page", "drop", "ws_delay")
HTTP_KINDS = KINDS[:6]
WS_KINDS = ("drop", "ws_delay")


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

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; choose from {', '.join(KINDS)}")
        if sum(self.rates.values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._scripts: list[tuple[str, list[str]]] = []
        self._n = 0
        self.injected: list[Injected] = []

    def script(self, path_suffix: str, *kinds: str) -> "FaultPlan":
        """The next requests whose path ends in ``path_suffix`` get these faults, in order."""
        for kind in kinds:
            if kind not in KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; choose from {', '.join(KINDS)}")
        with self._lock:
            self._scripts.append((path_suffix, list(kinds)))
        return self

    def eligible(self, path: str, websocket: bool = False) -> bool:
        if self.paths is None:
            return True
        if websocket:
            return "ws" in self.paths
        return path.rstrip("/").rsplit("/", 1)[-1] in self.paths

    def decide(self, path: str, allowed: tuple[str, ...] = HTTP_KINDS) -> str | None:
        """The fault for this request (or websocket push), or None.

        Called once per eligible event in arrival order; ``allowed`` limits the kinds that apply
        (a drawn kind outside it means no fault, so the sequence of draws never shifts).
        """
        if not self.eligible(path, websocket=all(kind in WS_KINDS for kind in allowed)):
            return None
        with self._lock:
            n = self._n
            self._n += 1
            kind = None
            for entry in self._scripts:
                suffix, kinds = entry
                if kinds and path.endswith(suffix) and kinds[0] in allowed:
                    kind = kinds.pop(0)
                    break
            draw = self._rng.random()  # drawn for every eligible request so scripts do not shift the sequence
            if kind is None:
                edge = 0.0
                for name in KINDS:
                    edge += self.rates.get(name, 0.0)
                    if draw < edge:
                        kind = name if name in allowed else None
                        break
            if kind is not None:
                self.injected.append(Injected(n, path, kind))
            return kind

    def counts(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for item in self.injected:
                out[item.kind] = out.get(item.kind, 0) + 1
            return out

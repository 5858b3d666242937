"""Alerts and the watchdog: what a trader must hear about a bot nobody is looking at.

The watchdog reads each bot's journal (the same view as the dashboard, :mod:`.bots`) every
``alerts.poll_s`` seconds, in the ``quant serve`` process: it watches from outside the bot, so it
can tell that a bot died, and nothing it does (a slow or failing notification service) can stop
or slow a bot.

Two kinds of alert:

* **conditions**, raised once when they start and cleared once with a recovery notice when they
  end (deduplicated: a condition that stays true sends nothing more, except a reminder every
  ``alerts.repeat_s``): the bot is dead (process gone or heartbeat stale); the kline websocket has
  pushed nothing for ``alerts.stream_timeout_s`` (the bot then polls REST); no market data at all
  for ``alerts.data_timeout_s``; the strategy wants N live orders but the exchange has fewer for
  longer than ``alerts.orders_timeout_s``; the distance to liquidation is under
  ``alerts.liquidation_distance``; the kill switch is engaged (a risk check tripped, or stop/flatten).
* **events**, sent as they happen, at most one per kind and bot every ``alerts.min_interval_s``
  (the ones held back are counted into the next): reconciliation disagreements (the journal's
  notes), orders the engine refused before sending them (a risk check, the kill switch), and a
  summary of the fills every ``alerts.fills_every_s``.

Every alert goes to the ``quant_on_alert`` hook (other plugins may forward or record it) and, when
``alerts.urls`` is set, through Apprise (Telegram, Discord, Slack, e-mail, any webhook: ``json://``).
A notification that cannot be sent is logged (without its URL, which may hold a token) and the
watchdog carries on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from btc_quant.core.config import QuantModel

from .bots import JournalReader, bot_names, bot_view, live_dir

log = logging.getLogger(__name__)

#: journal note kinds that are reconciliation disagreements (plugins/exchanges/live.py)
RECONCILE_KINDS = ("revived", "orphan", "position")


class AlertsConfig(QuantModel):
    urls: list[str] = Field(
        default_factory=list,
        description="Apprise URLs to notify (json://host/path, tgram://..., discord://...); empty: alerts show in the page only",
    )
    poll_s: float = Field(1.0, gt=0, description="how often the watchdog looks at every bot (seconds)")
    stale_s: float = Field(15.0, gt=0, description="a heartbeat older than this means the bot is dead (seconds)")
    stream_timeout_s: float = Field(60.0, gt=0, description="alert when the kline websocket pushed nothing for this long (seconds)")
    data_timeout_s: float = Field(180.0, gt=0, description="alert when no market data at all arrived for this long (seconds)")
    orders_timeout_s: float = Field(
        120.0, gt=0, description="alert when the exchange has fewer orders than the strategy wants for this long (seconds)"
    )
    liquidation_distance: float = Field(
        0.05, ge=0, description="alert when the price is closer than this to the liquidation price (fraction)"
    )
    fills_every_s: float = Field(3600.0, gt=0, description="send a summary of the fills this often (seconds; nothing when there were none)")
    min_interval_s: float = Field(300.0, ge=0, description="at most one event alert of a kind per bot this often (seconds)")
    repeat_s: float = Field(3600.0, gt=0, description="remind of a condition still true this often (seconds)")


@dataclass(frozen=True)
class Alert:
    """One notification. ``level`` is ``alert`` (a condition started or an event), ``reminder``,
    ``recovered`` (a condition ended) or ``info`` (the fills summary)."""

    key: str
    bot: str
    kind: str
    level: str
    title: str
    message: str
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Notifier:
    """Sends alerts through Apprise; a failure is logged and reported, never raised."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self.failures = 0
        self._apprise = None
        if self.urls:
            import apprise

            self._apprise = apprise.Apprise()
            for i, url in enumerate(self.urls):
                if not self._apprise.add(url):
                    # the URL itself is not shown: it may carry a bot token or a password
                    raise ValueError(f"alerts.urls[{i}]: not a URL Apprise understands")

    def send(self, alert: Alert) -> bool:
        if self._apprise is None:
            return True
        kind = {"alert": "failure", "reminder": "warning", "recovered": "success"}.get(alert.level, "info")
        try:
            ok = bool(self._apprise.notify(title=alert.title, body=alert.message, notify_type=kind))
        except Exception as exc:  # noqa: BLE001 - a notification service must never stop the watchdog
            log.warning("alert %s not sent: %s", alert.key, type(exc).__name__)
            ok = False
        if not ok:
            self.failures += 1
            log.warning("alert %s could not be sent to every alerts.urls target", alert.key)
        return ok


@dataclass
class _Condition:
    since: float  # when it was first seen true
    raised: bool = False  # alert sent
    last_sent: float = 0.0
    message: str = ""


class Watchdog:
    """Looks at every bot's journal and raises/clears alerts (see module docstring).

    ``check(now)`` does one pass and returns the alerts it produced; ``emit`` is called for each
    (the hook and the notifier). Pure bookkeeping otherwise, so tests can drive it with a clock.
    """

    def __init__(self, home: Path, config: AlertsConfig, emit: Callable[[Alert], None]) -> None:
        self.home, self.config, self.emit = Path(home), config, emit
        self.conditions: dict[str, _Condition] = {}
        self.note_seen: dict[str, int] = {}
        self.fill_seen: dict[str, int] = {}
        self.fills_sent: dict[str, float] = {}
        self.event_sent: dict[str, float] = {}
        self.held: dict[str, list[str]] = {}
        self.refusals_seen: dict[str, int] = {}
        self.refusals_held: dict[str, int] = {}
        self.recent: list[Alert] = []

    # --- one pass -------------------------------------------------------------------------
    def check(self, now: float | None = None) -> list[Alert]:
        now = time.time() if now is None else now
        out: list[Alert] = []
        for bot in bot_names(self.home):
            view = bot_view(self.home, bot, now, events=200, stale_s=self.config.stale_s)
            if view is None:
                continue
            out += self._conditions(bot, view, now)
            out += self._events(bot, view, now)
        for alert in out:
            self.recent.append(alert)
            self.emit(alert)
        del self.recent[:-100]
        return out

    def _active(self, bot: str, view: dict) -> dict[str, tuple[str, float]]:
        """Conditions true now: kind -> (message, how long it must hold before alerting)."""
        c, status = self.config, view["status"]
        found: dict[str, tuple[str, float]] = {}
        if status == "dead":
            found["dead"] = (f"bot {bot} is dead: its process is gone or its heartbeat is {view.get('heartbeat_age_s') or 0:.0f}s old", 0.0)
        if status not in ("running", "halted"):
            return found  # a stopped, stopping or dead bot has no stream, orders or position to watch
        if view.get("stream_age_s") is not None and view["stream_age_s"] > c.stream_timeout_s:
            found["stream"] = (f"bot {bot}: no market data from the websocket for {view['stream_age_s']:.0f}s (polling REST)", 0.0)
        if view.get("market_age_s") is not None and view["market_age_s"] > c.data_timeout_s:
            found["market_data"] = (f"bot {bot}: no market data for {view['market_age_s']:.0f}s", 0.0)
        if view.get("orders_live", 0) < view.get("orders_wanted", 0):
            wants = f"bot {bot}: the strategy wants {view['orders_wanted']} live orders, the exchange has {view['orders_live']}"
            found["orders"] = (wants, c.orders_timeout_s)
        distance = view.get("liquidation_distance")
        if distance is not None and distance < c.liquidation_distance:
            near = f"bot {bot}: price {view['price']:.2f} is {distance:.2%} from the liquidation price {view['liquidation_price']:.2f}"
            found["liquidation"] = (near, 0.0)
        if view.get("halted"):
            found["halted"] = (f"bot {bot}: kill switch engaged ({view['halted']})", 0.0)
        return found

    def _conditions(self, bot: str, view: dict, now: float) -> list[Alert]:
        out = []
        active = self._active(bot, view)
        for kind, (message, hold_s) in active.items():
            key = f"{bot}:{kind}"
            cond = self.conditions.setdefault(key, _Condition(since=now))
            cond.message = message
            if not cond.raised and now - cond.since >= hold_s:
                cond.raised, cond.last_sent = True, now
                out.append(Alert(key, bot, kind, "alert", f"btc-quant {bot}: {kind}", message, now))
            elif cond.raised and now - cond.last_sent >= self.config.repeat_s:
                cond.last_sent = now
                out.append(Alert(key, bot, kind, "reminder", f"btc-quant {bot}: {kind} (still)", message, now))
        watching = view["status"] in ("running", "halted")
        for key in [k for k in self.conditions if k.startswith(f"{bot}:") and k.split(":", 1)[1] not in active]:
            if not watching and not key.endswith(":dead"):
                if view["status"] == "dead":
                    continue  # a dead bot's stream or orders did not recover: they wait for its restart
                self.conditions.pop(key)  # stopped on purpose: nothing recovered, nothing to say
                continue
            cond = self.conditions.pop(key)
            if cond.raised:
                kind = key.split(":", 1)[1]
                out.append(
                    Alert(
                        key,
                        bot,
                        kind,
                        "recovered",
                        f"btc-quant {bot}: {kind} recovered",
                        f"recovered after {now - cond.since:.0f}s: {cond.message}",
                        now,
                    )
                )
        return out

    def _events(self, bot: str, view: dict, now: float) -> list[Alert]:
        out = []
        # reconciliation disagreements: every new note of those kinds, rate-limited per bot
        seen = self.note_seen.get(bot)
        notes = view.get("events") or []
        if seen is None:  # first look: what happened before the watchdog started is history
            self.note_seen[bot] = max((n["id"] for n in notes), default=0)
        else:
            new = [n for n in notes if n["id"] > seen]
            if new:
                self.note_seen[bot] = new[-1]["id"]
            held = self.held.setdefault(bot, [])
            held += [n["message"] for n in new if n["kind"] in RECONCILE_KINDS]
            key = f"{bot}:reconcile"
            if held and now - self.event_sent.get(key, -1e18) >= self.config.min_interval_s:
                self.event_sent[key] = now
                text = held[0] + (f" (+{len(held) - 1} more)" if len(held) > 1 else "")
                out.append(Alert(key, bot, "reconcile", "alert", f"btc-quant {bot}: reconciliation disagreed", text, now))
                held.clear()
        # orders the engine refused before sending (a risk check, the kill switch), rate-limited
        count = view.get("risk_refusals")
        if count is not None:
            before = self.refusals_seen.setdefault(bot, count)
            if count > before:
                self.refusals_held[bot] = self.refusals_held.get(bot, 0) + count - before
                self.refusals_seen[bot] = count
            key = f"{bot}:risk"
            held_n = self.refusals_held.get(bot, 0)
            if held_n and now - self.event_sent.get(key, -1e18) >= self.config.min_interval_s:
                self.event_sent[key] = now
                self.refusals_held[bot] = 0
                out.append(
                    Alert(
                        key,
                        bot,
                        "risk",
                        "alert",
                        f"btc-quant {bot}: orders refused",
                        f"{held_n} order(s) refused before sending (last: {view.get('last_risk_refusal')})",
                        now,
                    )
                )
        # the fills summary
        fills = view.get("fills") or []
        last = self.fill_seen.get(bot)
        if last is None:
            self.fill_seen[bot] = max((f["id"] for f in fills), default=0)
            self.fills_sent[bot] = now
        elif now - self.fills_sent.get(bot, now) >= self.config.fills_every_s:
            reader = JournalReader(live_dir(self.home) / f"{bot}.db")
            try:
                new = reader.fills(limit=10**9, after_rowid=last)
            finally:
                reader.close()
            self.fills_sent[bot] = now
            if new:
                self.fill_seen[bot] = new[-1]["id"]
                bought = sum(f["quantity"] for f in new if f["side"] == "buy")
                sold = sum(f["quantity"] for f in new if f["side"] == "sell")
                fees = sum(f["fee"] or 0.0 for f in new)
                out.append(
                    Alert(
                        f"{bot}:fills",
                        bot,
                        "fills",
                        "info",
                        f"btc-quant {bot}: {len(new)} fills",
                        f"{len(new)} fills: bought {bought:g}, sold {sold:g}, fees {fees:.4f}; "
                        f"position {view['position']['quantity'] if view.get('position') else '-'}, "
                        f"equity {view.get('equity') or 0:.2f}",
                        now,
                    )
                )
        return out

"""The dashboard's ASGI app: the JSON API (OpenAPI at ``/openapi.json``), live updates over
server-sent events, and the page that uses them (``static/``: plain JS, no CDN: it works offline).

Security (see :mod:`.token`): every request needs the token, as ``Authorization: Bearer`` or the
HttpOnly ``SameSite=Strict`` cookie ``POST /api/session`` sets; without it the answer is 401 and
no data (``/`` shows a form asking for the token). A POST (the actions) must carry the header
itself, not only the cookie, and an ``Origin`` other than this server's is refused: a page on
another site can neither read the API nor trigger an action. Answers are built from explicit
fields (never a config or a journal's raw contents), so API keys cannot leak into them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse

from .alerts import Alert, AlertsConfig, Notifier, Watchdog
from .bots import bot_names, bot_view, live_dir
from .runs import compare, run_detail, run_folder, runs, studies

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
COOKIE = "quant_token"
ACTIONS = ("stop", "flatten")


@dataclass
class ServeSettings:
    home: Path
    token: str
    studies_dir: Path
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    stream_every_s: float = 1.0
    plugins: Any = None
    #: true once the server is shutting down: open event streams end instead of holding it up
    shutting_down: Callable[[], bool] = lambda: False


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>btc-quant: sign in</title>
<style>body{font:15px system-ui,sans-serif;margin:4em auto;max-width:28em;color:#222}input{width:100%;padding:.5em;font:inherit}
button{margin-top:.8em;padding:.5em 1.2em;font:inherit}#err{color:#b00}</style></head><body>
<h1>btc-quant dashboard</h1><p>Enter the access token (<code>quant serve</code> printed where it is kept).</p>
<form id="f"><input id="token" type="password" autocomplete="current-password" placeholder="token" autofocus>
<button type="submit">Sign in</button></form><p id="err">__ERROR__</p>
<script>
async function signIn(token){
  const r = await fetch('/api/session', {method:'POST', headers:{'Authorization':'Bearer '+token}});
  if (r.ok) { sessionStorage.setItem('quant_token', token); location.replace('/'); }
  else document.getElementById('err').textContent = 'wrong token (' + r.status + ')';
}
document.getElementById('f').onsubmit = e => { e.preventDefault(); signIn(document.getElementById('token').value.trim()); };
const m = location.hash.match(/token=([^&]+)/);
if (m) { history.replaceState(null, '', '/'); signIn(decodeURIComponent(m[1])); }
</script></body></html>"""


class TokenGate:
    """ASGI middleware: the token on every request, CSRF-safe POSTs (see module docstring)."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token.encode()

    def _ok(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        cookie = None
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                cookie = value
        method, path = scope["method"], scope["path"]
        if method in ("GET", "HEAD"):
            allowed = self._ok(bearer) or self._ok(cookie)
        else:
            origin = headers.get("origin")
            same_origin = origin is None or origin.split("://", 1)[-1] == headers.get("host")
            allowed = self._ok(bearer) and same_origin
        if allowed:
            return await self.app(scope, receive, send)
        if method == "GET" and path == "/":
            error = "wrong token" if (bearer or cookie) else ""
            response = HTMLResponse(LOGIN_PAGE.replace("__ERROR__", error), status_code=401)
        else:
            why = (
                "a POST needs the token in the Authorization header, from this server's own page"
                if method not in ("GET", "HEAD") and (bearer or cookie)
                else "missing or wrong token"
            )
            response = JSONResponse({"detail": why}, status_code=401)
        response.headers["Cache-Control"] = "no-store"
        await response(scope, receive, send)


def create_app(settings: ServeSettings) -> FastAPI:
    """The dashboard app over ``settings.home`` (QUANT_HOME); starts the watchdog thread with it."""
    notifier = Notifier(settings.alerts.urls)

    def emit(alert: Alert) -> None:
        if settings.plugins is not None:
            try:
                settings.plugins.pm.hook.quant_on_alert(alert=alert)
            except Exception:  # a plugin's bug must not stop the alerts
                log.exception("a quant_on_alert hook failed on %s", alert.key)
        notifier.send(alert)

    watchdog = Watchdog(settings.home, settings.alerts, emit)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(settings.alerts.poll_s):
            try:
                watchdog.check()
            except Exception:  # a bug in one pass must not end the watching
                log.exception("watchdog pass failed")

    async def lifespan(app):
        thread = threading.Thread(target=watch, name="quant-watchdog", daemon=True)
        thread.start()
        yield
        stop.set()
        thread.join(5)

    app = FastAPI(
        title="btc-quant dashboard",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        description="Bots, saved backtests and optimisation studies of one QUANT_HOME. Every request needs the token.",
    )
    app.state.watchdog, app.state.notifier, app.state.settings = watchdog, notifier, settings
    runs_root = settings.home / "runs"
    reports: dict[str, str] = {}

    def no_store(response):
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/", include_in_schema=False)
    def index():
        response = FileResponse(STATIC / "index.html", media_type="text/html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; connect-src 'self'"
        )
        return no_store(response)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(path)

    @app.post("/api/session", summary="Exchange the Authorization header for the page's HttpOnly cookie")
    def session():
        response = JSONResponse({"ok": True})
        response.set_cookie(COOKIE, settings.token, httponly=True, samesite="strict", path="/")
        return no_store(response)

    @app.get("/api/bots", summary="Every bot with a journal in QUANT_HOME/live: state, position, balances, orders, events")
    def list_bots() -> list[dict[str, Any]]:
        return [v for v in (bot_view(settings.home, b, stale_s=settings.alerts.stale_s) for b in bot_names(settings.home)) if v]

    @app.get("/api/bots/{bot}", summary="One bot")
    def get_bot(bot: str) -> dict[str, Any]:
        view = bot_view(settings.home, bot, stale_s=settings.alerts.stale_s) if bot in bot_names(settings.home) else None
        if view is None:
            raise HTTPException(404, f"no bot named {bot!r}")
        return view

    @app.post("/api/bots/{bot}/{action}", summary="stop or flatten a running bot (written to its journal with who and when)")
    def act(bot: str, action: str, request: Request, body: dict = Body(default={})) -> dict[str, Any]:
        from btc_quant.plugins.exchanges.journal import Journal  # the bot's own journal format, one place

        if action not in ACTIONS:
            raise HTTPException(404, f"no action {action!r}; actions: {', '.join(ACTIONS)}")
        if bot not in bot_names(settings.home):
            raise HTTPException(404, f"no bot named {bot!r}")
        if body.get("confirm") != bot:
            raise HTTPException(400, f'confirm the action with the body {{"confirm": "{bot}"}}')
        view = bot_view(settings.home, bot, stale_s=settings.alerts.stale_s)
        if view["status"] not in ("running", "halted", "stopping"):
            raise HTTPException(409, f"bot {bot!r} is {view['status']}: nothing to {action}")
        who = str(body.get("who") or "dashboard")[:64]
        client = request.client.host if request.client else "?"
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        journal = Journal(live_dir(settings.home) / f"{bot}.db")
        try:
            journal.note("action", f"{action} requested by {who} from {client} at {when} (quant serve)")
            journal.set("command", action)
        finally:
            journal.close()
        log.warning("bot %s: %s requested by %s from %s", bot, action, who, client)
        return {"bot": bot, "action": action, "who": who, "from": client, "at": when}

    @app.get("/api/runs", summary="Saved backtests (quant report --list), newest first, filtered")
    def list_saved(
        q: str = Query("", description="any part of run id, strategy, broker, symbol"), strategy: str = "", broker: str = ""
    ) -> list[dict[str, Any]]:
        return runs(runs_root, q, strategy, broker)

    def _folder(run_id: str) -> Path:
        folder = run_folder(runs_root, run_id)
        if folder is None:
            raise HTTPException(404, f"no single saved run {run_id!r}")
        return folder

    @app.get("/api/runs/{run_id}", summary="A run's summary, metrics and equity curve")
    def get_run(run_id: str) -> dict[str, Any]:
        return run_detail(_folder(run_id))

    @app.get("/api/compare", summary="Two runs side by side: metrics table and both equity curves")
    def compare_runs(a: str, b: str) -> dict[str, Any]:
        run_a, run_b = run_detail(_folder(a)), run_detail(_folder(b))
        return {"a": run_a, "b": run_b, "metrics": compare(run_a, run_b)}

    @app.get("/api/runs/{run_id}/report", summary="A run's HTML report (the same page as quant report)", response_class=HTMLResponse)
    def report(run_id: str):
        from btc_quant.core.report import render_html
        from btc_quant.core.results import load_run

        folder = _folder(run_id)
        if folder.name not in reports:
            reports[folder.name] = render_html(load_run(folder.name, runs_root), settings.plugins)
        return HTMLResponse(reports[folder.name])

    @app.get("/api/studies", summary="Optimisation studies: trials by state and best value")
    def list_studies() -> list[dict[str, Any]]:
        return studies(settings.studies_dir)

    @app.get("/api/alerts", summary="The watchdog's recent alerts, newest last")
    def alerts() -> list[dict[str, Any]]:
        return [a.to_dict() for a in watchdog.recent]

    @app.get("/api/stream", summary="Server-sent events: bots, studies and alerts, whenever they change (text/event-stream)")
    async def stream(request: Request):
        async def events():
            # one message a second: the heartbeat ages change that often anyway
            while not settings.shutting_down() and not await request.is_disconnected():
                payload = await asyncio.to_thread(lambda: {"bots": list_bots(), "studies": list_studies(), "alerts": alerts()})
                yield f"data: {json.dumps(payload, default=str)}\n\n"
                await asyncio.sleep(settings.stream_every_s)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    app.add_middleware(TokenGate, token=settings.token)
    return app

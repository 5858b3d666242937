"""``quant serve``: the dashboard and JSON API over the bots, runs and studies of one QUANT_HOME,
and the watchdog that sends alerts (``app.py``, ``bots.py``, ``runs.py``, ``alerts.py``, ``token.py``).

    quant serve [--host 127.0.0.1] [--port 8765] [--token-file PATH] [--studies DIR] [--config FILE]
                [alerts.urls=[...]] [alerts.KEY=VALUE ...]
"""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path
from typing import Optional

import typer

from btc_quant.sdk import ConfigError, hookimpl

LOOPBACK = {"localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(pairs: list[str], config_file: Path | None = None):
    """The ``[alerts]`` section of ``config_file`` (a TOML file; its other sections are
    ``quant run``'s and are left alone), then ``alerts.<key>=value`` pairs from the command line
    -> AlertsConfig (one line per mistake, exit 2). The URLs are secrets (they often carry a
    bot token or a password): they are masked in every error message."""
    from btc_quant.core import secrets
    from btc_quant.core.config import parse_assignments, read_toml, validate_model

    from .alerts import AlertsConfig

    raw = parse_assignments(pairs)
    unknown = sorted(set(raw) - {"alerts"})
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: unknown key for quant serve; valid: alerts.<key>", hint="quant serve --help lists the alerts keys"
        )
    layers = []
    if config_file is not None:
        section = read_toml(config_file).get("alerts", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{config_file}: alerts must be a [alerts] table")
        layers.append(section)
    alerts = raw.get("alerts") or {}
    if not isinstance(alerts, dict):
        raise ConfigError("alerts: is a section; give alerts.urls=[...] and other alerts.<key>=value")
    layers.append(alerts)
    merged = {}
    for layer in layers:
        merged.update(layer)
    urls = merged.get("urls")
    for url in [urls] if isinstance(urls, str) else urls or []:
        secrets.register(str(url))
    return validate_model(AlertsConfig, merged, prefix="alerts", what="alerts")


def register(cli: typer.Typer, plugins) -> None:
    from .alerts import AlertsConfig

    keys = ", ".join(f"alerts.{name}" for name in AlertsConfig.model_fields)

    @cli.command("serve", help=f"The web dashboard and JSON API (bots, runs, studies) and the alerts watchdog. Settings: {keys}.")
    def serve(
        settings: Optional[list[str]] = typer.Argument(
            None, help="alerts.urls=\\[json://127.0.0.1:9000/hook] alerts.stream_timeout_s=30 ..."
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="address to bind; anything but loopback needs --token-file"),
        port: int = typer.Option(8765, "--port", help="port (0: any free port; the URL is printed)"),
        token_file: Optional[Path] = typer.Option(
            None, "--token-file", help="file holding the token (0600); default QUANT_HOME/serve/token, created on first start"
        ),
        studies_dir: Path = typer.Option(Path("optimize"), "--studies", help="folder of quant optimize outputs (*/study.db)"),
        config_file: Optional[Path] = typer.Option(
            None, "--config", help="a TOML file whose \\[alerts] table sets the alerts (keep it chmod 600: the URLs are secrets)"
        ),
    ) -> None:
        import uvicorn

        from btc_quant.core.paths import data_dir

        from .app import ServeSettings, create_app
        from .token import default_token_path, ensure_token, read_token

        alerts = load_settings(settings or [], config_file)
        if not is_loopback(host) and token_file is None:
            raise ConfigError(
                f"--host {host} is reachable from other machines; refusing to start without a token set",
                hint="give --token-file PATH (a file with a long random token, chmod 600); bind 127.0.0.1 otherwise",
            )
        home = data_dir()
        if token_file is not None:
            token, created, where = read_token(token_file), False, token_file
        else:
            where = default_token_path(home)
            token, created = ensure_token(where)
        try:
            serve_settings = ServeSettings(home=home, token=token, studies_dir=studies_dir.resolve(), alerts=alerts, plugins=plugins)
            app = create_app(serve_settings)
        except ValueError as exc:  # an alerts URL Apprise does not understand
            raise ConfigError(str(exc)) from None
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"--host {host} --port {port}: cannot bind ({exc.strerror})", hint="pick another --port (0: any free one)"
            ) from None
        sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        # the token itself is never printed: only where it is kept
        typer.echo(
            json.dumps(
                {"url": f"http://{shown}:{bound}/", "token_file": str(where), "token_created": created, "alerts_to": len(alerts.urls)}
            ),
            nl=True,
        )
        # open event streams end within a second of a shutdown (Ctrl-C, SIGTERM); 2 s at most
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        serve_settings.shutting_down = lambda: server.should_exit
        server.run(sockets=[sock])


@hookimpl
def quant_register_commands(cli, plugins):
    register(cli, plugins)

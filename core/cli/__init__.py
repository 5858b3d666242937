"""The ``quant`` command line: parses, builds a config, calls the library, prints.

User errors (:class:`~btc_quant.core.errors.QuantError`) print one line plus a hint and exit with
code 2; ``--debug`` anywhere on the line (or ``QUANT_DEBUG=1``) shows the traceback instead.
Each command group lives in its own module here and is added in :func:`build_app`; plugins can add
more through the ``quant_register_commands`` hook.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import typer
from rich.console import Console
from rich.logging import RichHandler

from .. import secrets
from ..errors import QuantError
from ..plugins import PluginManager, load_plugins
from . import plugin_cache

err_console = Console(stderr=True)


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("QUANT_DEBUG", "").lower() in ("1", "true", "yes")


def setup_logging(debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO
    handler = RichHandler(console=err_console, show_time=False, show_path=debug, markup=False, rich_tracebacks=debug)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    secrets.install_log_filter()
    for noisy in ("numba", "urllib3", "asyncio", "matplotlib", "distributed", "bokeh", "tornado", "ccxt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_app(plugins: PluginManager) -> typer.Typer:
    from . import collect_cmd, config_cmd, data_cmd, optimize_cmd, plugins_cmd, report_cmd, run_cmd

    app = typer.Typer(
        name="quant",
        help="btc-quant: BTC market data, backtests and live trading. Settings are key=value pairs "
        "(strategy=maker_vol broker=sim data.start=2022-01-10); --debug shows tracebacks.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    for module in (run_cmd, plugins_cmd, config_cmd, data_cmd, collect_cmd, report_cmd, optimize_cmd):
        module.register(app, plugins)
    if isinstance(plugins, plugin_cache.CachedPlugins):
        plugin_cache.add_stub_commands(app, plugins.commands)
    else:
        before = (len(app.registered_commands), len(app.registered_groups))
        plugins.hook.quant_register_commands(cli=app, plugins=plugins)
        app.plugin_commands = plugin_cache.added_commands(app, before)  # type: ignore[attr-defined]
    return app


def _help_or_listing(argv: list[str]) -> bool:
    """``quant``, ``quant --help`` and ``quant plugins [--json]``: answered from the plugin cache."""
    if argv in ([], ["--help"], ["-h"]):
        return True
    return argv[:1] == ["plugins"] and all(a in ("--json", "--help", "-h") for a in argv[1:])


def report_error(exc: QuantError) -> None:
    err_console.print(f"[bold red]error:[/] {secrets.mask(str(exc))}", highlight=False, soft_wrap=True, markup=True)
    if exc.hint:
        err_console.print(f"[dim]hint:[/] {secrets.mask(exc.hint)}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    setup_logging(debug)
    try:
        env = dict(os.environ)
        cached = plugin_cache.recall(env) if _help_or_listing(argv) or argv[:1] == ["run"] else None
        if cached is not None and argv[:1] != ["run"]:
            app = build_app(cached)
        elif cached is not None:  # quant run: plugins that only register names load when one is used
            app = build_app(load_plugins(env, known=cached.infos))
        else:
            plugins = load_plugins()
            app = build_app(plugins)
            plugin_cache.remember(plugins, app.plugin_commands, env)  # type: ignore[attr-defined]
        app(args=argv, prog_name="quant", standalone_mode=True)
    except QuantError as exc:
        if debug:
            traceback.print_exc()
        report_error(exc)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run() -> None:  # pragma: no cover - console entry point wrapper
    sys.exit(main())

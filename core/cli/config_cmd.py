"""``quant config show``: the merged config (defaults < quant.toml < QUANT_* < key=value)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..plugins import PluginManager
from .lazy import lazy

config_toml = lazy("btc_quant.core.config", "config_toml")
load_run_config = lazy("btc_quant.core.config", "load_run_config")


def register(app: typer.Typer, plugins: PluginManager) -> None:
    group = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
    app.add_typer(group, name="config")

    @group.command("show")
    def show(
        settings: Optional[list[str]] = typer.Argument(None, help="key=value settings to merge in"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of TOML"),
    ) -> None:
        """Print the merged config; secrets are masked. The TOML output is a valid --config file."""
        cfg = load_run_config(settings or [], plugins.registry, config_path=config)
        data = cfg.to_dict()
        if as_json:
            typer.echo(json.dumps(data, indent=2))
        else:
            typer.echo(config_toml(cfg), nl=False)

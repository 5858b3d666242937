"""``quant plugins``: every loaded plugin, its version, and what it registered."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from ..plugins import PluginManager

out = Console()


def register(app: typer.Typer, plugins: PluginManager) -> None:
    @app.command("plugins")
    def plugins_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
        """List loaded plugins (and any that failed to load, with the error)."""
        infos = [plugins.infos[name].as_dict() for name in sorted(plugins.infos)]
        if as_json:
            typer.echo(json.dumps(infos, indent=2))
            return
        table = Table("plugin", "distribution", "version", "registered", "error")
        for info in infos:
            registered = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info["registered"].items())
            table.add_row(info["name"], info["distribution"] or "", info["version"] or "", registered, info.get("error", ""))
        out.print(table)

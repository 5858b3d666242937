"""What the installed plugins registered, remembered between runs so that ``quant --help`` and
``quant plugins`` answer without importing every plugin (and numpy, pandas, numba, ccxt with them).

After a full load :func:`remember` writes ``<data dir>/cache/plugins.json``: each plugin's
:class:`~btc_quant.core.plugins.PluginInfo` and the commands it added through
``quant_register_commands`` (name and help). :func:`recall` returns it only while it still
describes this installation: the same Python, the same entry points with the same distribution
versions, the same ``QUANT_LOAD_PLUGINS``, and unchanged source files in each plugin module's
folder (an editable install picks up edits). A load where a plugin failed, ``QUANT_STRICT_PLUGINS``
and ``QUANT_TRACE_PLUGINS`` are never cached, so errors and traces always come from a real load.
Any other command loads the plugins for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib import metadata, util
from pathlib import Path
from typing import Any

import typer

from ..hookspecs import ENTRY_POINT_GROUP
from ..paths import data_dir
from ..plugins import PluginInfo, PluginManager

VERSION = 1


def _path() -> Path:
    return data_dir() / "cache" / "plugins.json"


def _module_stamp(module: str) -> list[Any]:
    """Newest mtime, count and total size of the .py files beside ``module`` (without importing it)."""
    try:
        spec = util.find_spec(module)
    except (ImportError, ValueError):
        return [module, None]
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return [module, None]
    folder = os.path.dirname(spec.origin)
    stats = [entry.stat() for entry in os.scandir(folder) if entry.name.endswith(".py")]
    return [module, max(s.st_mtime_ns for s in stats), len(stats), sum(s.st_size for s in stats)]


def fingerprint(env: dict[str, str]) -> str:
    parts: list[Any] = [VERSION, sys.prefix, sys.version, env.get("QUANT_LOAD_PLUGINS")]
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        dist = getattr(ep, "dist", None)
        parts.append(
            [
                ep.name,
                ep.value,
                dist.metadata["Name"] if dist else None,
                dist.version if dist else None,
                _module_stamp(ep.value.split(":")[0]),
            ]
        )
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def usable(env: dict[str, str]) -> bool:
    return not any(env.get(k, "").lower() in ("1", "true", "yes") for k in ("QUANT_STRICT_PLUGINS", "QUANT_TRACE_PLUGINS"))


def remember(plugins: PluginManager, commands: list[dict[str, Any]], env: dict[str, str]) -> None:
    """Write the cache after a full load (not when a plugin failed to load)."""
    if plugins.failed or not usable(env):
        return
    entry = {"fingerprint": fingerprint(env), "infos": [i.as_dict() for i in plugins.infos.values()], "commands": commands}
    path = _path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)
    except OSError:  # a read-only home only costs the next start its speed
        pass


class CachedPlugins:
    """Stands in for a :class:`PluginManager` where only ``infos`` and the plugins' commands are needed."""

    def __init__(self, infos: dict[str, PluginInfo], commands: list[dict[str, Any]]) -> None:
        self.infos = infos
        self.commands = commands

    @property
    def registry(self):  # pragma: no cover - light mode never runs a command that needs it
        raise RuntimeError("the plugins were not loaded (a cached listing serves --help and quant plugins only)")


def recall(env: dict[str, str]) -> CachedPlugins | None:
    if not usable(env):
        return None
    try:
        entry = json.loads(_path().read_text())
    except (OSError, ValueError):
        return None
    if entry.get("fingerprint") != fingerprint(env):
        return None
    infos = {}
    for d in entry["infos"]:
        infos[d["name"]] = PluginInfo(
            d["name"],
            d["distribution"],
            d["version"],
            d["module"],
            list(d["hooks"]),
            {k: list(v) for k, v in d["registered"].items()},
            d.get("error"),
        )
    return CachedPlugins(infos, entry["commands"])


def added_commands(app: typer.Typer, before: tuple[int, int]) -> list[dict[str, Any]]:
    """The commands and command groups added to ``app`` since ``before`` (its counts then)."""
    found = []
    for info in app.registered_commands[before[0] :]:
        name = info.name or (info.callback.__name__.replace("_", "-") if info.callback else None)
        found.append(
            {
                "name": name,
                "help": info.help or (info.callback.__doc__ if info.callback else None) or "",
                "group": False,
                "hidden": bool(info.hidden),
            }
        )
    for group in app.registered_groups[before[1] :]:
        instance = group.typer_instance
        help_text = group.help or (instance.info.help if instance is not None else None) or ""
        found.append(
            {
                "name": group.name or (instance.info.name if instance else None),
                "help": help_text,
                "group": True,
                "hidden": bool(group.hidden),
            }
        )
    return found


def add_stub_commands(app: typer.Typer, commands: list[dict[str, Any]]) -> None:
    """The plugins' commands as they appear in ``quant --help`` (never run: light mode is help only)."""
    for command in commands:
        if command["group"]:
            app.add_typer(typer.Typer(help=command["help"], no_args_is_help=True), name=command["name"], hidden=command["hidden"])
        else:
            app.command(command["name"], help=command["help"], hidden=command["hidden"])(lambda: None)

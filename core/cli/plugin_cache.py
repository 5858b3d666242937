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


def installed_entry_points() -> list[tuple[str, str, str | None, str | None]]:
    """``(name, value, distribution, version)`` of every entry point of the plugin group."""
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        found.append((ep.name, ep.value, dist.metadata["Name"] if dist else None, dist.version if dist else None))
    return found


def fingerprint(env: dict[str, str], entry_points: list[tuple[str, str, str | None, str | None]] | None = None) -> str:
    """What the cache must still match: this Python, ``QUANT_LOAD_PLUGINS``, and each entry point
    (:func:`installed_entry_points` unless given) with its distribution's version and its module's
    sources. The install passes the entry points it is installing (not visible to it yet)."""
    parts: list[Any] = [VERSION, sys.prefix, sys.version, env.get("QUANT_LOAD_PLUGINS")]
    for name, value, dist_name, version in sorted(installed_entry_points() if entry_points is None else entry_points):
        parts.append([name, value, dist_name, version, _module_stamp(value.split(":")[0])])
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def usable(env: dict[str, str]) -> bool:
    return not any(env.get(k, "").lower() in ("1", "true", "yes") for k in ("QUANT_STRICT_PLUGINS", "QUANT_TRACE_PLUGINS"))


def remember(
    plugins: PluginManager,
    commands: list[dict[str, Any]],
    env: dict[str, str],
    entry_points: list[tuple[str, str, str | None, str | None]] | None = None,
) -> None:
    """Write the cache after a full load (not when a plugin failed to load)."""
    if plugins.failed or not usable(env):
        return
    entry = {
        "fingerprint": fingerprint(env, entry_points),
        "infos": [i.as_dict() for i in plugins.infos.values()],
        "commands": commands,
    }
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


def remember_install(modules: dict[str, str], distribution: str, version: str) -> None:
    """The install's build step (setup.py): write the cache the installed package will find, so
    even the first ``quant --help`` after ``pip install`` reads it instead of importing every
    plugin (~1.7 s of CPU). ``modules`` maps the distribution's entry-point names to modules (its
    pyproject table: the entry points are not installed yet). The fingerprint is the one the
    installed package computes when its plugins are the only ones in the group; any other plugin
    installed, or any other difference, and the first call loads everything as before."""
    from importlib import import_module

    from ..plugins import load_plugins
    from . import build_app

    env = {k: v for k, v in os.environ.items() if k not in ("QUANT_LOAD_PLUGINS", "QUANT_STRICT_PLUGINS", "QUANT_TRACE_PLUGINS")}
    plugins = load_plugins(env={"QUANT_LOAD_PLUGINS": ""})
    for name in sorted(modules):
        plugins.register_module(import_module(modules[name]), name, distribution=distribution, version=version)
    app = build_app(plugins)
    entry_points = [(name, module, distribution, version) for name, module in modules.items()]
    remember(plugins, app.plugin_commands, env, entry_points)  # type: ignore[attr-defined]

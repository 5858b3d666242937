"""Loading plugins from entry points and keeping track of what each one registered.

Every plugin, first-party or not, is an entry point in the ``btc_quant`` group whose value is a
module implementing hooks from :mod:`btc_quant.core.hookspecs`. Entry points are read with
:mod:`importlib.metadata` (standard library; the ``entrypoints`` package is unmaintained and pluggy
itself uses importlib.metadata). Each one is imported on its own, so one that fails to import is
reported with its distribution, version and error, and the rest still load.

Environment variables:

``QUANT_LOAD_PLUGINS``
    Comma-separated entry-point names to load; the others are skipped. Empty string loads none.
``QUANT_STRICT_PLUGINS=1``
    A plugin that fails to load is an error instead of a warning (CI sets this).
``QUANT_TRACE_PLUGINS=1``
    Log every hook call with its arguments and results.
"""

from __future__ import annotations

import difflib
import logging
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigError, PluginError

log = logging.getLogger(__name__)

#: The kinds of thing a plugin can register, and the hook that registers each.
KINDS: dict[str, str] = {
    "strategy": "quant_register_strategies",
    "broker": "quant_register_brokers",
    "store": "quant_register_stores",
    "data_source": "quant_register_data_sources",
    "risk_check": "quant_register_risk_checks",
    "fill_model": "quant_register_fill_models",
}


@dataclass(frozen=True)
class Registration:
    """One named thing a plugin registered."""

    kind: str
    name: str
    factory: Any
    plugin: str

    @property
    def config_model(self):
        """The pydantic model for this thing's config keys, or None if it takes none."""
        return getattr(self.factory, "Config", None)

    @property
    def description(self) -> str:
        own = getattr(self.factory, "description", None)
        if isinstance(own, str) and own:
            return own
        doc = getattr(self.factory, "__doc__", None) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


@dataclass
class PluginInfo:
    """What ``quant plugins`` shows for one plugin."""

    name: str
    distribution: str | None
    version: str | None
    module: str | None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "hooks": sorted(self.hooks),
            "registered": {k: sorted(v) for k, v in sorted(self.registered.items())},
        }
        if self.error:
            out["error"] = self.error
        return out


def did_you_mean(name: str, choices) -> str:
    """``" (did you mean 'x'?)"`` when a close choice exists, else ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry:
    """Named factories by kind, each remembering which plugin registered it."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        #: plugin name -> load error, so a lookup can say why a name may be missing
        self.load_errors: dict[str, str] = {}
        #: names a plugin not imported yet registers (from the plugin cache): kind -> name -> its loader
        self._deferred: dict[str, dict[str, Callable[[], None]]] = {kind: {} for kind in KINDS}

    def defer(self, kind: str, name: str, load: Callable[[], None]) -> None:
        """Know ``name`` now; import the plugin that registers it (``load``) when it is looked up."""
        self._deferred[kind][name] = load

    def _load_deferred(self, kind: str, name: str | None = None) -> None:
        for reg_name, load in list(self._deferred[kind].items()):
            if name is None or reg_name == name:
                load()  # registers the plugin's names and drops them (every kind) from _deferred

    def forget_deferred(self, load: Callable[[], None]) -> None:
        for names in self._deferred.values():
            for reg_name in [n for n, f in names.items() if f is load]:
                del names[reg_name]

    def add(self, kind: str, name: str, factory: Any, plugin: str) -> None:
        if not isinstance(name, str) or not name or name != name.strip():
            raise PluginError(f"plugin {plugin!r} registered a {kind} with an invalid name {name!r}")
        existing = self._items[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"{kind} {name!r} is registered by two plugins: {existing.plugin!r} and {plugin!r}",
                hint="uninstall one of them, or limit what loads with QUANT_LOAD_PLUGINS",
            )
        self._items[kind][name] = Registration(kind, name, factory, plugin)

    def names(self, kind: str) -> list[str]:
        return sorted(set(self._items[kind]) | set(self._deferred[kind]))

    def all(self, kind: str) -> list[Registration]:
        self._load_deferred(kind)
        return [self._items[kind][n] for n in self.names(kind)]

    def get(self, kind: str, name: str, *, key: str | None = None) -> Registration:
        """The registration, or a :class:`ConfigError` naming ``key`` and the valid choices."""
        if name in self._deferred[kind] and name not in self._items[kind]:
            self._load_deferred(kind, name)
        try:
            return self._items[kind][name]
        except KeyError:
            choices = self.names(kind)
            label = kind.replace("_", " ")
            where = f"{key}: " if key else ""
            broken = "".join(f"; plugin {p!r} failed to load ({e})" for p, e in self.load_errors.items())
            raise ConfigError(
                f"{where}unknown {label} {name!r}{did_you_mean(name, choices)}; available: {', '.join(choices) or 'none'}{broken}",
                hint="`quant plugins` lists what is installed",
            ) from None


class PluginManager:
    """pluggy's manager plus per-plugin bookkeeping and the :class:`Registry`."""

    def __init__(self, pm: pluggy.PluginManager, *, trace: bool = False) -> None:
        self.pm = pm
        self.trace = trace
        self.hook = pm.hook
        self.registry = Registry()
        self.infos: dict[str, PluginInfo] = {}

    @property
    def failed(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.error]

    def has_impls(self, hook_name: str) -> bool:
        """True when some plugin implements ``hook_name`` (lets hot paths skip empty hooks)."""
        return bool(getattr(self.pm.hook, hook_name).get_hookimpls())

    def register_module(self, module: Any, name: str, *, distribution: str | None = None, version: str | None = None) -> None:
        """Register a plugin object (normally a module) and collect what it registers."""
        self.pm.register(module, name=name)
        info = self.infos.setdefault(name, PluginInfo(name, distribution, version, getattr(module, "__name__", None)))
        info.hooks = [impl.name for impl in self.pm.get_hookcallers(module) or []]
        for kind, hook_name in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                if impl.plugin_name != name:
                    continue
                names: list[str] = []

                def register(reg_name: str, factory: Any, _kind=kind, _names=names) -> None:
                    self.registry.add(_kind, reg_name, factory, name)
                    _names.append(reg_name)

                if self.trace:
                    log.warning("plugin trace: %s.%s(register)", name, hook_name)
                impl.function(register=register)
                if names:
                    info.registered.setdefault(kind, []).extend(names)

    def call_optional(self, hook_name: str, **kwargs) -> None:
        """Call an observer hook if any plugin implements it."""
        hook = getattr(self.pm.hook, hook_name)
        if hook.get_hookimpls():
            hook(**kwargs)


def _selected(env: dict[str, str]) -> set[str] | None:
    raw = env.get("QUANT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _strict(env: dict[str, str]) -> bool:
    return env.get("QUANT_STRICT_PLUGINS", "").lower() in ("1", "true", "yes")


#: Hooks a plugin may implement and still be imported only when a name it registered is looked up:
#: the registration hooks, and commands (only a command that needs none defers, see load_plugins).
DEFERRABLE_HOOKS = frozenset([*KINDS.values(), "quant_register_commands"])


def load_plugins(
    env: dict[str, str] | None = None, extra: dict[str, Any] | None = None, *, known: dict[str, PluginInfo] | None = None
) -> PluginManager:
    """Load every entry point of the ``btc_quant`` group (honouring ``QUANT_LOAD_PLUGINS``).

    ``extra`` maps names to plugin objects registered in addition (for tests and notebooks).
    ``known``: what each plugin registered at the last full load, from the plugin cache (the CLI
    passes it for ``quant run``). A plugin that implements nothing but registration hooks (and
    ``quant_register_commands``) is then imported only when one of its names is looked up (a run
    of ``maker_vol`` on ``sim`` imports neither ccxt nor Backtrader); its names are listed all the
    same, and its commands are not added. Any other plugin (observers, report sections) loads now.
    """
    env = dict(os.environ if env is None else env)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    trace = env.get("QUANT_TRACE_PLUGINS", "").lower() in ("1", "true", "yes")
    if trace:
        pm.trace.root.setwriter(lambda msg: log.warning("plugin trace: %s", msg.rstrip()))
        pm.enable_tracing()
    manager = PluginManager(pm, trace=trace)
    selected = _selected(env)
    seen: set[str] = set()
    for ep in sorted(metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        if selected is not None and ep.name not in selected:
            continue
        info = (known or {}).get(ep.name)
        if info is not None and info.error is None and info.module == ep.value and set(info.hooks) <= DEFERRABLE_HOOKS:
            _defer(manager, ep, info, env)
        else:
            _load_entry_point(manager, ep, env)
    for name, obj in (extra or {}).items():
        manager.register_module(obj, name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements a hook that does not exist: {exc}") from exc
    return manager


def _defer(manager: PluginManager, ep: metadata.EntryPoint, info: PluginInfo, env: dict[str, str]) -> None:
    def load() -> None:
        manager.registry.forget_deferred(load)
        _load_entry_point(manager, ep, env)
        try:
            manager.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"a plugin implements a hook that does not exist: {exc}") from exc

    for kind, names in info.registered.items():
        for name in names:
            manager.registry.defer(kind, name, load)


def _load_entry_point(manager: PluginManager, ep: metadata.EntryPoint, env: dict[str, str]) -> None:
    pm = manager.pm
    dist = getattr(ep, "dist", None)
    dist_name = dist.metadata["Name"] if dist is not None else None
    version = dist.version if dist is not None else None
    try:
        module = ep.load()
        manager.register_module(module, ep.name, distribution=dist_name, version=version)
    except PluginError:
        raise
    except Exception as exc:  # a broken plugin must not stop the others; it is reported
        if ep.name in pm.list_name_plugin() and pm.get_plugin(ep.name) is not None:
            pm.unregister(name=ep.name)
        error = f"{type(exc).__name__}: {exc}"
        manager.infos[ep.name] = PluginInfo(ep.name, dist_name, version, ep.value, error=error)
        manager.registry.load_errors[ep.name] = error
        log.warning("plugin %s (%s %s) failed to load: %s", ep.name, dist_name, version, error)
        log.debug("%s", traceback.format_exc())
        if _strict(env):
            raise PluginError(
                f"plugin {ep.name!r} ({dist_name} {version}) failed to load: {error}",
                hint="unset QUANT_STRICT_PLUGINS to skip it",
            ) from exc

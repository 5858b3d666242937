"""What a run's plugins get besides their own config: instrument, settings, registry, paths."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import ConfigError, QuantError
from .model import Instrument
from .plugins import PluginManager, Registry


@dataclass
class Runtime:
    config: RunConfig
    plugins: PluginManager
    instrument: Instrument
    data_dir: Path
    mode: str = "backtest"  # backtest | paper | live
    _store: Any = field(default=None, repr=False)

    @property
    def registry(self) -> Registry:
        return self.plugins.registry

    def store(self) -> Any:
        """The configured market-data store, built on first use."""
        if self._store is None:
            choice = self.config.store
            if choice.name not in self.registry.names("store"):
                raise ConfigError(
                    f"store: no store plugin named {choice.name!r} is installed; "
                    f"available: {', '.join(self.registry.names('store')) or 'none'}"
                )
            reg = self.registry.get("store", choice.name, key="store")
            config = choice.config if choice.config is not None else reg.config_model()
            self._store = reg.factory(config, self)
        return self._store

    @contextmanager
    def store_session(self) -> Iterator[None]:
        """The configured store's :meth:`~btc_quant.core.store.Store.session` over the block (a
        run's loads); nothing when the run names no store plugin."""
        store = None
        if self.config.store.name in self.registry.names("store"):
            try:
                store = self.store()
            except QuantError:  # unreachable or misconfigured: each read meets it as it did without a session
                store = None
        if store is None:
            yield
            return
        with store.session():
            yield

    def close(self) -> None:
        """Close the store if this runtime opened one.

        chDB allows one data directory per process, and a directory can be open in only one
        process, so a run must let go of the embedded store when it ends: the next run in the same
        process (an optimisation worker, ``--fill-band``) may use another one, and ``quant collect``
        may want this one."""
        store, self._store = self._store, None
        if store is not None and hasattr(store, "close"):
            store.close()

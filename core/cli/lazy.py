"""Deferred imports for the command modules, so that ``quant --help`` and ``quant plugins`` start
without importing numpy, pandas, pydantic models, the engine or the report.

``load_run_config = lazy("btc_quant.core.config", "load_run_config")`` is a stand-in that imports
the module on its first call and then calls the real function (classes are called the same way).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy(module: str, name: str) -> Callable[..., Any]:
    target: list[Callable[..., Any]] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not target:
            target.append(getattr(import_module(module), name))
        return target[0](*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{module}.{name}, imported on first use."
    return call

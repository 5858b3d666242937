"""btc-quant core: hook specs, plugin manager, domain model, config, engine and errors.

The core imports no plugin; it knows plugins only through the hook specs in
:mod:`btc_quant.core.hookspecs`.
"""

from .compiled_cache import use_source_keyed_cache as _use_source_keyed_cache

_use_source_keyed_cache()  # before any compiled function is defined: see btc_quant.core.compiled_cache

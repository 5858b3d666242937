"""btc-quant core: hook specs, plugin manager, domain model, config, engine and errors.

The core imports no plugin; it knows plugins only through the hook specs in
:mod:`btc_quant.core.hookspecs`.
"""

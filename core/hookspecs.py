"""Every hook a btc-quant plugin can implement.

Plugins are found through the ``btc_quant`` entry-point group; a plugin module implements hooks
with ``@hookimpl`` (re-exported by :mod:`btc_quant.sdk`)::

    from btc_quant.sdk import hookimpl

    @hookimpl
    def quant_register_strategies(register):
        register("my_grid", MyGrid)

Registration hooks receive a ``register(name, factory)`` callback. Names are short and lowercase;
registering a name that another plugin already registered is a start-up error naming both plugins.
Each factory kind has its own calling convention, written in its hook's docstring.

Observer hooks are called for their side effects (reports, notifications, exporters); their
return values are ignored. None of the hooks here is ``firstresult``: every implementation runs.
pluggy passes only the arguments an implementation names, so a new argument added to a spec
does not break existing plugins.
"""

from __future__ import annotations

import pluggy

PROJECT = "btc_quant"
ENTRY_POINT_GROUP = "btc_quant"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def quant_register_strategies(register):
    """Register strategy classes.

    Called once when the plugin manager loads. ``register(name, cls)`` takes a subclass of
    :class:`btc_quant.sdk.Strategy`; its ``Config`` (a pydantic model) validates the ``strategy.*``
    config keys, and the engine builds it as ``cls(config)``.

    Example: ``register("sma_cross", SmaCross)``; then ``quant run strategy=sma_cross strategy.fast=5``.
    Returns nothing.
    """


@hookspec
def quant_register_brokers(register):
    """Register brokers: where orders go and where fills come from.

    Called once when the plugin manager loads.

    ``register(name, cls)`` takes a subclass of :class:`btc_quant.core.broker.Broker` with a
    ``Config`` model for the ``broker.*`` keys; the engine builds it as ``cls(config, runtime)``,
    ``runtime`` being a :class:`btc_quant.core.runtime.Runtime` (instrument, account settings,
    registry, data dir). A broker that can run a backtest also implements
    :class:`btc_quant.core.broker.SimulatedBroker`.

    Example: ``register("sim", SimBroker)``; then ``quant run broker=sim``. Returns nothing.
    """


@hookspec
def quant_register_stores(register):
    """Register market-data stores (where klines and funding rates are kept).

    Called once when the plugin manager loads.

    ``register(name, cls)`` takes a class with a ``Config`` model for the ``store.*`` keys, built as
    ``cls(config, runtime)``; it reads and writes bars as described by
    :class:`btc_quant.core.store.Store`.

    Example: ``register("chdb", ChdbStore)``; then ``quant data ls store=chdb``. Returns nothing.
    """


@hookspec
def quant_register_data_sources(register):
    """Register market-data sources (exchanges to fetch history and live bars from).

    Called once when the plugin manager loads.

    ``register(name, cls)`` takes a class with a ``Config`` model for the ``exchange.*`` keys, built
    as ``cls(config, runtime)``.

    Example: ``register("binanceusdm", CcxtSource)``; then ``quant data fetch exchange=binanceusdm``.
    Returns nothing.
    """


@hookspec
def quant_register_risk_checks(register):
    """Register pre-trade risk checks.

    Called once when the plugin manager loads.

    ``register(name, cls)`` takes a class with a ``Config`` model for the ``risk.<name>.*`` keys,
    built as ``cls(config)``. Its ``check(order, state)`` is called for every order before the
    broker sees it and returns None to accept or a one-line reason to reject (see
    :class:`btc_quant.core.risk.RiskCheck`). Checks run in the order ``risk.checks`` lists them.

    Example: ``register("max_notional", MaxNotional)``; then ``quant run risk.checks=max_notional
    risk.max_notional.limit=50000``. Returns nothing.
    """


@hookspec
def quant_register_fill_models(register):
    """Register fill models: the rule deciding whether a resting limit order fills on a bar.

    Called once when the plugin manager loads.

    ``register(name, model)`` takes a :class:`btc_quant.core.fills.FillModel` instance. Brokers
    that simulate fills look it up by the ``broker.fill_model`` key.

    Example: ``register("touch", FillModel(name="touch", strict=False))``. Returns nothing.
    """


@hookspec
def quant_register_commands(cli, plugins):
    """Add commands to the ``quant`` command line.

    Called when the CLI starts, with the root ``typer.Typer`` app and the loaded
    :class:`btc_quant.core.plugins.PluginManager` (for commands that call other hooks, e.g. the
    report sections). Use ``@cli.command()`` or ``cli.add_typer(...)``. Returns nothing.
    """


@hookspec
def quant_on_run_start(run):
    """Observe the start of a run (backtest, paper or live).

    Called after the strategy's ``on_start``, with ``run`` a :class:`btc_quant.core.results.RunInfo`
    (run id, mode, resolved config, instrument). Return value ignored.
    """


@hookspec
def quant_on_order(order, run):
    """Observe an order's status change (accepted, rejected, canceled, expired, filled).

    Called after the strategy's ``on_order``, with the new :class:`btc_quant.core.model.Order` and the
    run's :class:`~btc_quant.core.results.RunInfo`. Return value ignored.
    """


@hookspec
def quant_on_fill(fill, run):
    """Observe a fill.

    Called after the strategy's ``on_fill``, with the :class:`btc_quant.core.model.Fill` and the run's
    :class:`~btc_quant.core.results.RunInfo`. Return value ignored.
    """


@hookspec
def quant_on_run_end(result):
    """Observe the end of a run, e.g. to write a report or send a notification.

    Called once after the strategy's ``on_stop``, with the :class:`btc_quant.core.results.RunResult`
    (equity curve, fills, orders, metrics, the per-bar series, funding, diagnostics: typed fields).
    A plugin may keep its own additions in ``result.extra`` (scalars and per-bar Series are saved
    with the run). Return value ignored.
    """


@hookspec
def quant_report_sections(result):
    """Add sections to a run's HTML report (``quant report``, ``quant run --report``).

    Called once per report with the :class:`btc_quant.core.results.RunResult` (a fresh run or one
    loaded from disk; ``result.info.strategy`` names the strategy, ``result.diagnostics``
    holds what :meth:`Strategy.diagnostics` returned). Return a
    :class:`btc_quant.sdk.ReportSection`, a list of them, or None when the run is not yours.
    Sections are shown after the standard ones, ordered by their ``order`` then title::

        @hookimpl
        def quant_report_sections(result):
            if result.info.strategy == "maker_vol":
                return ReportSection("Grid", figure=grid_figure(result.diagnostics))
    """


@hookspec
def quant_on_alert(alert):
    """Observe an alert raised by the watchdog of ``quant serve`` (e.g. to forward or record it).

    Called in the ``quant serve`` process for every alert, before it is sent to ``alerts.urls``,
    with an ``Alert`` (made by the serve plugin, ``plugins/serve/alerts.py``): ``key`` (``<bot>:<kind>``), ``bot``,
    ``kind`` (``dead``, ``stream``, ``market_data``, ``orders``, ``liquidation``, ``halted``,
    ``reconcile``, ``risk``, ``fills``), ``level`` (``alert``, ``reminder``, ``recovered``, ``info``),
    ``title``, ``message`` and ``ts`` (epoch seconds). An exception raised here is logged and the
    watchdog carries on. Return value ignored::

        @hookimpl
        def quant_on_alert(alert):
            if alert.level == "alert":
                page_the_on_call_person(alert.title, alert.message)
    """

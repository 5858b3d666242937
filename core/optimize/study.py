"""``optimize()``: the one call ``quant optimize`` and notebooks make.

    from btc_quant.core.optimize import optimize
    result = optimize(["strategy=sma_cross", "search.fast=2:30", "search.slow=20:120:10", "trials=40"])
    result.best_params, result.trials.head()

Walk-forward (``walk_forward.train=20d walk_forward.test=5d``) cuts the bars into rolling windows:
each train window gets its own study, its best feasible parameters run on the test window that
follows, and the test-window equity curves are chained (each one compounding from where the
previous ended) into one out-of-sample curve whose metrics are reported. Each test run starts flat
with fresh indicators: a strategy with a long warm-up trades less at the start of each window.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import RunConfig, gather, resolve
from ..data import ms_to_iso, timeframe_ms
from ..errors import ConfigError, StoreError
from ..metrics import compute_metrics
from ..plugins import PluginManager, load_plugins
from ..run import build_runtime, load_bars
from .runner import INTERRUPTED, BarsOnWorkers, ProgressEvent, StopFlag, StudyRunner, best_trial, dask_client, finished_trials
from .space import (
    Constraint,
    OptimizeConfig,
    SearchSpace,
    check_objective,
    direction_for,
    load_optimize_config,
    metric_names,
    split_settings,
    study_fingerprint,
)

log = logging.getLogger(__name__)


@dataclass
class OptimizeResult:
    """What a study produced; files are in ``out``."""

    study_name: str
    objective: str
    direction: str
    run_config: RunConfig
    best_params: dict[str, Any] | None
    best_value: float | None
    best_metrics: dict[str, Any]
    trials: pd.DataFrame
    out: Path
    files: dict[str, Path] = field(default_factory=dict)
    interrupted: bool = False
    walk_forward: pd.DataFrame | None = None
    oos_equity: pd.Series | None = None
    oos_metrics: dict[str, Any] | None = None
    workers: dict[str, set[int]] = field(default_factory=dict)
    studies: list[Any] = field(default_factory=list)
    best_config: RunConfig | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {
            "study": self.study_name,
            "objective": self.objective,
            "direction": self.direction,
            "trials": int(len(self.trials)),
            "complete": int((self.trials["state"] == "COMPLETE").sum()) if len(self.trials) else 0,
            "best_value": self.best_value,
            "best_params": self.best_params,
            "interrupted": self.interrupted,
            "files": {k: str(v) for k, v in self.files.items()},
        }
        if self.oos_metrics is not None:
            out["out_of_sample"] = self.oos_metrics
        return out


def trials_frame(study, window: int | None = None) -> pd.DataFrame:
    """One row per trial: number, state, value, parameters, metrics, feasibility, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": t.number}
        if window is not None:
            row["window"] = window
        row["state"] = t.state.name
        row["value"] = t.value
        row.update({f"param.{k}": v for k, v in t.params.items()})
        attrs = dict(t.user_attrs)
        run = dict(attrs.pop("run", {}))
        row.update(run.pop("metrics", {}))
        row.update(run)
        row.update(attrs)
        row["duration_s"] = t.duration.total_seconds() if t.duration else None
        rows.append(row)
    frame = pd.DataFrame(rows)
    if INTERRUPTED in frame:
        frame[INTERRUPTED] = frame[INTERRUPTED].astype("boolean").fillna(False)
    return frame


def _windows(start_ms: int, end_ms: int, train_ms: int, test_ms: int, step_ms: int) -> list[tuple[int, int, int]]:
    out, t = [], start_ms
    while t + train_ms + test_ms <= end_ms:
        out.append((t, t + train_ms, t + train_ms + test_ms))
        t += step_ms
    return out


def _stitch(pieces: list[dict[str, Any]]) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame, np.ndarray, float]:
    """Chain test-window runs: each window's equity, fills and trades scaled to start where the last ended."""
    initial = float(pieces[0]["equity"].iloc[0])
    level = initial
    equities, fills, trades, positions = [], [], [], []
    for piece in pieces:
        scale = level / float(piece["equity"].iloc[0])
        equities.append(piece["equity"] * scale)
        f = piece["fills"].copy()
        if len(f):
            f["fee"] = f["fee"] * scale
            f["quantity"] = f["quantity"] * scale
        fills.append(f)
        tr = piece["trades"].copy()
        if len(tr) and "pnl" in tr:
            tr["pnl"] = tr["pnl"] * scale
        trades.append(tr)
        if piece.get("position") is not None:
            positions.append(np.asarray(piece["position"]))
        level = float(equities[-1].iloc[-1])
    equity = pd.concat(equities)
    fills_all = pd.concat([f for f in fills if len(f)]) if any(len(f) for f in fills) else pd.DataFrame()
    trades_all = pd.concat([t for t in trades if len(t)]) if any(len(t) for t in trades) else pd.DataFrame()
    position = np.concatenate(positions) if positions else np.zeros(len(equity))
    return equity, fills_all, trades_all, position, initial


@dataclass
class StudyPlan:
    """A study's settings, validated: what :func:`optimize` will run (nothing run yet)."""

    base: RunConfig
    settings: OptimizeConfig
    space: SearchSpace
    constraints: list[Constraint]
    name: str
    direction: str
    out: Path


def plan_study(raw: dict[str, Any], plugins: PluginManager) -> StudyPlan:
    """Validate a merged settings dict; every mistake is one :class:`ConfigError` naming its key."""
    run_raw, opt_raw = split_settings(raw)
    opt = load_optimize_config(opt_raw)
    base = resolve(run_raw, plugins.registry)
    space = SearchSpace.from_config(opt.search, base)
    metrics = metric_names()
    check_objective(opt, metrics)
    constraints = [Constraint.parse(text, metrics) for text in opt.constraints]
    if opt.sampler == "grid":
        space.grid()  # a continuous range raises here, naming its key
    name = opt.study or f"{base.strategy.name}-{study_fingerprint(base, opt)}"
    out = Path(opt.out or Path("optimize") / name)
    return StudyPlan(base, opt, space, constraints, name, direction_for(opt), out)


def optimize(
    settings: Iterable[str] | dict[str, Any] = (),
    *,
    plugins: PluginManager | None = None,
    config_path: Path | str | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    stop: StopFlag | None = None,
) -> OptimizeResult:
    """Run (or resume) a study from ``key=value`` settings (or an already merged dict)."""
    plugins = plugins or load_plugins()
    raw = dict(settings) if isinstance(settings, dict) else gather(list(settings), config_path=config_path)
    plan = plan_study(raw, plugins)
    base, opt, space, name, out = plan.base, plan.settings, plan.space, plan.name, plan.out
    out.mkdir(parents=True, exist_ok=True)
    storage = opt.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    if opt.storage:
        check_storage(opt.storage)  # before the bars are read and the workers start
    runtime = build_runtime(base, plugins)
    try:
        loaded = load_bars(base, runtime)
        bars = loaded.bars
        funding = _funding_history(base, runtime, bars)
    finally:
        runtime.close()
    windows: list[tuple[int, int, int]] = []
    if opt.walk_forward:
        wf = opt.walk_forward
        step = wf.step or wf.test
        ms = lambda d: int(d.total_seconds() * 1000)  # noqa: E731
        windows = _windows(bars.start_ms, bars.end_ms + timeframe_ms(base.timeframe), ms(wf.train), ms(wf.test), ms(step))
        if not windows:
            raise ConfigError(
                f"walk_forward: train + test ({wf.train} + {wf.test}) is longer than the bars "
                f"({ms_to_iso(bars.start_ms)} .. {ms_to_iso(bars.end_ms)})",
                hint="shorten walk_forward.train/test or widen data.start/data.end",
            )
    stop = stop or StopFlag()
    with stop.on_sigint(), dask_client(opt) as client:
        token = uuid.uuid4().hex[:12]
        installed = BarsOnWorkers(token, bars, funding)
        client.register_plugin(installed)
        runner = StudyRunner(
            client=client,
            bars=token,
            run_raw=split_settings(raw)[0],
            registry=plugins.registry,
            space=space,
            settings=opt,
            constraints=plan.constraints,
            storage=storage,
            stop=stop,
            progress=progress,
        )
        if not windows:
            study = runner.run(name, None, None)
            result = _plain_result(runner, study, base, name, out, plan.direction)
        else:
            result = _walk_forward(runner, windows, base, name, out, plan.direction)
        if result.best_params is not None:
            result.best_config = runner.trial_config(result.best_params)
        result.workers = runner.workers_seen
        result.interrupted = stop.set
        result.notes.extend(loaded.notes)
        if opt.cluster:  # a shared cluster outlives the study: free the workers' copies
            client.unregister_worker_plugin(installed.name)
    from .report import write_outputs

    write_outputs(result, space)
    return result


def _funding_history(base: RunConfig, runtime, bars) -> pd.DataFrame | None:
    """Funding history from the store, read once here for every worker (None: the broker's constant)."""
    if base.store.name not in runtime.registry.names("store") or getattr(base.broker.config, "funding", None) != "auto":
        return None
    try:
        return runtime.store().read_funding(base.exchange.name, base.symbol, bars.start_ms, bars.end_ms + 1)
    except (StoreError, NotImplementedError) as exc:
        log.warning("funding history unavailable (%s); runs use the broker's funding_rate", exc)
        return None


def _best_of(study, direction: str) -> tuple[dict | None, float | None, dict]:
    best = best_trial(study, direction)
    if best is None:
        return None, None, {}
    return dict(best.params), best.value, dict(best.user_attrs.get("run", {}).get("metrics", {}))


def _plain_result(runner: StudyRunner, study, base: RunConfig, name: str, out: Path, direction: str) -> OptimizeResult:
    params, value, metrics = _best_of(study, direction)
    result = OptimizeResult(
        study_name=name,
        objective=runner.settings.objective,
        direction=direction,
        run_config=base,
        best_params=params,
        best_value=value,
        best_metrics=metrics,
        trials=trials_frame(study),
        out=out,
        studies=[study],
    )
    if params is None and finished_trials(study):
        result.notes.append("no complete trial met every constraint; no best parameters")
    return result


def _walk_forward(runner: StudyRunner, windows, base: RunConfig, name: str, out: Path, direction: str) -> OptimizeResult:
    rows, pieces, frames, studies = [], [], [], []
    notes: list[str] = []
    last_params = None
    for i, (a, b, c) in enumerate(windows):
        if runner.stop.set:
            break
        study = runner.run(f"{name}-w{i}", a, b, label=f"window {i + 1}/{len(windows)}")
        studies.append(study)
        frames.append(trials_frame(study, window=i))
        params, value, _ = _best_of(study, direction)
        row: dict[str, Any] = {
            "window": i,
            "train_start": ms_to_iso(a),
            "train_end": ms_to_iso(b),
            "test_start": ms_to_iso(b),
            "test_end": ms_to_iso(c),
            "in_sample": value,
        }
        if params is None or runner.stop.set:
            if params is None:
                notes.append(f"window {i}: no feasible trial; its test window is left out")
            rows.append(row)
            continue
        row.update({f"param.{k}": v for k, v in params.items()})
        answer = runner.evaluate_once(params, b, c)
        if "error" in answer:
            notes.append(f"window {i}: out-of-sample run failed: {answer['error']}")
            rows.append(row)
            continue
        oos = answer["metrics"]
        row["out_of_sample"] = oos.get(runner.settings.objective)
        row.update({f"oos.{k}": oos.get(k) for k in ("total_return", "max_drawdown", "trades", "sharpe")})
        rows.append(row)
        pieces.append(answer)
        last_params = params
    table = pd.DataFrame(rows)
    oos_equity = oos_metrics = None
    if pieces:
        equity, fills, trades, position, initial = _stitch(pieces)
        oos_equity = equity.rename("equity")
        oos_metrics = compute_metrics(equity, fills, trades, initial_equity=initial, position=position)
    trials = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    result = OptimizeResult(
        study_name=name,
        objective=runner.settings.objective,
        direction=direction,
        run_config=base,
        best_params=last_params,
        best_value=oos_metrics.get(runner.settings.objective) if oos_metrics else None,
        best_metrics=oos_metrics or {},
        trials=trials,
        out=out,
        walk_forward=table,
        oos_equity=oos_equity,
        oos_metrics=oos_metrics,
        studies=studies,
        notes=notes,
    )
    return result


def check_storage(url: str) -> None:
    """Open an Optuna RDB storage URL once, turning the three ways it fails (a string that is not
    a database URL, a database whose driver is not installed, one that cannot be opened or reached)
    into one line naming ``storage`` and the URL without its password."""
    import optuna
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(
            f"storage: {url!r} is not a database URL", hint="use an Optuna RDB URL such as sqlite:///study.db or postgresql://user@host/db"
        ) from None
    try:
        optuna.storages.RDBStorage(url)
    except ImportError as exc:
        driver = make_url(url).get_backend_name()
        raise ConfigError(
            f"storage: {shown}: the {driver} database driver is not installed ({_first_line(exc)})",
            hint=f"pip install the driver for {driver} (e.g. psycopg2-binary, pymysql), or use sqlite:///study.db",
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise ConfigError(
            f"storage: {shown}: cannot open it ({_first_line(exc)})",
            hint="check that the database exists and is reachable, and the user's rights",
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

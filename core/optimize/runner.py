"""Running a study: Optuna asks for parameters here, Dask workers run the backtests.

The driver (this process) owns the Optuna study; workers only run backtests and send back
metrics. Optuna works on an in-memory copy of the study and finished trials are written to the
storage (SQLite by default, any RDB URL) in batches, so the storage is written by one process and
costs the driver little CPU (see :class:`TrialSaver`). The bars are read once, here, and installed
on every worker once by a Dask worker plugin (:class:`BarsOnWorkers`, also applied to workers that
join later): trials name the bars by a token and use the copy already in their worker's memory.
Nothing is shipped per trial, Dask never spills or re-reads them, and workers need no access to
the store (so a remote cluster works too). Short trials run several to a task
(:func:`evaluate_batch`), so Dask's own cost per task is shared by several trials.

Interrupting (Ctrl-C, SIGINT) stops asking for trials; tasks of several trials end after the
trial they are running, single trials and tasks not started are cancelled, and the trials that did
not run are marked ``interrupted``; they do not count towards ``trials``, so running the same
command again resumes the study and runs exactly what is missing.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import product
from typing import Any

import numpy as np
import optuna
import pandas as pd
from distributed.diagnostics.plugin import WorkerPlugin
from optuna.trial import TrialState

from ..config import RunConfig, merge_layers, parse_assignments, resolve
from ..data import BarArrays
from ..errors import ConfigError, QuantError
from ..plugins import PluginManager, Registry, load_plugins
from ..run import build_engine, build_runtime, run_engine
from ..store import Store
from .space import Constraint, OptimizeConfig, SearchSpace, direction_for

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"

# ----------------------------------------------------------------------------------------------
# Worker side

_worker_plugins: PluginManager | None = None
#: Bars installed on this worker process by :class:`BarsOnWorkers`, by token.
_worker_bars: dict[str, PreloadedStore] = {}


class PreloadedStore(Store):
    """The driver's bars and funding history, served to a worker's runs instead of the real store
    (workers never open the store: chDB allows one process per data directory)."""

    def __init__(self, bars: BarArrays, funding: pd.DataFrame | None):
        self.bars = bars
        self.funding = funding

    def read_bars(self, exchange, symbol, timeframe, start_ms=None, end_ms=None) -> BarArrays:
        return self.bars.between(start_ms, end_ms)

    def read_funding(self, exchange, symbol, start_ms=None, end_ms=None) -> pd.DataFrame:
        frame = self.funding if self.funding is not None else pd.DataFrame({"ts": np.empty(0, np.int64), "rate": np.empty(0)})
        ts = frame["ts"].to_numpy(np.int64)
        keep = np.ones(len(ts), bool)
        if start_ms is not None:
            keep &= ts >= start_ms
        if end_ms is not None:
            keep &= ts < end_ms
        return frame[keep]


class BarsOnWorkers(WorkerPlugin):
    """Dask worker plugin that puts one copy of the bars (and funding history) in each worker's memory."""

    def __init__(self, token: str, bars: BarArrays, funding: pd.DataFrame | None = None):
        self.token = token
        self.name = f"btc-quant-bars-{token}"
        self.bars = bars
        self.funding = funding

    def setup(self, worker=None) -> None:
        _worker_bars[self.token] = PreloadedStore(self.bars, self.funding)
        keep_freed_memory()

    def teardown(self, worker=None) -> None:
        _worker_bars.pop(self.token, None)


class HeartbeatAtClose(logging.Filter):
    """Leaves out a worker's "Failed to communicate with scheduler during heartbeat." (logged with its
    traceback, at ERROR). In a cluster the optimiser starts, the scheduler goes away only when the
    optimiser closes it -- at the end of a study, or after Ctrl-C -- and a heartbeat in flight at
    that moment fails: an expected end, not an error to print under "interrupted"."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to communicate with scheduler during heartbeat")


class QuietClose(WorkerPlugin):
    """Dask worker plugin: :class:`HeartbeatAtClose` on the worker's logger (local clusters only)."""

    name = "btc-quant-quiet-close"

    def setup(self, worker=None) -> None:
        worker_log = logging.getLogger("distributed.worker")
        if not any(isinstance(f, HeartbeatAtClose) for f in worker_log.filters):
            worker_log.addFilter(HeartbeatAtClose())


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Let this process's malloc keep freed arrays for the next trial instead of giving them back.

    Dask starts workers with MALLOC_TRIM_THRESHOLD_=64 KiB, so that freed memory goes back to the
    system at once. Setting it also fixes glibc's mmap threshold at 128 KiB: every array of a
    backtest (one 130k-bar column is 1 MiB) is then a fresh mmap whose pages fault in on first
    touch and are unmapped when freed. A sma_cross trial cost 70-78 ms of CPU in a worker against
    40 ms in a plain process, and two workers faulting pages at once slowed each other down
    (bench/RESULTS.md, issue 7). Here arrays up to 32 MiB (glibc's own ceiling for its dynamic
    threshold) come from the heap, which keeps up to 64 MiB of freed memory. Done at run time
    with mallopt, so it holds on any cluster's workers; False where the C library has no mallopt
    (not glibc), which changes nothing else."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(mallopt(_M_TRIM_THRESHOLD, 64 * 2**20))


def evaluate(
    config: dict[str, Any], bars_token: str, start_ms: int | None, end_ms: int | None, keep_result: bool = False
) -> dict[str, Any]:
    """Run one backtest on a worker, on its installed bars; the plugins load once per process."""
    global _worker_plugins
    started = time.perf_counter()
    if _worker_plugins is None:
        _worker_plugins = load_plugins()
    store = _worker_bars.get(bars_token)
    if store is None:
        raise RuntimeError(f"bars {bars_token} are not installed on this worker")
    bars = store.bars
    out: dict[str, Any] = {"worker": f"{socket.gethostname()}:{os.getpid()}", "bars_id": id(bars)}
    try:
        cfg = resolve(config, _worker_plugins.registry)
        runtime = build_runtime(cfg, _worker_plugins)
        runtime._store = store
        window = bars.between(start_ms, end_ms)
        if len(window) == 0:
            raise QuantError("no bars in the window")
        try:
            result = run_engine(build_engine(cfg, runtime), window)  # a compiled path when the strategy has one (maker_vol)
        finally:
            runtime.close()
    except QuantError as exc:
        out["error"] = str(exc)
        return out
    out["metrics"] = result.metrics
    out["elapsed_s"] = time.perf_counter() - started
    if keep_result:
        out["equity"] = result.equity
        out["trades"] = result.trades
        out["fills"] = result.fills
        out["position"] = result.position
    return out


#: Runs the driver stopped (Ctrl-C): their batches end after the trial that is running.
_stopped_runs: set[str] = set()


def evaluate_batch(
    configs: list[dict[str, Any]], bars_token: str, start_ms: int | None, end_ms: int | None, run: str
) -> list[dict[str, Any]]:
    """Run trials one after another on a worker; one answer per trial run, in order.

    Ends early, after the trial that is running, once the driver stopped ``run`` (:func:`stop_run`),
    so that a stopped study still gets every finished trial. An exception (a bug in a strategy)
    is that trial's answer; the trials batched with it still run."""
    answers: list[dict[str, Any]] = []
    for config in configs:
        if run in _stopped_runs:
            break
        try:
            answers.append(evaluate(config, bars_token, start_ms, end_ms))
        except Exception as exc:  # recorded on the trial by the driver
            answers.append({"exception": f"{type(exc).__name__}: {exc}"})
    return answers


def stop_run(run: str) -> None:
    """Run on every worker when the driver stops: batches of ``run`` run no further trial."""
    _stopped_runs.add(run)


# ----------------------------------------------------------------------------------------------
# Driver side

#: A task runs several trials in a row when trials are short, so that Dask's cost per task (~5-10
#: ms of driver CPU for the scheduler's and the client's bookkeeping and the ~10 messages a task
#: takes) is paid about once per TASK_SECONDS of backtests; at most MAX_BATCH trials a task.
#: A sampler that learns from finished trials (TPE) asks for every trial of a batch before any of
#: them has a result, so its batches stay small (MAX_BATCH_LEARNING); random and grid samplers
#: pick the same trials however they are batched.
TASK_SECONDS = 1.0
MAX_BATCH = 32
MAX_BATCH_LEARNING = 8


#: Dask settings for the LocalCluster the optimiser starts. The tasks are alike (trials of one
#: study, two per worker in flight), so the scheduler's work stealing has little to balance, and
#: nobody looks at the dashboard's profiles;
#: the defaults' periodic chores (stealing every 100 ms, a 20 ms event-loop tick per server, the
#: nannies' memory check every 100 ms, a stack sample every 10 ms in each worker) cost ~15% of a
#: core while idle on a 2-core machine (measured: bench/RESULTS.md, issue 7), CPU taken from the
#: backtests. Memory limits still hold, checked once a second.
QUIET_DASK = {
    "distributed.scheduler.work-stealing": False,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}


@contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """A LocalCluster of ``workers`` single-threaded worker processes on 127.0.0.1, tuned for trials."""
    import dask
    from distributed import LocalCluster

    # The nannies hand the config to the worker processes they start; the scheduler and the
    # nannies read theirs when they start, so the settings stay set while the cluster lives.
    with dask.config.set(QUIET_DASK), _sigint_ignored_by_children():
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    with dask.config.set(QUIET_DASK), cluster:
        yield cluster


@contextmanager
def dask_client(settings: OptimizeConfig) -> Iterator[Any]:
    """A client of ``settings.cluster``, or of a LocalCluster of worker processes on 127.0.0.1."""
    from distributed import Client

    # distributed sets its own loggers' levels when imported; its INFO lines are not ours to show.
    for name in ("distributed", "distributed.scheduler", "distributed.core", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # closing kills a worker still inside a backtest after Ctrl-C; that is expected, not a warning
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    if settings.cluster:
        try:
            client = Client(settings.cluster, timeout="15s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cluster: cannot reach the Dask scheduler at {settings.cluster} ({exc})") from None
        with client:
            yield client
        return
    with local_cluster(settings.workers or os.cpu_count() or 1) as cluster, Client(cluster) as client:
        client.register_plugin(QuietClose())  # the cluster closes with the study: its heartbeats may fail then
        yield client


@contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """Start processes with SIGINT ignored (a process inherits that): a terminal's Ctrl-C reaches the
    whole process group, and the driver, not each worker, decides what stopping means."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class ProgressEvent:
    label: str
    done: int
    total: int
    best: float | None


class StopFlag:
    """Set by the first SIGINT; a second one raises KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.set = False

    @contextmanager
    def on_sigint(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            if self.set:
                raise KeyboardInterrupt
            self.set = True
            log.warning("stopping: finishing bookkeeping, keeping finished trials (Ctrl-C again to abort)")

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards the budget: finished and not interrupted."""
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not t.user_attrs.get(INTERRUPTED)]


def best_trial(study: optuna.Study, direction: str) -> optuna.trial.FrozenTrial | None:
    """Best complete trial that meets every constraint."""
    feasible = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("run", {}).get("feasible", True)
    ]
    if not feasible:
        return None
    pick = max if direction == "maximize" else min
    return pick(feasible, key=lambda t: t.value)


class TrialSaver:
    """Copies finished trials of the driver's in-memory study to the stored study, in batches.

    Optuna on an RDB storage costs the driver ~30-60 ms of CPU per trial (a dozen SQLAlchemy
    transactions for ask, each suggest, the attributes and tell), CPU that the workers' backtests
    need on a small machine. Here Optuna works in memory (well under a millisecond per trial) and
    finished trials reach the storage about ``every`` seconds after they finish, all the trials
    of a batch in one transaction of bulk INSERTs (:func:`_insert_trials`; ``Study.add_trials``
    costs ~10 ms a trial). The end of a study and Ctrl-C save everything; a driver killed
    outright (SIGKILL) loses the trials of its last second or so.
    """

    def __init__(self, stored: optuna.Study, memory: optuna.Study, every: float = 1.0):
        self.stored = stored
        self.memory = memory
        self.every = every
        self.pending: list[int] = []
        self.saved_at = time.monotonic()

    def finished(self, trial: optuna.trial.Trial) -> None:
        self.pending.append(trial.number)

    def save(self, force: bool = False) -> None:
        if not self.pending or (not force and time.monotonic() - self.saved_at < self.every):
            return
        trials = self.memory.get_trials(deepcopy=False)  # in memory, in number order
        _insert_trials(self.stored, [trials[number] for number in self.pending])
        self.pending.clear()
        self.saved_at = time.monotonic()


def _insert_trials(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> None:
    """``study.add_trials(trials)``, as a handful of bulk INSERTs when the storage is Optuna's RDB
    storage.

    ``add_trial`` costs ~10 ms of CPU a trial on SQLite (an ORM flush and a lookup of the trial
    per parameter and attribute); the driver shares the machine with the workers, so that time is
    taken from the backtests. Here the rows ``add_trial`` would write go in as one INSERT per
    table for the whole batch, through Optuna's own table models (so the installed Optuna's schema
    is what is written), after the same checks: the study locked, the trials validated, each
    parameter's distribution compatible with the one already stored. These are Optuna internals;
    if they are not there, this falls back to ``add_trials``."""
    try:
        import sqlalchemy as sa
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import RDBStorage, _create_scoped_session
    except ImportError:
        study.add_trials(trials)
        return
    backend = getattr(study._storage, "_backend", study._storage)
    if not isinstance(backend, RDBStorage) or not hasattr(models.TrialModel, "_datetime_start_utc"):
        study.add_trials(trials)
        return
    if not trials:
        return
    for trial in trials:
        trial._validate()  # what add_trial checks first
    study_id = study._study_id
    with _create_scoped_session(backend.scoped_session) as session:
        # the lock add_trial takes: trial numbers are counted per study
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        _check_stored_distributions(session, study_id, trials)
        first = session.scalar(sa.select(sa.func.count(models.TrialModel.trial_id)).where(models.TrialModel.study_id == study_id))
        session.execute(
            sa.insert(models.TrialModel),
            [
                {
                    "study_id": study_id,
                    "number": first + k,  # what count_past_trials gives: ids grow in insertion order
                    "state": trial.state,
                    "_datetime_start_utc": _naive_utc(trial.datetime_start),
                    "_datetime_complete_utc": _naive_utc(trial.datetime_complete),
                }
                for k, trial in enumerate(trials)
            ],
        )
        ids = dict(
            session.execute(
                sa.select(models.TrialModel.number, models.TrialModel.trial_id).where(
                    models.TrialModel.study_id == study_id, models.TrialModel.number >= first
                )
            ).all()
        )
        rows: dict[type, list[dict[str, Any]]] = {
            models.TrialValueModel: [],
            models.TrialParamModel: [],
            models.TrialUserAttributeModel: [],
            models.TrialSystemAttributeModel: [],
            models.TrialIntermediateValueModel: [],
        }
        for k, trial in enumerate(trials):
            trial_id = ids[first + k]
            values = (
                trial.values if trial.values is not None and len(trial.values) > 1 else ([trial.value] if trial.value is not None else [])
            )
            for objective, value in enumerate(values):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                rows[models.TrialValueModel].append({"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind})
            for name, value in trial.params.items():
                distribution = trial.distributions[name]
                rows[models.TrialParamModel].append(
                    {
                        "trial_id": trial_id,
                        "param_name": name,
                        "param_value": distribution.to_internal_repr(value),
                        "distribution_json": optuna.distributions.distribution_to_json(distribution),
                    }
                )
            for model, attrs in (
                (models.TrialUserAttributeModel, trial.user_attrs),
                (models.TrialSystemAttributeModel, trial.system_attrs),
            ):
                rows[model].extend({"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items())
            for step, value in trial.intermediate_values.items():
                stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
                rows[models.TrialIntermediateValueModel].append(
                    {"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": kind}
                )
        for model, table_rows in rows.items():
            if table_rows:
                session.execute(sa.insert(model), table_rows)


def _check_stored_distributions(session: Any, study_id: int, trials: list[optuna.trial.FrozenTrial]) -> None:
    """Each parameter's distribution must be compatible with the one the study already stores
    for it (``add_trial`` checks the same, and raises the same ValueError)."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    names = {name for trial in trials for name in trial.distributions}
    for name in names:
        stored = session.scalar(
            sa.select(models.TrialParamModel.distribution_json)
            .join(models.TrialModel)
            .where(models.TrialModel.study_id == study_id, models.TrialParamModel.param_name == name)
            .limit(1)
        )
        if stored is None:
            continue
        previous = optuna.distributions.json_to_distribution(stored)
        for trial in trials:
            if name in trial.distributions:
                optuna.distributions.check_distribution_compatibility(previous, trial.distributions[name])


def _naive_utc(moment: datetime | None) -> datetime | None:
    """Optuna's RDB storage keeps naive UTC times; a FrozenTrial holds naive local times."""
    return None if moment is None else moment.astimezone(UTC).replace(tzinfo=None)


@dataclass
class StudyRunner:
    """Runs studies for one optimisation: the client, the broadcast bars, the space and the rules."""

    client: Any
    bars: str  # token of the bars installed on every worker
    run_raw: dict[str, Any]
    registry: Registry
    space: SearchSpace
    settings: OptimizeConfig
    constraints: list[Constraint]
    storage: str
    stop: StopFlag = field(default_factory=StopFlag)
    progress: Callable[[ProgressEvent], None] | None = None
    workers_seen: dict[str, set[int]] = field(default_factory=dict)
    _best: float | None = None
    _elapsed: list[float] = field(default_factory=list)  # backtest seconds of the trials so far

    @property
    def direction(self) -> str:
        return direction_for(self.settings)

    def trial_config(self, values: dict[str, Any]) -> RunConfig:
        """The run config of one trial: the base settings plus the sampled values."""
        return resolve(merge_layers(self.run_raw, parse_assignments(self.space.assignments(values))), self.registry)

    def _sampler(self) -> optuna.samplers.BaseSampler:
        seed = self.settings.seed
        if self.settings.sampler == "tpe":
            # Constraint values are set on each trial (Trial.set_constraint); TPE reads them there.
            # constant_liar: trials still running count as bad ones, so the trials in flight
            # together are not sampled next to each other.
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        # grid: the driver enqueues the grid points itself (see _next_grid_point), so that
        # interrupted points are run again on resume; the random sampler never gets asked.
        return optuna.samplers.RandomSampler(seed=seed)

    def open_study(self, name: str) -> tuple[optuna.Study, optuna.Study]:
        """The stored study (created if new) and a working copy in memory holding its finished trials."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        stored = optuna.create_study(study_name=name, storage=self.storage, direction=self.direction, load_if_exists=True)
        # Trials left RUNNING in the storage (by an older version killed outright): mark them interrupted.
        for stale in stored.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            trial = optuna.trial.Trial(stored, stale._trial_id)
            trial.set_user_attr(INTERRUPTED, True)
            stored.tell(stale.number, state=TrialState.FAIL)
        memory = optuna.create_study(study_name=name, sampler=self._sampler(), direction=self.direction)
        memory.add_trials([t for t in stored.get_trials(deepcopy=False) if t.state.is_finished()])
        return stored, memory

    def _remaining_grid(self, study: optuna.Study) -> list[dict[str, Any]]:
        grid = self.space.grid()
        names = list(grid)
        done = {tuple(str(t.params.get(n)) for n in names) for t in finished_trials(study)}
        return [dict(zip(names, combo)) for combo in product(*grid.values()) if tuple(map(str, combo)) not in done]

    def budget(self, study: optuna.Study) -> int:
        total = self.settings.trials
        if self.settings.sampler == "grid":
            total = min(total, len(finished_trials(study)) + len(self._remaining_grid(study)))
        return total

    def run(self, name: str, start_ms: int | None, end_ms: int | None, label: str = "") -> optuna.Study:
        """Run ``name`` until it has ``trials`` finished trials (or is stopped); returns the stored study.

        Optuna works on the in-memory copy (ask, suggest, tell: well under a millisecond each);
        the storage receives the finished trials in batches (see :class:`TrialSaver`)."""
        stored, study = self.open_study(name)
        saver = TrialSaver(stored, study)
        try:
            self._run(study, saver, start_ms, end_ms, label or name)
        finally:
            saver.save(force=True)
        return stored

    def _run(self, study: optuna.Study, saver: TrialSaver, start_ms: int | None, end_ms: int | None, label: str) -> None:
        from distributed import wait

        total = self.budget(study)
        grid = self._remaining_grid(study) if self.settings.sampler == "grid" else []
        done = len(finished_trials(study))
        # Two tasks per worker thread in flight: each worker has its next task at hand when one
        # ends, so it never waits for the driver to record the last one and ask for more.
        slots = 2 * max(1, sum(self.client.nthreads().values()))
        best = best_trial(study, self.direction)
        self._best = best.value if best else None
        run = uuid.uuid4().hex
        inflight: dict[Any, list[optuna.trial.Trial]] = {}
        running = 0  # trials in the tasks in flight
        stopping = False
        self._report(label, done, total)
        while True:
            while not self.stop.set and done + running < total and len(inflight) < slots:
                size = self._batch_size(total - done - running, slots)
                batch, configs = [], []
                while len(batch) < size and done + running + len(batch) < total:
                    if grid:
                        study.enqueue_trial(grid.pop(0))
                    trial = study.ask()
                    values = self.space.suggest(trial)
                    try:
                        config = self.trial_config(values)
                    except ConfigError as exc:
                        # A combination the strategy refuses (say slow <= fast) is a failed trial, not an error.
                        trial.set_user_attr("error", str(exc))
                        study.tell(trial, state=TrialState.FAIL)
                        saver.finished(trial)
                        done += 1
                        self._report(label, done, total)
                        continue
                    batch.append(trial)
                    configs.append(config.to_dict())
                if batch:
                    future = self.client.submit(evaluate_batch, configs, self.bars, start_ms, end_ms, run, pure=False)
                    inflight[future] = batch
                    running += len(batch)
            if not inflight:
                break
            if self.stop.set and not stopping:
                stopping = True
                # Batches end after their running trial; a single trial is dropped at once (it
                # may be long), like the tasks not started yet.
                self.client.run(stop_run, run, on_error="ignore")
                for future in [f for f, batch in inflight.items() if len(batch) == 1]:
                    future.cancel()
                    running -= 1
                    self._interrupted(study, inflight.pop(future)[0], saver)
            try:
                # blocks; wakes twice a second to look at the stop flag and save finished trials
                finished, _ = wait(list(inflight), timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished = set()
            for future in finished:
                batch = inflight.pop(future)
                running -= len(batch)
                try:
                    answers = future.result()
                except Exception as exc:  # a lost worker: its trials failed, the study goes on
                    answers = [{"exception": f"{type(exc).__name__}: {exc}"}] * len(batch)
                for i, trial in enumerate(batch):
                    if i >= len(answers):  # not run: the study was stopped
                        self._interrupted(study, trial, saver)
                        continue
                    self._record(study, trial, {**answers[i], "task": future.key})
                    saver.finished(trial)
                    done += 1
                self._report(label, done, total)
            saver.save()

    def _batch_size(self, remaining: int, slots: int) -> int:
        """Trials for the next task: ~TASK_SECONDS of them, 1 until a trial's duration is known,
        and few enough near the end that every slot still gets a share."""
        recent = self._elapsed[-20:]
        if not recent:
            return 1
        typical = float(np.median(recent))  # not the mean: a worker's first trial compiles numba code
        per_task = int(TASK_SECONDS / max(typical, 1e-3))
        cap = MAX_BATCH if self.settings.sampler in ("random", "grid") else MAX_BATCH_LEARNING
        return max(1, min(cap, per_task, remaining // slots))

    def _interrupted(self, study: optuna.Study, trial: optuna.trial.Trial, saver: TrialSaver) -> None:
        trial.set_user_attr(INTERRUPTED, True)
        study.tell(trial, state=TrialState.FAIL)
        saver.finished(trial)

    def _record(self, study: optuna.Study, trial: optuna.trial.Trial, out: dict[str, Any]) -> None:
        if "exception" in out:  # a bug in a strategy or a lost worker: recorded on the trial, study goes on
            if self.stop.set:  # a remote cluster's workers may get the terminal's Ctrl-C too
                trial.set_user_attr(INTERRUPTED, True)
                study.tell(trial, state=TrialState.FAIL)
                return
            log.warning("trial %d failed: %s", trial.number, out["exception"])
            trial.set_user_attr("error", out["exception"])
            study.tell(trial, state=TrialState.FAIL)
            return
        self.workers_seen.setdefault(out["worker"], set()).add(out["bars_id"])
        if "error" in out:
            trial.set_user_attr("error", out["error"])
            study.tell(trial, state=TrialState.FAIL)
            return
        self._elapsed.append(out["elapsed_s"])
        metrics = out["metrics"]
        violations = [c.violation(metrics) for c in self.constraints]
        for constraint, violation in zip(self.constraints, violations):
            trial.set_constraint(str(constraint), violation)
        feasible = all(v <= 0 for v in violations)
        trial.set_user_attr(
            "run",
            {
                "metrics": metrics,
                "feasible": feasible,
                "worker": out["worker"],
                "task": out.get("task"),  # the Dask task that ran it, with the trials batched with it
                "elapsed_s": round(out["elapsed_s"], 4),
            },
        )
        value = metrics.get(self.settings.objective)
        if value is None:
            trial.set_user_attr("error", f"{self.settings.objective} is undefined for this run")
            study.tell(trial, state=TrialState.FAIL)
            return
        study.tell(trial, float(value))
        if feasible and (self._best is None or (value > self._best if self.direction == "maximize" else value < self._best)):
            self._best = float(value)

    def _report(self, label: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(label, done, total, self._best))

    def evaluate_once(self, values: dict[str, Any], start_ms: int | None, end_ms: int | None) -> dict[str, Any]:
        """Run the given parameters on one window and return the worker's answer with the result frames."""
        config = self.trial_config(values)
        return self.client.submit(evaluate, config.to_dict(), self.bars, start_ms, end_ms, True, pure=False).result()

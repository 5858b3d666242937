"""``quant optimize``: search space from config, constraints, a study on a real 2-worker Dask
LocalCluster, walk-forward, the best config re-run by ``quant run``, and resume after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from btc_quant.core.config import gather, load_run_config
from btc_quant.core.data import SAMPLE, read_bars_file
from btc_quant.core.errors import ConfigError
from btc_quant.core.optimize import Constraint, SearchSpace, StopFlag, metric_names, optimize, plan_study
from btc_quant.core.optimize.runner import BarsOnWorkers, QuietClose, _insert_trials, keep_freed_memory, local_cluster
from btc_quant.core.optimize.space import parse_distribution

# Real bars: the bundled BTCUSDT perpetual 1m sample (January 2022); a few days keep trials short.
DAYS = ["strategy=sma_cross", "data.start=2022-01-10", "data.end=2022-01-13"]
# In-process studies read the sample file directly: chDB allows one data directory per process,
# and other tests in this process may hold another one open.
FILE = [f"data.file={SAMPLE.path}", "broker.funding=constant"]


# ---------------------------------------------------------------------------------------------
# Search space and constraints, no cluster


def test_ranges_choices_and_tables_become_optuna_distributions():
    D = optuna.distributions
    assert parse_distribution("fast", "2:40") == D.IntDistribution(2, 40)
    assert parse_distribution("slow", "10:200:10") == D.IntDistribution(10, 200, step=10)
    assert parse_distribution("pct", "0.001:0.01") == D.FloatDistribution(0.001, 0.01)
    assert parse_distribution("pct", "0.001:0.1:log") == D.FloatDistribution(0.001, 0.1, log=True)
    stepped = parse_distribution("pct", "0.001:0.0105:0.001")
    assert stepped.step == 0.001 and stepped.high == pytest.approx(0.010)
    assert parse_distribution("lookback", "7d,30d,90d") == D.CategoricalDistribution(["7d", "30d", "90d"])
    assert parse_distribution("equity_pct", "0.5,0.95") == D.CategoricalDistribution([0.5, 0.95])
    assert parse_distribution("lookback", ["7d", "30d"]) == D.CategoricalDistribution(["7d", "30d"])
    assert parse_distribution("fast", {"low": 5, "high": 50, "step": 5}) == D.IntDistribution(5, 50, step=5)


@pytest.mark.parametrize(
    "value, message",
    [
        ("40:2", "search.fast: low must be below high"),
        ("2:x", "search.fast: cannot read '2:x'"),
        ("0:10:log", "search.fast: a log range needs low > 0"),
        ({"low": 1}, "search.fast: a range table needs low and high"),
        ({"low": 1, "high": 3, "stepp": 1}, "search.fast.stepp: unknown key"),
        ("5,5", "search.fast: a choice is listed twice"),
    ],
)
def test_bad_search_value_is_one_error_naming_the_key(value, message):
    with pytest.raises(ConfigError) as err:
        parse_distribution("fast", value)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_search_keys_are_checked_against_the_strategy_config(plugins):
    base = load_run_config(DAYS, plugins.registry, env={})
    space = SearchSpace.from_config({"fast": "2:5", "broker": {"initial_cash": "1000,2000"}}, base)
    assert [p.key for p in space.params] == ["strategy.fast", "broker.initial_cash"]
    with pytest.raises(ConfigError, match=r"^search\.fastt: strategy 'sma_cross' has no setting 'fastt'.*did you mean 'fast'"):
        SearchSpace.from_config({"fastt": "2:5"}, base)
    with pytest.raises(ConfigError, match=r"^search\.brokr\.x: 'brokr' is not a config section"):
        SearchSpace.from_config({"brokr": {"x": "1:2"}}, base)
    with pytest.raises(ConfigError, match=r"^search: nothing to search"):
        SearchSpace.from_config({}, base)
    continuous = SearchSpace.from_config({"equity_pct": "0.5:0.9"}, base)
    with pytest.raises(ConfigError, match=r"^search\.equity_pct: sampler=grid needs a finite set"):
        continuous.grid()


def test_constraints_parse_and_measure_violation():
    metrics = metric_names()
    assert {"sharpe", "max_drawdown", "trades", "liquidations"} <= set(metrics)
    dd = Constraint.parse("max_drawdown <= 0.2", metrics)
    assert dd.violation({"max_drawdown": 0.1}) == 0
    assert dd.violation({"max_drawdown": 0.3}) == pytest.approx(0.1)
    assert Constraint.parse("trades>=10", metrics).violation({"trades": 4}) == 6
    assert Constraint.parse("liquidations==0", metrics).violation({"liquidations": 0}) == 0
    assert Constraint.parse("sharpe>0", metrics).violation({"sharpe": None}) > 0
    with pytest.raises(ConfigError, match=r"^constraints: unknown metric 'drawdown'.*did you mean 'max_drawdown'"):
        Constraint.parse("drawdown<0.2", metrics)
    with pytest.raises(ConfigError, match=r"^constraints: cannot read 'trades >> 3'"):
        Constraint.parse("trades >> 3", metrics)


def test_example_study_files_are_valid(plugins):
    examples = sorted((Path(__file__).resolve().parents[1] / "examples" / "optimize").glob("*.toml"))
    assert examples
    for path in examples:
        strategy = path.stem
        if strategy not in plugins.registry.names("strategy"):
            pytest.fail(f"{path.name}: strategy {strategy!r} is not registered")
        plan = plan_study(gather([], config_path=path, env={}), plugins)
        assert plan.base.strategy.name == strategy and plan.space.params and plan.settings.trials > 0


def test_cli_bad_search_space_is_one_line_naming_the_key(quant):
    proc = quant("optimize", *DAYS, "search.fastt=2:5", "trials=2", "workers=1")
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and error_lines[0].startswith("error: search.fastt: strategy 'sma_cross' has no setting")
    proc = quant("optimize", *DAYS, "search.fast=2:5", "objective=sharp", "workers=1")
    assert proc.returncode == 2 and "error: objective: unknown metric 'sharp'" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Real 2-worker LocalCluster (processes on 127.0.0.1), reached through its scheduler address


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(2) as local:  # the LocalCluster `quant optimize` starts
        yield local.scheduler_address


def _page_faults_of_new_arrays(count: int = 40) -> int:
    """Minor page faults of this process while it makes and drops ``count`` 1 MiB arrays."""
    import resource

    import numpy as np

    np.ones(2**17).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        np.ones(2**17).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_workers_with_the_bars_reuse_freed_memory_instead_of_faulting_pages_in(cluster):
    """Trials make and drop many arrays of a few MiB; on the optimiser's workers they reuse the
    memory of the last trial (each fresh 1 MiB mapping would fault in 256 pages)."""
    from distributed import Client

    if not keep_freed_memory():
        pytest.skip("the C library has no mallopt (not glibc): nothing to tune")
    bars = read_bars_file(SAMPLE.path)
    with Client(cluster) as client:
        client.register_plugin(BarsOnWorkers("fault-test", bars))
        faults = [client.submit(_page_faults_of_new_arrays, pure=False, workers=[w]).result() for w in client.nthreads()]
    assert len(faults) == 2 and max(faults) < 40 * 16, faults


def _worker_log_at_close() -> list[str]:
    """What a handler on this worker's ``distributed.worker`` logger receives when a heartbeat fails
    (as distributed logs it: with the traceback) and when anything else goes wrong."""
    import logging

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    worker_log = logging.getLogger("distributed.worker")
    worker_log.addHandler(handler)
    try:
        try:
            raise OSError("Stream is closed")
        except OSError:
            worker_log.exception("Failed to communicate with scheduler during heartbeat.")
        worker_log.error("Worker stream died during communication")
    finally:
        worker_log.removeHandler(handler)
    return seen


def test_a_heartbeat_failing_as_the_study_closes_its_cluster_prints_nothing(cluster):
    """Ctrl-C (or the end of a study) closes the optimiser's own cluster; a worker's heartbeat in
    flight then fails and distributed logs it with a traceback, which a loaded CI machine once
    printed under "interrupted:". The optimiser's workers leave that one line out, nothing else."""
    from distributed import Client

    with Client(cluster) as client:
        client.register_plugin(QuietClose())
        logs = [client.submit(_worker_log_at_close, pure=False, workers=[w]).result() for w in client.nthreads()]
    assert logs == [["Worker stream died during communication"]] * 2


def test_grid_study_on_two_workers_writes_trials_report_and_a_runnable_best_config(cluster, tmp_path, plugins, quant):
    out = tmp_path / "study"
    result = optimize(
        {
            **_raw([*DAYS, *FILE]),
            "search": {"fast": "3,6", "slow": "20,40,60"},
            "sampler": "grid",
            "trials": 50,
            "constraints": ["trades>=20"],
            "cluster": cluster,
            "out": str(out),
        },
        plugins=plugins,
    )
    trials = pd.read_csv(out / "trials.csv")
    # the grid has 6 points: the budget of 50 stops there, each point exactly once
    assert len(trials) == 6 and (trials["state"] == "COMPLETE").all()
    assert sorted(zip(trials["param.fast"], trials["param.slow"])) == [(f, s) for f in (3, 6) for s in (20, 40, 60)]
    # both workers ran trials, and each held one copy of the bars for all its trials
    assert len(result.workers) == 2
    assert all(len(ids) == 1 for ids in result.workers.values())
    assert set(trials["worker"]) == set(result.workers)
    # constraint bookkeeping agrees with the metrics, and the best is the best feasible trial
    assert (trials["feasible"] == (trials["trades"] >= 20)).all()
    feasible = trials[trials["feasible"]]
    assert result.best_value == pytest.approx(feasible["value"].max())
    # the report has the plots, and best.toml is a config quant run accepts with the same result
    report = (out / "report.html").read_text()
    assert "Optimisation history" in report and "Parameter slices" in report and "plotly" in report
    proc = quant("run", "--config", str(out / "best.toml"), "--json", check=True)
    rerun = json.loads(proc.stdout)
    assert rerun["sharpe"] == pytest.approx(result.best_value)
    assert rerun["trades"] == feasible.loc[feasible["value"].idxmax(), "trades"]


def test_walk_forward_reports_out_of_sample_windows(cluster, tmp_path, plugins):
    out = tmp_path / "wf"
    result = optimize(
        {
            **_raw(["strategy=sma_cross", "data.start=2022-01-10", "data.end=2022-01-20", *FILE]),
            "search": {"fast": "3:8", "slow": "20:60:20"},
            "sampler": "random",
            "seed": 7,
            "trials": 4,
            "objective": "total_return",
            "walk_forward": {"train": "4d", "test": "3d"},
            "cluster": cluster,
            "out": str(out),
        },
        plugins=plugins,
    )
    windows = pd.read_csv(out / "walk_forward.csv")
    # 10 days of bars, 4d train + 3d test, stepping 3d: windows start on days 0 and 3
    assert list(windows["train_start"].str[:10]) == ["2022-01-10", "2022-01-13"]
    assert list(windows["test_start"].str[:10]) == ["2022-01-14", "2022-01-17"]
    assert len(result.trials) == 8 and set(result.trials["window"]) == {0, 1}
    equity = result.oos_equity
    # the stitched out-of-sample curve covers exactly the test windows, starting at the initial cash
    assert equity.index[0] == pd.Timestamp("2022-01-14", tz="UTC")
    assert equity.index[-1] < pd.Timestamp("2022-01-20", tz="UTC")
    assert equity.iloc[0] == pytest.approx(10_000.0)
    compounded = (1 + windows["out_of_sample"]).prod() - 1
    assert result.oos_metrics["total_return"] == pytest.approx(compounded, rel=1e-6)
    assert (out / "oos_equity.csv").exists() and "Out-of-sample equity" in (out / "report.html").read_text()


def test_a_batch_of_trials_runs_in_order_and_stops_after_the_running_trial(plugins):
    """The worker side of a task with several trials, in this process (the same function a worker runs)."""
    from btc_quant.core.optimize.runner import BarsOnWorkers, evaluate_batch, stop_run

    base = load_run_config([*DAYS, *FILE], plugins.registry, env={})
    bars = read_bars_file(SAMPLE.path)
    installed = BarsOnWorkers("test-batch", bars)
    installed.setup()
    try:
        configs = [base.to_dict() | {"strategy": {"name": "sma_cross", "fast": fast, "slow": 40}} for fast in (5, 10)]
        answers = evaluate_batch([configs[0], None, configs[1]], "test-batch", None, None, "run-a")
        # a trial that raises is that trial's answer; the trial after it still runs
        assert [sorted(a) for a in answers][1] == ["exception"] and "TypeError" in answers[1]["exception"]
        assert answers[0]["metrics"]["trades"] > 0 and answers[2]["metrics"]["trades"] > 0
        assert answers[0]["metrics"] != answers[2]["metrics"]
        stop_run("run-b")  # what the driver sends every worker on Ctrl-C
        assert evaluate_batch(configs, "test-batch", None, None, "run-b") == []
        assert len(evaluate_batch(configs, "test-batch", None, None, "run-a")) == 2  # other runs go on
    finally:
        installed.teardown()


def test_stopped_study_keeps_every_trial_its_batches_finished_and_resumes(cluster, tmp_path, plugins):
    out = tmp_path / "stopped"
    settings = {
        **_raw([*DAYS, *FILE]),
        "search": {"fast": "3:20", "slow": "30:90:10"},
        "sampler": "random",
        "seed": 3,
        "trials": 60,
        "cluster": cluster,
        "out": str(out),
    }
    stop = StopFlag()
    seen: list[int] = []

    def progress(event):
        seen.append(event.done)
        if event.done >= 20:
            stop.set = True  # what the first Ctrl-C does

    result = optimize(settings, plugins=plugins, progress=progress, stop=stop)
    assert result.interrupted
    trials = result.trials
    complete = trials[trials["state"] == "COMPLETE"]
    # short trials ran several to a task, and the tasks in flight finished their running trial
    assert complete.groupby("task").size().max() > 1
    assert 20 <= len(complete) < 60
    rest = trials[trials["state"] != "COMPLETE"]
    assert rest["interrupted"].all() and "error" not in rest
    # every kept trial is in the storage as it was, and the same settings run exactly what is missing
    stored = _complete_trials(out / "study.db")
    assert sorted(value for _, value in stored) == sorted(complete["value"])
    again = optimize(settings, plugins=plugins)
    assert not again.interrupted
    counted = again.trials[~again.trials["interrupted"].astype(bool)]
    assert len(counted) == 60 and (counted["state"] == "COMPLETE").all()
    assert _complete_trials(out / "study.db")[: len(stored)] == stored


def _varied_trials(count: int) -> list[optuna.trial.FrozenTrial]:
    """Finished trials of an in-memory study with every kind of field the optimiser writes."""
    memory = optuna.create_study(direction="maximize")
    for k in range(count):
        trial = memory.ask()
        trial.suggest_int("fast", 2, 12)
        trial.suggest_float("step_pct", 0.001, 0.01, log=True)
        trial.suggest_categorical("lookback", ["3d", "7d", "14d"])
        trial.set_user_attr("run", {"metrics": {"sharpe": k / 3, "trades": k}, "feasible": k % 2 == 0})
        trial.set_constraint("liquidations==0", float(k % 3 - 1))  # a system attribute
        trial.report(float("nan") if k == 2 else k * 0.5, step=0)
        if k % 5 == 4:
            trial.set_user_attr("error", "no bars in the window")
            memory.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            memory.tell(trial, {1: float("inf"), 3: float("-inf")}.get(k, k * 1.25))
    return memory.get_trials(deepcopy=False)


def _fields(trial: optuna.trial.FrozenTrial) -> tuple:
    nan_safe = {step: repr(v) for step, v in trial.intermediate_values.items()}
    return (
        trial.number,
        trial.state,
        trial.values,
        trial.params,
        trial.distributions,
        trial.user_attrs,
        trial.system_attrs,
        nan_safe,
        trial.datetime_start,
        trial.datetime_complete,
    )


def test_bulk_saved_trials_read_back_as_optuna_itself_saves_them(tmp_path):
    """The driver's bulk INSERTs against Optuna's own ``add_trials``, on two SQLite studies that
    already hold a trial: loaded back, every field of every trial is the same."""
    trials = _varied_trials(11)
    loaded = []
    for name, save in (("optuna", lambda study, batch: study.add_trials(batch)), ("bulk", _insert_trials)):
        url = f"sqlite:///{tmp_path / name}.db"
        study = optuna.create_study(storage=url, study_name="s", direction="maximize")
        study.enqueue_trial({"fast": 3})
        study.optimize(lambda t: t.suggest_int("fast", 2, 12) * 1.0, n_trials=1)
        save(study, trials[:6])
        save(study, trials[6:])
        loaded.append([_fields(t) for t in optuna.load_study(study_name="s", storage=url).get_trials()])
    assert len(loaded[1]) == 12 and [f[0] for f in loaded[1]] == list(range(12))
    assert loaded[1][1:] == loaded[0][1:]  # the first trial ran in each study, at its own time


def test_bulk_save_refuses_a_distribution_the_study_stores_differently(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    study.optimize(lambda t: t.suggest_int("fast", 2, 12) * 1.0, n_trials=1)
    memory = optuna.create_study()
    memory.optimize(lambda t: len(t.suggest_categorical("fast", ["a", "bc"])) * 1.0, n_trials=1)
    with pytest.raises(ValueError):
        _insert_trials(study, memory.get_trials())
    assert len(study.get_trials()) == 1  # nothing of the refused batch was written


def test_batches_hold_about_a_second_of_trials_and_stay_small_for_a_learning_sampler():
    from types import SimpleNamespace

    from btc_quant.core.optimize.runner import MAX_BATCH, MAX_BATCH_LEARNING, StudyRunner

    def batch(sampler: str, elapsed: list[float], remaining: int = 1000) -> int:
        runner = SimpleNamespace(_elapsed=elapsed, settings=SimpleNamespace(sampler=sampler))
        return StudyRunner._batch_size(runner, remaining, slots=4)

    assert batch("random", []) == 1  # a trial's duration is not known yet
    assert batch("random", [0.5] * 5) == 2  # ~1 s of trials a task
    assert batch("random", [0.01] * 20) == MAX_BATCH > MAX_BATCH_LEARNING
    assert batch("grid", [0.01] * 20) == MAX_BATCH
    assert batch("tpe", [0.01] * 20) == MAX_BATCH_LEARNING  # TPE would ask for many trials blind
    assert batch("random", [0.01] * 20, remaining=9) == 2  # near the end every slot gets a share


def _raw(pairs: list[str]) -> dict:
    return gather(pairs, env={})


# ---------------------------------------------------------------------------------------------
# Ctrl-C keeps finished trials; the same command resumes (default LocalCluster, 2 workers)


def _complete_trials(db: Path) -> list[tuple[int, float]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute(
                "select t.number, v.value from trials t join trial_values v on v.trial_id = t.trial_id "
                "where t.state = 'COMPLETE' order by t.number"
            ).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []


STUDY_TRIALS = 400
STUDY_TOML = f"""
trials = {STUDY_TRIALS}
seed = 5
workers = 2
out = "study"

[strategy]
name = "sma_cross"

[data]
# two weeks and 400 trials: seconds of trials left when the interrupt lands, although the driver
# saves finished trials in batches, a second apart (30 trials were all done by then once the
# backtester got faster; 120 were once sma_cross ran in the compiled signal loop, ~10 ms a trial)
start = "2022-01-10"
end = "2022-01-24"

[search]
fast = "2:12"
slow = {{ low = 20, high = 100, step = 10 }}
"""


def test_ctrl_c_keeps_finished_trials_and_the_same_command_resumes(tmp_path, quant):
    (tmp_path / "study.toml").write_text(STUDY_TOML)  # the whole study from a TOML file
    args = ["--config", "study.toml", "--no-progress"]
    exe = Path(sys.executable).with_name("quant")
    proc = subprocess.Popen(
        [str(exe), "optimize", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    db = tmp_path / "study" / "study.db"
    deadline = time.monotonic() + 120
    while len(_complete_trials(db)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, f"finished before the interrupt: {proc.stderr.read()}"
    os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C on a terminal: the driver and its worker processes
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted:" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    kept = _complete_trials(db)
    assert 3 <= len(kept) < STUDY_TRIALS
    first = pd.read_csv(tmp_path / "study" / "trials.csv")
    assert (first["state"] == "COMPLETE").sum() == len(kept)

    again = quant("optimize", *args, "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["interrupted"] is False
    trials = pd.read_csv(tmp_path / "study" / "trials.csv")
    counted = trials[~trials["interrupted"].astype(bool)] if "interrupted" in trials else trials
    assert len(counted) == STUDY_TRIALS  # exactly the missing trials ran
    assert _complete_trials(db)[: len(kept)] == kept  # the finished ones were kept as they were

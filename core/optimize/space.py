"""What an optimisation searches, for what, and under which constraints: all from config.

The settings sit next to the run config, in the same TOML file or as ``key=value`` pairs::

    quant optimize strategy=sma_cross search.fast=2:40 search.slow=10:200:10 \\
        objective=sharpe constraints='max_drawdown<=0.3,trades>=5' trials=100

A ``search.<key>`` names a strategy parameter (``search.fast`` is ``strategy.fast``); a dotted key
names any other run setting (``search.broker.leverage=1:5``). Its value is one of

* ``low:high`` -- a range; integers if both ends are integers, else floats;
* ``low:high:step`` -- a range on a step (``10:200:10``, ``0.001:0.01:0.001``);
* ``low:high:log`` -- a float (or int) range sampled on a log scale;
* ``a,b,c`` or a TOML list -- a set of choices (``7d,30d,90d``), passed to the config as given;
* in TOML also a table ``{low = 5, high = 50, step = 5, log = false}``.

Nothing here knows a strategy: the keys are checked against the chosen strategy's own ``Config``
model, so a new strategy is searchable with no code change.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import pandas as pd
from pydantic import Field, field_validator

from ..config import Duration, QuantModel, RunConfig, validate_model
from ..errors import ConfigError
from ..metrics import compute_metrics
from ..plugins import did_you_mean

#: Top-level keys that belong to the optimisation, not to the run; the rest is the run config.
OPTIMIZE_KEYS = (
    "search",
    "objective",
    "direction",
    "constraints",
    "constraint",
    "trials",
    "sampler",
    "seed",
    "study",
    "storage",
    "out",
    "cluster",
    "workers",
    "walk_forward",
)

#: Metrics where smaller is better; every other metric is maximised unless ``direction`` says so.
MINIMISED = {"max_drawdown", "max_drawdown_days", "fees", "liquidations"}


def metric_names() -> list[str]:
    """Names of the metrics every run reports (whatever :func:`compute_metrics` returns)."""
    index = pd.DatetimeIndex([pd.Timestamp(0, tz="UTC")])
    return sorted(compute_metrics(pd.Series([1.0], index=index), pd.DataFrame(), pd.DataFrame(), initial_equity=1.0))


class WalkForwardConfig(QuantModel):
    """Rolling windows: optimise on ``train``, evaluate the winner on the following ``test``."""

    train: Duration = Field(description="length of each in-sample (optimisation) window")
    test: Duration = Field(description="length of each out-of-sample window that follows it")
    step: Duration | None = Field(None, description="how far windows move; default: test (back-to-back test windows)")


class OptimizeConfig(QuantModel):
    """Settings of ``quant optimize`` (everything except the run config itself)."""

    search: dict[str, Any] = Field(default_factory=dict, description="parameter -> range or choices")
    objective: str = Field("sharpe", description="metric to optimise (any run metric)")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="maximize or minimize; default: minimize for drawdown/fees/liquidations, else maximize"
    )
    constraints: list[str] = Field(default_factory=list, description="conditions like max_drawdown<=0.3, trades>=5")
    trials: int = Field(50, ge=1, description="number of trials (in total, counting those of a resumed study)")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="Optuna sampler")
    seed: int | None = Field(None, description="sampler seed for reproducible searches")
    study: str | None = Field(None, description="study name; default: derived from the settings, so a rerun resumes")
    storage: str | None = Field(None, description="Optuna storage URL; default: sqlite in the output folder")
    out: Path | None = Field(None, description="output folder; default: ./optimize/<study>")
    cluster: str | None = Field(None, description="Dask scheduler address (tcp://host:8786); default: a LocalCluster")
    workers: int | None = Field(None, ge=1, description="LocalCluster worker processes; default: all cores")
    walk_forward: WalkForwardConfig | None = Field(None, description="walk-forward windows (train, test, step)")

    @field_validator("constraints", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def split_settings(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merged config dict -> (run config part, optimisation part)."""
    run = {k: v for k, v in raw.items() if k not in OPTIMIZE_KEYS}
    opt = {k: v for k, v in raw.items() if k in OPTIMIZE_KEYS}
    if "constraint" in opt:
        extra = opt.pop("constraint")
        existing = opt.get("constraints", [])
        existing = [existing] if isinstance(existing, str) else list(existing)
        opt["constraints"] = existing + ([extra] if isinstance(extra, str) else list(extra))
    return run, opt


def load_optimize_config(values: dict[str, Any]) -> OptimizeConfig:
    values = dict(values)
    if "search" in values and not isinstance(values["search"], dict):
        raise ConfigError(f"search: expected parameters like search.fast=5:50, got {values['search']!r}")
    return validate_model(OptimizeConfig, values)


# ----------------------------------------------------------------------------------------------
# Search space


@dataclass(frozen=True)
class Param:
    """One searched setting: its full dotted config key and its Optuna distribution."""

    name: str  # as written after ``search.``
    key: str  # full dotted config key
    distribution: optuna.distributions.BaseDistribution

    def grid_values(self) -> list[Any]:
        dist = self.distribution
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            return list(dist.choices)
        if isinstance(dist, optuna.distributions.IntDistribution) and not dist.log:
            return list(range(dist.low, dist.high + 1, dist.step))
        if isinstance(dist, optuna.distributions.FloatDistribution) and dist.step is not None:
            count = int(round((dist.high - dist.low) / dist.step))
            return [round(dist.low + i * dist.step, 12) for i in range(count + 1)]
        raise ConfigError(
            f"search.{self.name}: sampler=grid needs a finite set of values",
            hint=f"give a step (search.{self.name}=LOW:HIGH:STEP) or choices (search.{self.name}=a,b,c)",
        )


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE_RE = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*(?::\s*(log|{_NUMBER})\s*)?$")


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[-+]?\d+", text.strip()) is not None


def _range(name: str, low: Any, high: Any, step: Any = None, log: bool = False):
    where = f"search.{name}"
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)) and (step is None or isinstance(step, int))
    try:
        low_f, high_f = float(low), float(high)
        step_f = None if step is None else float(step)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: range ends must be numbers, got {low!r}:{high!r}") from None
    if not low_f < high_f:
        raise ConfigError(f"{where}: low must be below high, got {low}:{high}")
    if step_f is not None and step_f <= 0:
        raise ConfigError(f"{where}: step must be positive, got {step}")
    if log and low_f <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
    if log and step_f is not None:
        raise ConfigError(f"{where}: a range is either log or stepped, not both")
    if ints:
        return optuna.distributions.IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    if step_f is not None:
        # Optuna wants high on the step grid; the last value that is a whole step from low.
        high_f = round(low_f + math.floor((high_f - low_f) / step_f + 1e-9) * step_f, 12)
    return optuna.distributions.FloatDistribution(low_f, high_f, log=log, step=step_f)


def parse_distribution(name: str, value: Any) -> optuna.distributions.BaseDistribution:
    """A ``search.<name>`` value (string, list or table) -> an Optuna distribution."""
    where = f"search.{name}"
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"low", "high", "step", "log"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; valid keys: high, log, low, step")
        if "low" not in value or "high" not in value:
            raise ConfigError(f"{where}: a range table needs low and high")
        log = value.get("log", False)
        if isinstance(log, str):
            log = log.strip().lower() in ("1", "true", "yes")
        return _range(name, _number(value["low"]), _number(value["high"]), _number(value.get("step")), bool(log))
    if isinstance(value, (list, tuple)):
        choices = list(value)
    elif isinstance(value, str):
        match = _RANGE_RE.match(value)
        if match:
            low, high, third = match.groups()
            log = third == "log"
            step = None if third is None or log else third
            return _range(name, _number(low), _number(high), _number(step), log)
        if ":" in value and "," not in value:
            raise ConfigError(f"{where}: cannot read {value!r}; expected LOW:HIGH, LOW:HIGH:STEP, LOW:HIGH:log or a,b,c")
        choices = [_maybe_number(part.strip()) for part in value.split(",") if part.strip()]
    else:
        choices = [value]
    if not choices:
        raise ConfigError(f"{where}: no values given")
    if len(set(map(str, choices))) != len(choices):
        raise ConfigError(f"{where}: a choice is listed twice in {value!r}")
    for choice in choices:
        if not isinstance(choice, (str, int, float, bool)) or choice is None:
            raise ConfigError(f"{where}: choices must be strings or numbers, got {choice!r}")
    return optuna.distributions.CategoricalDistribution(choices)


def _maybe_number(text: str) -> Any:
    """``"0.5"`` -> 0.5, ``"7"`` -> 7, ``"7d"`` stays ``"7d"``."""
    try:
        return _number(text)
    except ValueError:
        return text


def _number(text: Any) -> Any:
    if text is None or isinstance(text, (int, float)):
        return text
    text = str(text).strip()
    return int(text) if _is_int(text) else float(text)


def _flatten(search: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"broker": {"leverage": "1:5"}}`` -> ``{"broker.leverage": "1:5"}``; range tables stay whole."""
    out: dict[str, Any] = {}
    for key, value in search.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not ({"low", "high"} & set(value)):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _check_key(name: str, key: str, base: RunConfig) -> None:
    """Raise when ``key`` is not a setting of the chosen plugins / run config."""
    parts = key.split(".")
    section = parts[0]
    if section not in RunConfig.model_fields:
        valid = sorted(RunConfig.model_fields)
        raise ConfigError(f"search.{name}: {section!r} is not a config section{did_you_mean(section, valid)}")
    node = getattr(base, section)
    model = getattr(node, "config", node)
    if section == "risk" or len(parts) == 1:
        return
    fields = getattr(type(model), "model_fields", {}) if model is not None else {}
    if parts[1] not in fields:
        owner = f"{section} {node.name!r}" if hasattr(node, "name") else section
        valid = sorted(fields)
        raise ConfigError(
            f"search.{name}: {owner} has no setting {parts[1]!r}{did_you_mean(parts[1], valid)}; valid: {', '.join(valid) or 'none'}"
        )


class SearchSpace:
    """The searched parameters, in the order given."""

    def __init__(self, params: list[Param]):
        self.params = params

    @classmethod
    def from_config(cls, search: dict[str, Any], base: RunConfig) -> SearchSpace:
        flat = _flatten(search)
        if not flat:
            raise ConfigError(
                "search: nothing to search", hint=f"name parameters of strategy {base.strategy.name!r}, e.g. search.fast=2:40"
            )
        params = []
        for name, value in flat.items():
            key = name if "." in name else f"strategy.{name}"
            _check_key(name, key, base)
            params.append(Param(name, key, parse_distribution(name, value)))
        return cls(params)

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Sample every parameter for ``trial``: ``{name: value}``."""
        values = {}
        for p in self.params:
            dist = p.distribution
            if isinstance(dist, optuna.distributions.IntDistribution):
                values[p.name] = trial.suggest_int(p.name, dist.low, dist.high, step=dist.step, log=dist.log)
            elif isinstance(dist, optuna.distributions.FloatDistribution):
                values[p.name] = trial.suggest_float(p.name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                values[p.name] = trial.suggest_categorical(p.name, dist.choices)
        return values

    def assignments(self, values: dict[str, Any]) -> list[str]:
        """``key=value`` pairs setting the sampled values in a run config."""
        keys = {p.name: p.key for p in self.params}
        return [f"{keys[name]}={value}" for name, value in values.items()]

    def grid(self) -> dict[str, list[Any]]:
        return {p.name: p.grid_values() for p in self.params}

    def describe(self) -> dict[str, str]:
        return {p.name: repr(p.distribution) for p in self.params}


# ----------------------------------------------------------------------------------------------
# Constraints

_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}
_CONSTRAINT_RE = re.compile(rf"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*({_NUMBER})\s*$")


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: str, metrics: list[str]) -> Constraint:
        match = _CONSTRAINT_RE.match(text)
        if not match:
            raise ConfigError(
                f"constraints: cannot read {text!r}; expected METRIC OP NUMBER",
                hint="for example max_drawdown<=0.3 or trades>=10 or liquidations==0",
            )
        metric, op, bound = match.groups()
        if metric not in metrics:
            raise ConfigError(f"constraints: unknown metric {metric!r}{did_you_mean(metric, metrics)}; metrics: {', '.join(metrics)}")
        return cls(metric, op, float(bound))

    def violation(self, metrics: dict[str, Any]) -> float:
        """How far the run misses the constraint (Optuna's convention: <= 0 means satisfied)."""
        value = metrics.get(self.metric)
        if value is None:
            return 1.0
        if _OPS[self.op](value, self.bound):
            return 0.0
        return max(abs(float(value) - self.bound), 1e-12)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def direction_for(settings: OptimizeConfig) -> str:
    if settings.direction:
        return settings.direction
    return "minimize" if settings.objective in MINIMISED else "maximize"


def check_objective(settings: OptimizeConfig, metrics: list[str]) -> None:
    if settings.objective not in metrics:
        raise ConfigError(
            f"objective: unknown metric {settings.objective!r}{did_you_mean(settings.objective, metrics)}; metrics: {', '.join(metrics)}"
        )


def study_fingerprint(run: RunConfig, settings: OptimizeConfig) -> str:
    """Short hash of what defines a study (not ``trials``), so the same command resumes it."""
    payload = {
        "run": run.to_dict(),
        "search": settings.search,
        "objective": settings.objective,
        "direction": direction_for(settings),
        "constraints": settings.constraints,
        "sampler": settings.sampler,
        "seed": settings.seed,
        "walk_forward": settings.walk_forward.model_dump(mode="json") if settings.walk_forward else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]


__all__ = [
    "OPTIMIZE_KEYS",
    "Constraint",
    "OptimizeConfig",
    "Param",
    "SearchSpace",
    "WalkForwardConfig",
    "check_objective",
    "direction_for",
    "load_optimize_config",
    "metric_names",
    "parse_distribution",
    "split_settings",
    "study_fingerprint",
]

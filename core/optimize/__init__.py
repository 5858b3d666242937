"""Parameter optimisation: Optuna searches, Dask runs the backtests, walk-forward checks them out of sample.

The search space, objective and constraints come from config (see :mod:`.space`), so any
registered strategy can be optimised without code. :func:`optimize` is the entry point.
"""

from .runner import ProgressEvent, StopFlag, evaluate
from .space import Constraint, OptimizeConfig, SearchSpace, WalkForwardConfig, metric_names
from .study import OptimizeResult, StudyPlan, optimize, plan_study

__all__ = [
    "Constraint",
    "OptimizeConfig",
    "OptimizeResult",
    "ProgressEvent",
    "SearchSpace",
    "StudyPlan",
    "StopFlag",
    "WalkForwardConfig",
    "evaluate",
    "metric_names",
    "optimize",
    "plan_study",
]

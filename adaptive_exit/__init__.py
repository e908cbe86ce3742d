"""adaptive-exit: early-exit inference for staged models across domains.

The core (this package) knows nothing about text or audio; domains live in
``adaptive_exit.text`` and ``adaptive_exit.speech``.
"""
from .budget import BudgetKind, BudgetSpec, BudgetTable, calibrate, register_budget_kind
from .evaluation import build_report, oracle_exit_stage, sweep, write_report
from .losses import MultiExitObjective, distillation_loss, exit_weights, weighted_exit_loss
from .metrics import Metric, get_metric, register_metric
from .policies import AllOf, AnyOf, Budget, Confidence, ExitPolicy, Never, Oracle, Patience, build_policy, register_policy
from .runner import EarlyExitRunner
from .staged import ExitResult, StagedModel, all_exit_outputs, select_rows
from .traces import Trace, record_trace, replay
from .training import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "AllOf", "AnyOf", "Budget", "BudgetKind", "BudgetSpec", "BudgetTable", "Confidence", "EarlyExitRunner", "ExitPolicy",
    "ExitResult", "Metric", "MultiExitObjective", "Never", "Oracle", "Patience", "StagedModel", "Trace", "TrainConfig",
    "Trainer", "all_exit_outputs", "build_policy", "build_report", "calibrate", "distillation_loss", "exit_weights",
    "get_metric", "oracle_exit_stage", "record_trace", "register_budget_kind", "register_metric", "register_policy",
    "replay", "select_rows", "sweep", "weighted_exit_loss", "write_report",
]

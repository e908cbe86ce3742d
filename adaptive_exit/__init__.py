"""adaptive-exit: early-exit inference for staged models across domains.

The core (this package) knows nothing about text or audio; domains live in
``adaptive_exit.text`` and ``adaptive_exit.speech``. Names are imported on first
use, so ``import adaptive_exit`` (and ``adaptive-exit --help``) stays light.
"""
from __future__ import annotations

from adaptive_exit.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "budgets": ["BudgetKind", "BudgetSpec", "BudgetTable", "calibrate", "register_budget_kind"],
    "evaluation": ["build_report", "oracle_exit_stage", "sweep", "write_report"],
    "training.losses": ["MultiExitObjective", "distillation_loss", "exit_weights", "weighted_exit_loss"],
    "evaluation.metrics": ["Metric", "get_metric", "register_metric"],
    "policies": ["AllOf", "AnyOf", "Budget", "Confidence", "ExitPolicy", "Never", "Oracle", "Patience", "build_policy",
                 "register_policy"],
    "runtime.runner": ["EarlyExitRunner"],
    "runtime.staged": ["ExitResult", "StagedModel", "all_exit_outputs", "select_rows"],
    "runtime.traces": ["Trace", "record_trace", "replay"],
    "training": ["TrainConfig", "Trainer"],
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)

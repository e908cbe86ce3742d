"""Evaluation on recorded traces: metrics with their direction (:mod:`.metrics`), scoring
(:mod:`.scoring`), sweeps, oracle and Pareto front (:mod:`.sweeps`), reports (:mod:`.report`)."""
from __future__ import annotations

from .report import format_table, plot_rows, sweep_csv, write_report
from .scoring import metric_for, oracle_exit_stage, per_sample_quality, score
from .sweeps import (Row, build_report, evaluate_policy, expand_family, make_row, mark_pareto, oracle_row, quantile_count,
                     rows_from_report, static_rows, sweep, threshold_quantiles)

__all__ = ["Row", "build_report", "evaluate_policy", "expand_family", "format_table", "make_row", "mark_pareto",
           "metric_for", "oracle_exit_stage", "oracle_row", "per_sample_quality", "plot_rows", "quantile_count",
           "rows_from_report", "score", "static_rows", "sweep", "sweep_csv", "threshold_quantiles", "write_report"]

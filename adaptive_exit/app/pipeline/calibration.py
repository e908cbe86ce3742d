"""The calibration step: the best policy within each budget becomes the model's default
(and its budget table's entries for run-time levels)."""
from __future__ import annotations

import logging
from typing import Any, Sequence

from adaptive_exit import io
from adaptive_exit.budgets import BudgetSpec, BudgetTable, Calibration, candidate_policies, split_indices
from adaptive_exit.budgets import calibrate as calibrate_trace
from adaptive_exit.runtime.traces import Trace

from .context import RunContext
from .costs import CostTables
from .evaluation import Traces

logger = logging.getLogger(__name__)


class CalibrateStep:
    def __init__(self, run: RunContext, traces: Traces, costs: CostTables):
        self.run, self.traces, self.costs = run, traces, costs

    def __call__(self, budget: str | None = None, levels: Sequence[str] = (), remeasure: bool = False) -> dict[str, Any] | None:
        """Calibrate ``budget`` (or the recipe's) and ``levels`` (with ``calibrate.levels``) on
        the calibration split. The main process writes; other ranks return None."""
        run, cal = self.run, self.run.recipe.calibrate
        budget = BudgetSpec.parse(budget) if budget else run.budget
        if budget is None:
            raise ValueError("no budget given: set calibrate.budget in the recipe or pass --budget (e.g. mean:0.5)")
        levels = [*run.levels, *(BudgetSpec.parse(b) for b in levels)]
        trace = self.traces.load(cal.split)
        if not run.shard.is_main:
            return None
        results = {}
        for b in [*levels, budget]:
            logger.info("calibrating to %s on %s", b, cal.split)
            results[str(b)] = self.calibrate_on(trace, b, remeasure=remeasure)
        main = results[str(budget)]
        BudgetTable.update(run.model_dir, {name: result.policy for name, result in results.items()})
        run.domain.set_default_policy(run.model_dir, main.policy)
        report = main.to_dict()
        if levels:
            report["levels"] = {name: r.to_dict() for name, r in results.items()}
        io.write_json(run.run_dir / "calibration.json", report)
        return report

    def calibrate_on(self, trace: Trace, budget: BudgetSpec, split: str | None = None, remeasure: bool = False) -> Calibration:
        """Calibrate one budget on the calibration half of ``trace``, report on the held-out half."""
        run, cal = self.run, self.run.recipe.calibrate
        families = cal.candidates or run.recipe.eval.sweeps
        if not families:
            raise ValueError("no candidate policies: set calibrate.candidates or eval.sweeps")
        dev_index, held_index = split_indices(trace.num_samples, cal.heldout_fraction, seed=run.recipe.seed)
        if budget.unit == "flops" and trace.counted_costs is not None:
            costs = trace.counted_costs  # the model counted each sample's FLOPs (token reduction)
        else:
            costs = self.costs.table(split or cal.split, budget.unit, remeasure) if budget.needs_cost_model else None
        calibration = trace.subset(dev_index)
        return calibrate_trace(
            calibration, candidate_policies(families, calibration), budget, run.recipe.eval.metrics[0],
            heldout=trace.subset(held_index),
            costs=None if costs is None else costs[dev_index], heldout_costs=None if costs is None else costs[held_index],
        )

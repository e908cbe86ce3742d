"""The calibration step: the best policy within each budget becomes the model's default
(and its budget table's entries for run-time levels)."""
from __future__ import annotations

import logging
from typing import Any, Sequence

from adaptive_exit import io
from adaptive_exit.budgets import BudgetSpec, BudgetTable, Calibration, Certified, candidate_policies, certify, split_indices
from adaptive_exit.budgets import calibrate as calibrate_trace
from adaptive_exit.evaluation import expand_family
from adaptive_exit.evaluation.scoring import per_sample_quality
from adaptive_exit.policies import Learned
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

    def families(self) -> dict[str, Any]:
        """The candidate families: the recipe's, plus a learned exit fitted on
        ``calibrate.learn_from`` (a split kept out of evaluation) when set."""
        run, cal = self.run, self.run.recipe.calibrate
        families = dict(cal.candidates or run.recipe.eval.sweeps)
        if not families:
            raise ValueError("no candidate policies: set calibrate.candidates or eval.sweeps")
        if cal.learn_from:
            learned = self._learned = getattr(self, "_learned", None) or self.learned_policy()
            families[learned.template()] = "quantiles:20"
        return families

    def learned_policy(self) -> Learned:
        """The learned exit fitted on the ``calibrate.learn_from`` split's trace (recorded if missing)."""
        run, cal = self.run, self.run.recipe.calibrate
        if cal.learn_from in (cal.split, run.recipe.eval.split):
            raise ValueError(f"calibrate.learn_from={cal.learn_from!r} is also the calibration or evaluation split; "
                             "fit the learned exit on data kept out of both (e.g. train_rest)")
        fit_trace = self.traces.load(cal.learn_from)
        logger.info("fitting the learned exit on %s (%d samples)", cal.learn_from, fit_trace.num_samples)
        return Learned.fit(fit_trace.outputs, per_sample_quality(fit_trace, run.recipe.eval.metrics[0]))

    def calibrate_on(self, trace: Trace, budget: BudgetSpec, split: str | None = None,
                     remeasure: bool = False) -> Calibration | Certified:
        """Calibrate one budget on the calibration half of ``trace``, report on the held-out half."""
        run, cal = self.run, self.run.recipe.calibrate
        families = self.families()
        dev_index, held_index = split_indices(trace.num_samples, cal.heldout_fraction, seed=run.recipe.seed)
        if budget.kind_of.risk:
            calibration = trace.subset(dev_index)
            chains = [[spec for spec, _ in expand_family(family, values, calibration)] for family, values in families.items()]
            return certify(calibration, chains, run.recipe.eval.metrics[0], budget.value, cal.confidence,
                           heldout=trace.subset(held_index), seed=run.recipe.seed)
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

"""Batched early-exit inference with per-sample exits and compaction."""
from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from adaptive_exit.policies import ExitPolicy, build_policy
from adaptive_exit.runtime.staged import ExitResult, PerSampleCosts, StagedModel, stage_costs

logger = logging.getLogger(__name__)

MODES = ("compact", "batch-sync")


class EarlyExitRunner:
    """Run a :class:`StagedModel` stage by stage under an exit policy.

    ``mode="compact"`` (default): after each stage the rows that exited are
    written to the result at their original positions and dropped from the
    batch, so later stages run on fewer rows and compute really falls.

    ``mode="batch-sync"``: the published PABEE/DeeBERT batch behaviour; the
    whole batch keeps running until its slowest sample is done. Predictions and
    exit stages are the same as in compact mode; every sample pays for the
    stages the batch ran.

    The policy can be swapped between batches (``runner.policy = "patience:3"``)
    without touching the model; with a table of calibrated budgets (``budgets=``,
    see :class:`~adaptive_exit.budgets.BudgetTable`) so can the budget
    (``runner.budget = "mean:0.4"``).
    """

    def __init__(self, model: StagedModel, policy: ExitPolicy | str | dict = "full", mode: str = "compact",
                 budgets: Any = None):
        if mode not in MODES:
            raise ValueError(f"unknown runner mode {mode!r}; expected one of {MODES}")
        self.model = model
        self.mode = mode
        self.policy = policy
        self.budgets = budgets
        self._costs = stage_costs(model)
        cumulative, total = [], 0.0
        for cost in self._costs:
            total += cost
            cumulative.append(total)
        self._cumulative = torch.tensor(cumulative, dtype=torch.float64)

    @property
    def policy(self) -> ExitPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: ExitPolicy | str | dict) -> None:
        self._policy = build_policy(policy)
        self._budget = None  # a policy set directly replaces any budget

    @property
    def budget(self):
        """The budget last set (None if the policy was given directly)."""
        return self._budget

    @budget.setter
    def budget(self, budget) -> None:
        if self.budgets is None:
            raise ValueError("this runner has no budget table: pass budgets=BudgetTable.load(model_dir) or set .policy")
        self.policy = self.budgets.policy_for(budget)
        self._budget = budget

    @torch.no_grad()
    def __call__(self, batch: Any) -> ExitResult:
        model, policy = self.model, self._policy
        last = model.num_stages - 1
        state = model.begin(batch)
        counting = isinstance(model, PerSampleCosts)
        reference = model.reference_cost(state).double() if counting else None
        spent = None
        result = exit_stage = active = exited = pstate = None
        last_run = last
        for k in range(model.num_stages):
            state = model.run_stage(k, state)
            out = model.exit_output(k, state)
            if k == 0:
                size = out.shape[0]
                pstate = policy.init(size, self._costs, out.device)
                result = out.new_zeros(out.shape)
                exit_stage = torch.full((size,), last, dtype=torch.long, device=out.device)
                active = torch.arange(size, device=out.device)
                exited = torch.zeros(size, dtype=torch.bool, device=out.device)
                spent = torch.zeros(size, dtype=torch.float64, device=out.device) if counting else None
            if counting:  # every row still in the batch pays for this stage (batch-sync: even the exited ones)
                spent[active] += model.sample_cost(k, state).double().to(spent.device)
            done = policy.step(k, out, pstate)
            if k == last:
                done = torch.ones_like(done)
            if self.mode == "compact":
                num_done = int(done.sum())
                if num_done == done.shape[0]:
                    result[active] = out
                    exit_stage[active] = k
                    break
                if num_done:
                    rows = active[done]
                    result[rows] = out[done]
                    exit_stage[rows] = k
                    keep = (~done).nonzero().squeeze(1)
                    state = model.select(state, keep)
                    pstate = policy.select(pstate, keep)
                    active = active[keep]
            else:
                newly = done & ~exited
                result[newly] = out[newly]
                exit_stage[newly] = k
                exited |= done
                if bool(exited.all()):
                    last_run = k
                    break
        cumulative = self._cumulative.to(exit_stage.device)
        if counting:
            cost = spent
        elif self.mode == "compact":
            cost = cumulative[exit_stage]
        else:
            cost = cumulative[last_run].expand(exit_stage.shape[0]).clone()
        return ExitResult(result, exit_stage, cost, model.num_stages, float(self._cumulative[-1]),
                          reference_cost=None if reference is None else reference.to(cost.device))

    def run_batches(self, batches: Iterable[Any]) -> ExitResult:
        """Run over an iterable of batches and concatenate the results in order."""
        return concat_results([self(batch) for batch in batches])


def pad_cat(tensors: list[Tensor], value: float | Tensor = 0.0) -> Tensor:
    """Concatenate along dim 0, padding trailing dims to the largest shape.

    ``value`` is a number, or a tensor broadcast over the padded positions (e.g. a
    logit vector over the last dim, so that padded tokens read as certain)."""
    if not tensors:
        raise ValueError("nothing to concatenate")
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    if isinstance(value, Tensor):
        out = value.to(tensors[0].dtype).expand(sum(t.shape[0] for t in tensors), *shape).clone()
        start = 0
        for t in tensors:
            out[(slice(start, start + t.shape[0]), *(slice(0, n) for n in t.shape[1:]))] = t
            start += t.shape[0]
        return out
    padded = []
    for t in tensors:
        pad: list[int] = []
        for d in reversed(range(1, t.dim())):
            pad.extend([0, shape[d - 1] - t.shape[d]])
        padded.append(F.pad(t, pad, value=value) if any(pad) else t)
    return torch.cat(padded, dim=0)


def concat_results(results: list[ExitResult]) -> ExitResult:
    """Join per-batch results into one (outputs padded to a common shape)."""
    if not results:
        raise ValueError("no results to concatenate (empty dataset?)")
    first = results[0]
    return ExitResult(
        output=pad_cat([r.output for r in results]),
        exit_stage=torch.cat([r.exit_stage for r in results]),
        cost=torch.cat([r.cost for r in results]),
        num_stages=first.num_stages,
        full_cost=first.full_cost,
        reference_cost=None if first.reference_cost is None else torch.cat([r.reference_cost for r in results]),
    )

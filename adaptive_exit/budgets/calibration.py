"""Calibration: the best policy within a budget, chosen by replaying candidates on traces."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from adaptive_exit.evaluation import expand_family, metric_for, score
from adaptive_exit.policies import Budget, ExitPolicy, build_policy
from adaptive_exit.runtime.staged import ExitResult
from adaptive_exit.runtime.traces import Trace, replay

from .kinds import BudgetSpec


@dataclass
class Calibration:
    policy: str
    budget: str
    target: float
    calibration: dict[str, float]
    heldout: dict[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summary(trace: Trace, result: ExitResult, budget: BudgetSpec, metric: str, costs: Tensor | None) -> dict[str, float]:
    return {
        "achieved": budget.achieved(result, costs),
        "unit": budget.unit,
        "cost_fraction": result.cost_fraction,
        "mean_stages": result.mean_stages,
        "speedup": result.speedup,
        metric: score(trace, result.exit_stage, metric),
        "num_samples": trace.num_samples,
    }


def candidate_policies(families: dict[str, Any], trace: Trace | None = None) -> list[ExitPolicy]:
    """Every policy of the families (quantile grids are taken on ``trace``)."""
    return [build_policy(spec) for family, values in families.items() for spec, _ in expand_family(family, values, trace)]


def calibrate(
    trace: Trace,
    candidates: Sequence[str | dict | ExitPolicy],
    budget: str | BudgetSpec,
    metric: str,
    heldout: Trace | None = None,
    costs: Tensor | None = None,
    heldout_costs: Tensor | None = None,
) -> Calibration:
    """Choose the candidate with the best ``metric`` whose cost meets ``budget``.

    ``costs`` / ``heldout_costs``: (N, L) cumulative per-sample cost tables for
    budgets measured by a cost model (FLOPs, ms, pNN, RTF).
    """
    budget = BudgetSpec.parse(budget)
    kind = budget.kind_of
    if kind.risk:
        raise ValueError(f"{budget} is a quality guarantee, not a cost: calibrate it with budgets.certify")
    if trace.num_samples == 0:
        raise ValueError("cannot calibrate on an empty trace")
    policies = [build_policy(c) for c in candidates]
    if kind.hard_cap:
        cap = Budget(max_fraction=budget.value)
        policies = [p | cap for p in policies] + [cap]
    elif not (kind.fraction and budget.value >= 1):
        # Capped variants (and the caps alone: static truncation) widen the search so that a
        # tight budget gets the best capped policy instead of no answer: for a fraction of the
        # full model the cap at that fraction always fits; for other units every depth is offered.
        caps = [Budget(max_fraction=budget.value)] if kind.fraction else \
            [Budget(max_stages=k) for k in range(1, trace.num_stages)]
        policies = policies + [p | cap for p in policies for cap in caps] + caps
    if not policies:
        raise ValueError("calibration needs at least one candidate policy")
    quality = metric_for(trace, metric)
    best: tuple | None = None
    for policy in policies:
        result = replay(trace, policy)
        if not budget.met(result, costs):
            continue
        value = score(trace, result.exit_stage, metric)
        key = (quality.key(value), -result.cost_fraction)
        if best is None or key > best[0]:
            best = (key, policy, result)
    if best is None:
        one_stage = budget.achieved(replay(trace, Budget(max_stages=1)), costs)
        if one_stage > budget.value:
            raise ValueError(f"budget {budget} is below what this model can do: even one stage per sample costs "
                             f"{one_stage:.4g} {budget.unit}. Raise the budget or use a cheaper model/device.")
        cheapest = min(policies, key=lambda p: budget.achieved(replay(trace, p), costs))
        raise ValueError(
            f"no candidate policy meets budget {budget} on the calibration data; the cheapest "
            f"({cheapest.spec()}) costs {budget.achieved(replay(trace, cheapest), costs):.4g} {budget.unit}. "
            "Add cheaper candidates (lower patience, looser thresholds) or use a 'max:' budget."
        )
    _, policy, result = best
    return Calibration(
        policy=policy.spec(),
        budget=str(budget),
        target=budget.value,
        calibration=_summary(trace, result, budget, metric, costs),
        heldout=None if heldout is None else _summary(heldout, replay(heldout, policy), budget, metric, heldout_costs),
    )


def split_indices(num_samples: int, heldout_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random (calibration, held-out) sample indices, as :func:`split_trace` uses."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    cut = int(round(num_samples * (1 - heldout_fraction)))
    if cut == 0 or cut == num_samples:
        raise ValueError(f"a trace of {num_samples} samples is too small to split for calibration")
    return order[:cut], order[cut:]


def split_trace(trace: Trace, heldout_fraction: float, seed: int = 0) -> tuple[Trace, Trace]:
    """A random split into (calibration, held-out) parts."""
    dev, held = split_indices(trace.num_samples, heldout_fraction, seed)
    return trace.subset(dev), trace.subset(held)

"""Compute budgets and calibration of an exit policy to a budget on traces.

A budget is written ``KIND:VALUE``:

* ``mean:0.5``   - mean cost at most 50% of the full model (cost model units);
* ``stages:3``   - mean number of stages used at most 3;
* ``max:0.5``    - every sample at most 50% of the full cost: a hard cap
  (the chosen policy is combined with a :class:`~adaptive_exit.policies.Budget`).

Calibration replays candidate policies on development traces, keeps those that
meet the budget and picks the best quality (ties: the cheaper one). The report
gives the achieved cost and quality on a held-out part next to the target.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import torch

from .evaluation import LOWER_IS_BETTER, expand_family, score
from .policies import Budget, ExitPolicy, build_policy
from .staged import ExitResult
from .traces import Trace, replay

logger = logging.getLogger(__name__)

BUDGET_KINDS = ("mean", "stages", "max")


@dataclass(frozen=True)
class BudgetSpec:
    kind: str
    value: float

    @classmethod
    def parse(cls, text: str | "BudgetSpec") -> "BudgetSpec":
        if isinstance(text, BudgetSpec):
            return text
        kind, sep, value = str(text).partition(":")
        kind = kind.strip().lower()
        if not sep or kind not in BUDGET_KINDS:
            raise ValueError(f"bad budget {text!r}: expected KIND:VALUE with KIND one of {BUDGET_KINDS} (e.g. 'mean:0.5')")
        raw = value.strip()
        try:
            number = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        except ValueError:
            raise ValueError(f"bad budget {text!r}: {raw!r} is not a number") from None
        if number <= 0:
            raise ValueError(f"bad budget {text!r}: the value must be > 0")
        if kind in ("mean", "max") and number > 1:
            raise ValueError(f"bad budget {text!r}: {kind} is a fraction of the full cost, in (0, 1]")
        return cls(kind, number)

    def achieved(self, result: ExitResult) -> float:
        """The quantity this budget limits, measured on a result."""
        if self.kind == "stages":
            return result.mean_stages
        if self.kind == "max":
            return float(result.cost.max()) / result.full_cost
        return result.cost_fraction

    def met(self, result: ExitResult, tolerance: float = 1e-9) -> bool:
        return self.achieved(result) <= self.value * (1 + tolerance)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


@dataclass
class Calibration:
    policy: str
    budget: str
    target: float
    calibration: dict[str, float]
    heldout: dict[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summary(trace: Trace, result: ExitResult, budget: BudgetSpec, metric: str) -> dict[str, float]:
    return {
        "achieved": budget.achieved(result),
        "cost_fraction": result.cost_fraction,
        "mean_stages": result.mean_stages,
        "speedup": result.speedup,
        metric: score(trace, result.exit_stage, metric),
        "num_samples": trace.num_samples,
    }


def candidate_policies(families: dict[str, Iterable[Any]]) -> list[str]:
    return [spec for family, values in families.items() for spec, _ in expand_family(family, values)]


def calibrate(
    trace: Trace,
    candidates: Sequence[str | dict | ExitPolicy],
    budget: str | BudgetSpec,
    metric: str,
    heldout: Trace | None = None,
) -> Calibration:
    """Choose the candidate with the best ``metric`` whose cost meets ``budget``."""
    budget = BudgetSpec.parse(budget)
    if trace.num_samples == 0:
        raise ValueError("cannot calibrate on an empty trace")
    policies = [build_policy(c) for c in candidates]
    if budget.kind == "max":
        cap = Budget(max_fraction=budget.value)
        policies = [p | cap for p in policies] + [cap]
    if not policies:
        raise ValueError("calibration needs at least one candidate policy")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    best: tuple | None = None
    for policy in policies:
        result = replay(trace, policy)
        if not budget.met(result):
            continue
        key = (sign * score(trace, result.exit_stage, metric), -result.cost_fraction)
        if best is None or key > best[0]:
            best = (key, policy, result)
    if best is None:
        cheapest = min(policies, key=lambda p: replay(trace, p).cost_fraction)
        raise ValueError(
            f"no candidate policy meets budget {budget} on the calibration data; the cheapest "
            f"({cheapest.spec()}) costs {budget.achieved(replay(trace, cheapest)):.3f}. "
            "Add cheaper candidates (lower patience, looser thresholds) or use a 'max:' budget."
        )
    _, policy, result = best
    return Calibration(
        policy=policy.spec(),
        budget=str(budget),
        target=budget.value,
        calibration=_summary(trace, result, budget, metric),
        heldout=None if heldout is None else _summary(heldout, replay(heldout, policy), budget, metric),
    )


def split_trace(trace: Trace, heldout_fraction: float, seed: int = 0) -> tuple[Trace, Trace]:
    """A random split into (calibration, held-out) parts."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    order = torch.randperm(trace.num_samples, generator=torch.Generator().manual_seed(seed))
    cut = int(round(trace.num_samples * (1 - heldout_fraction)))
    if cut == 0 or cut == trace.num_samples:
        raise ValueError(f"a trace of {trace.num_samples} samples is too small to split for calibration")
    return trace.subset(order[:cut]), trace.subset(order[cut:])

"""Compute budgets and calibration of an exit policy to a budget on traces.

A budget is written ``KIND:VALUE``:

* ``mean:0.5``   - mean cost at most 50% of the full model (cost model units);
* ``stages:3``   - mean number of stages used at most 3;
* ``max:0.5``    - every sample at most 50% of the full cost: a hard cap
  (the chosen policy is combined with a :class:`~adaptive_exit.policies.Budget`);
* ``flops:2.5G`` - mean FLOPs per sample (suffixes K, M, G, T);
* ``ms:15``      - mean latency per request (one sample at a time) in milliseconds;
* ``p95:20ms``   - the 95th percentile of that latency (any ``pNN``);
* ``rtf:0.3``    - mean real-time factor per utterance (processing time / audio duration).

``flops``, ``ms``, ``pNN`` and ``rtf`` are measured with a cost model
(:mod:`adaptive_exit.costs`): calibration gets an (N, L) table of each sample's
cumulative cost after each stage in that unit.

Calibration replays candidate policies on development traces, keeps those that
meet the budget and picks the best quality (ties: the cheaper one). The report
gives the achieved cost and quality on a held-out part next to the target.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from . import io
from .evaluation import LOWER_IS_BETTER, expand_family, score
from .policies import Budget, ExitPolicy, build_policy
from .staged import ExitResult
from .traces import Trace, replay

logger = logging.getLogger(__name__)

BUDGET_KINDS = ("mean", "stages", "max", "flops", "ms", "pNN", "rtf")
UNIT_OF_KIND = {"mean": "fraction", "max": "fraction", "stages": "stages", "flops": "flops", "ms": "ms", "rtf": "rtf"}
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def _number(raw: str, kind: str) -> float:
    raw = raw.strip().lower()
    if raw.endswith("%"):
        return float(raw[:-1]) / 100
    if kind in ("ms", "p") and raw.endswith("ms"):
        return float(raw[:-2])
    if kind == "flops" and raw[-1:] in _SUFFIX:
        return float(raw[:-1]) * _SUFFIX[raw[-1]]
    return float(raw)


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
        percentile = kind.startswith("p") and kind[1:].isdigit() and 0 < int(kind[1:]) < 100
        if not sep or (kind not in UNIT_OF_KIND and not percentile):
            raise ValueError(f"bad budget {text!r}: expected KIND:VALUE with KIND one of {BUDGET_KINDS} "
                             "(e.g. 'mean:0.5', 'p95:20ms', 'rtf:0.3', 'flops:2G')")
        raw = value.strip()
        try:
            number = _number(raw, "p" if percentile else kind)
        except ValueError:
            raise ValueError(f"bad budget {text!r}: {raw!r} is not a number") from None
        if number <= 0:
            raise ValueError(f"bad budget {text!r}: the value must be > 0")
        if kind in ("mean", "max") and number > 1:
            raise ValueError(f"bad budget {text!r}: {kind} is a fraction of the full cost, in (0, 1]")
        return cls(kind, number)

    @property
    def unit(self) -> str:
        """The cost unit this budget is measured in (see :mod:`adaptive_exit.costs`)."""
        return UNIT_OF_KIND.get(self.kind, "ms")

    @property
    def needs_cost_model(self) -> bool:
        return self.unit in ("flops", "ms", "rtf")

    def achieved(self, result: ExitResult, costs: Tensor | None = None) -> float:
        """The quantity this budget limits, measured on a result.

        ``costs``: the (N, L) cumulative per-sample cost table in :attr:`unit`,
        required by cost-model budgets.
        """
        if self.kind == "stages":
            return result.mean_stages
        if self.kind == "max":
            return float(result.cost.max()) / result.full_cost
        if self.kind == "mean":
            return result.cost_fraction
        if costs is None:
            raise ValueError(f"budget {self} needs per-sample costs in {self.unit} from a cost model")
        if costs.shape[0] != result.exit_stage.shape[0]:
            raise ValueError(f"cost table has {costs.shape[0]} samples, the result {result.exit_stage.shape[0]}")
        spent = costs[torch.arange(costs.shape[0]), result.exit_stage.cpu()].double()
        if self.kind.startswith("p") and self.kind not in UNIT_OF_KIND:
            return float(torch.quantile(spent, int(self.kind[1:]) / 100))
        return float(spent.mean())

    def met(self, result: ExitResult, costs: Tensor | None = None, tolerance: float = 1e-9) -> bool:
        return self.achieved(result, costs) <= self.value * (1 + tolerance)

    def __str__(self) -> str:
        suffix = "ms" if self.unit == "ms" else ""
        return f"{self.kind}:{self.value:g}{suffix}"


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


def candidate_policies(families: dict[str, Iterable[Any]]) -> list[str]:
    return [spec for family, values in families.items() for spec, _ in expand_family(family, values)]


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
    if trace.num_samples == 0:
        raise ValueError("cannot calibrate on an empty trace")
    policies = [build_policy(c) for c in candidates]
    if budget.kind == "max":
        cap = Budget(max_fraction=budget.value)
        policies = [p | cap for p in policies] + [cap]
    elif not (budget.kind == "mean" and budget.value >= 1):
        # Capped variants (and the caps alone: static truncation) widen the search so that a
        # tight budget gets the best capped policy instead of no answer: for a mean fraction
        # the cap at that fraction always fits; for other units every depth is offered.
        caps = [Budget(max_fraction=budget.value)] if budget.kind == "mean" else \
            [Budget(max_stages=k) for k in range(1, trace.num_stages)]
        policies = policies + [p | cap for p in policies for cap in caps] + caps
    if not policies:
        raise ValueError("calibration needs at least one candidate policy")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    best: tuple | None = None
    for policy in policies:
        result = replay(trace, policy)
        if not budget.met(result, costs):
            continue
        key = (sign * score(trace, result.exit_stage, metric), -result.cost_fraction)
        if best is None or key > best[0]:
            best = (key, policy, result)
    if best is None:
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


BUDGET_TABLE_FILE = "budget_policies.json"


class BudgetTable:
    """Calibrated policies for several budgets, so a running model can move between
    budgets without reloading or recalibrating (a device under load drops from 70%
    to 40% of the full model).

    ``policy_for(budget)``: the policy calibrated for exactly that budget; otherwise
    the one calibrated for the largest budget of the same kind that does not exceed
    it; otherwise, for fractions of the full model, the hard cap alone
    (``budget:max_fraction=F``), which holds for every sample.
    """

    def __init__(self, entries: dict[str, str] | None = None):
        self.entries: dict[BudgetSpec, str] = {}
        for budget, policy in (entries or {}).items():
            self.add(budget, policy)  # parses and validates both

    def add(self, budget: str | BudgetSpec, policy: str) -> None:
        self.entries[BudgetSpec.parse(budget)] = build_policy(policy).spec()

    def policy_for(self, budget: str | BudgetSpec) -> str:
        budget = BudgetSpec.parse(budget)
        if budget in self.entries:
            return self.entries[budget]
        fitting = [b for b in self.entries if b.kind == budget.kind and b.value <= budget.value]
        if fitting:
            return self.entries[max(fitting, key=lambda b: b.value)]
        if budget.kind in ("mean", "max"):
            return Budget(max_fraction=budget.value).spec()
        known = ", ".join(str(b) for b in sorted(self.entries, key=str)) or "none"
        raise ValueError(f"no calibrated policy fits budget {budget} (calibrated: {known}); run calibrate for it")

    def to_dict(self) -> dict[str, str]:
        return {str(b): p for b, p in sorted(self.entries.items(), key=lambda item: (item[0].kind, item[0].value))}

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / BUDGET_TABLE_FILE
        io.write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> "BudgetTable":
        """The model folder's table (empty if it has none; a clear error if it is corrupt)."""
        path = Path(model_dir) / BUDGET_TABLE_FILE
        if not path.exists():
            return cls()
        try:
            return cls(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: not a valid budget table ({exc}); re-run calibrate") from exc


def resolve_policy(model_dir: str | Path, default_policy: str, policy: str | None = None, budget: str | None = None) -> str:
    """The policy a CLI should run: ``policy`` if given; for ``budget`` a bare fraction
    (``0.5``) caps the default policy per sample, a budget spec (``mean:0.4``) picks from
    the model's calibrated budget table; otherwise the model's default."""
    if policy:
        return policy
    if budget is None:
        return default_policy
    try:
        fraction = float(budget)
    except ValueError:
        return BudgetTable.load(model_dir).policy_for(budget)
    if not 0 < fraction <= 1:
        raise ValueError(f"--budget {budget}: a bare number is a fraction of the full model in (0, 1]")
    return f"{default_policy} | budget:max_fraction={fraction}"

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
(:mod:`adaptive_exit.budgets.costs`): calibration gets an (N, L) table of each sample's
cumulative cost after each stage in that unit.

Calibration replays candidate policies on development traces, keeps those that
meet the budget and picks the best quality (ties: the cheaper one). The report
gives the achieved cost and quality on a held-out part next to the target.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from adaptive_exit import io
from adaptive_exit.policies import Budget, ExitPolicy, build_policy
from adaptive_exit.runtime.staged import ExitResult
from adaptive_exit.evaluation import expand_family, metric_for, score
from adaptive_exit.runtime.traces import Trace, replay

logger = logging.getLogger(__name__)


class BudgetKind:
    """One kind of budget: how its value is written, its cost unit and what it limits.

    ``unit`` names the per-sample cost table the kind is measured in (see
    :mod:`adaptive_exit.budgets.costs`: stages, fraction, flops, ms, rtf); ``measure``
    turns each sample's spent cost (N,) into the achieved figure (a mean, a
    maximum, a percentile). ``fraction`` kinds take values in (0, 1] of the full
    model; ``hard_cap`` kinds must hold for every sample (calibration adds a
    per-sample cap). A new kind is one subclass decorated with
    :func:`register_budget_kind`.
    """

    name = ""
    unit = "fraction"
    fraction = False
    hard_cap = False
    suffixes: dict[str, float] = {}
    description = ""

    @classmethod
    def for_name(cls, name: str) -> "BudgetKind | None":
        """An instance if ``name`` (lower case) is this kind, else None."""
        return cls() if name == cls.name else None

    @property
    def label(self) -> str:
        return self.name

    def parse_value(self, raw: str) -> float:
        text = raw.strip().lower()
        scale = 1.0
        if text.endswith("%"):
            text, scale = text[:-1], 0.01
        else:
            for suffix, factor in sorted(self.suffixes.items(), key=lambda item: -len(item[0])):
                if suffix and text.endswith(suffix):
                    text, scale = text[: -len(suffix)], factor
                    break
        value = float(text) * scale  # ValueError for anything that is not a number
        if not math.isfinite(value):
            raise ValueError(f"{raw.strip()!r} is not a finite number")
        return value

    def check(self, value: float) -> None:
        if value <= 0:
            raise ValueError("the value must be > 0")
        if self.fraction and value > 1:
            raise ValueError(f"{self.label} is a fraction of the full cost, in (0, 1]")

    def measure(self, spent: Tensor) -> float:
        """The achieved figure from each sample's spent cost in :attr:`unit`."""
        return float(spent.double().mean())

    def format_value(self, value: float) -> str:
        return f"{value:g}ms" if self.unit == "ms" else f"{value:g}"

    @property
    def needs_cost_model(self) -> bool:
        return self.unit not in ("stages", "fraction")


_KINDS: list[type[BudgetKind]] = []


def register_budget_kind(cls: type[BudgetKind]) -> type[BudgetKind]:
    """Class decorator: make a :class:`BudgetKind` usable in ``KIND:VALUE`` budgets."""
    _KINDS.append(cls)
    return cls


def budget_kind(name: str) -> BudgetKind:
    name = name.strip().lower()
    for cls in reversed(_KINDS):  # a later registration may refine an earlier one
        kind = cls.for_name(name)
        if kind is not None:
            return kind
    raise ValueError(f"unknown budget kind {name!r}; known: {', '.join(known_budget_kinds())}")


def known_budget_kinds() -> list[str]:
    return [cls().label if cls.name else cls.description for cls in _KINDS]


@register_budget_kind
class MeanFraction(BudgetKind):
    """``mean:0.5``: mean cost at most 50% of the full model (in the model's stage costs)."""

    name, unit, fraction = "mean", "fraction", True


@register_budget_kind
class MaxFraction(BudgetKind):
    """``max:0.5``: every sample at most 50% of the full cost (a hard per-sample cap)."""

    name, unit, fraction, hard_cap = "max", "fraction", True, True

    def measure(self, spent: Tensor) -> float:
        return float(spent.double().max())


@register_budget_kind
class MeanStages(BudgetKind):
    """``stages:3``: at most 3 stages used on average."""

    name, unit = "stages", "stages"


@register_budget_kind
class MeanFlops(BudgetKind):
    """``flops:2.5G``: mean FLOPs per sample (suffixes K, M, G, T)."""

    name, unit = "flops", "flops"
    suffixes = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


@register_budget_kind
class MeanLatency(BudgetKind):
    """``ms:15``: mean latency of one request (one sample at a time), milliseconds."""

    name, unit = "ms", "ms"
    suffixes = {"ms": 1.0}


class PercentileLatency(MeanLatency):
    """``p95:20ms``: the 95th percentile of the request latency (any pNN, 0 < NN < 100)."""

    name = ""
    description = "pNN"

    def __init__(self, percentile: int = 95):
        self.percentile = percentile

    @classmethod
    def for_name(cls, name):
        match = re.fullmatch(r"p(\d{1,2})", name)
        return cls(int(match.group(1))) if match and 0 < int(match.group(1)) < 100 else None

    @property
    def label(self) -> str:
        return f"p{self.percentile}"

    def measure(self, spent: Tensor) -> float:
        return float(torch.quantile(spent.double(), self.percentile / 100))


register_budget_kind(PercentileLatency)


@register_budget_kind
class MeanRtf(BudgetKind):
    """``rtf:0.3``: mean real-time factor per utterance (processing time / audio duration)."""

    name, unit = "rtf", "rtf"


@dataclass(frozen=True)
class BudgetSpec:
    """A parsed budget ``KIND:VALUE``; ``str()`` writes it back canonically."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: "str | BudgetSpec") -> "BudgetSpec":
        if isinstance(text, BudgetSpec):
            return text
        raw_text = str(text)
        name, sep, raw = raw_text.partition(":")
        example = "e.g. 'mean:0.5', 'max:0.5', 'stages:3', 'flops:2G', 'ms:15', 'p95:20ms', 'rtf:0.3'"
        if not sep:
            hint = ""
            try:
                float(raw_text)
                hint = f" (a bare number: write 'max:{raw_text.strip()}' for a per-sample cap or 'mean:{raw_text.strip()}' for a mean)"
            except ValueError:
                pass
            raise ValueError(f"bad budget {raw_text!r}: expected KIND:VALUE{hint}; {example}")
        try:
            kind = budget_kind(name)
        except ValueError as exc:
            raise ValueError(f"bad budget {raw_text!r}: {exc}") from None
        try:
            value = kind.parse_value(raw)
        except ValueError:
            raise ValueError(f"bad budget {raw_text!r}: the value {raw.strip()!r} is not a finite number") from None
        try:
            kind.check(value)
        except ValueError as exc:
            raise ValueError(f"bad budget {raw_text!r}: {exc}") from None
        return cls(kind.label, value)

    @property
    def kind_of(self) -> BudgetKind:
        return budget_kind(self.kind)

    @property
    def unit(self) -> str:
        """The cost unit this budget is measured in (see :mod:`adaptive_exit.budgets.costs`)."""
        return self.kind_of.unit

    @property
    def needs_cost_model(self) -> bool:
        return self.kind_of.needs_cost_model

    def spent(self, result: ExitResult, costs: Tensor | None = None) -> Tensor:
        """(N,) each sample's cost in :attr:`unit` at its exit stage.

        ``costs``: the (N, L) cumulative per-sample cost table in :attr:`unit`,
        required by cost-model budgets (FLOPs, ms, pNN, RTF).
        """
        if costs is None:
            if self.unit == "stages":
                return result.stages_used.double().cpu()
            if self.unit == "fraction":
                return result.fractions.cpu()
            raise ValueError(f"budget {self} needs per-sample costs in {self.unit} from a cost model")
        if costs.shape[0] != result.exit_stage.shape[0]:
            raise ValueError(f"cost table has {costs.shape[0]} samples, the result {result.exit_stage.shape[0]}")
        return costs[torch.arange(costs.shape[0]), result.exit_stage.cpu()].double()

    def achieved(self, result: ExitResult, costs: Tensor | None = None) -> float:
        """The quantity this budget limits, measured on a result."""
        return self.kind_of.measure(self.spent(result, costs))

    def met(self, result: ExitResult, costs: Tensor | None = None, tolerance: float = 1e-9) -> bool:
        return self.achieved(result, costs) <= self.value * (1 + tolerance)

    def __str__(self) -> str:
        return f"{self.kind}:{self.kind_of.format_value(self.value)}"


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


BUDGET_TABLE_FILE = "budget_policies.json"


class BudgetTable:
    """Calibrated policies for several budgets, so a running model can move between
    budgets without reloading or recalibrating (a device under load drops from 70%
    to 40% of the full model).

    :meth:`policy_for` is the one place a budget becomes a policy: the policy
    calibrated for exactly that budget; otherwise the one calibrated for the
    largest budget of the same kind that does not exceed it; otherwise, for
    fractions of the full model, a per-sample hard cap at that fraction (on the
    default policy when one is given: ``default | budget:max_fraction=F``), which
    holds for every sample; otherwise a clear error.
    """

    def __init__(self, entries: dict[str, str | ExitPolicy] | None = None):
        self.entries: dict[BudgetSpec, ExitPolicy] = {}
        for budget, policy in (entries or {}).items():
            self.add(budget, policy)  # parses and validates both

    def add(self, budget: str | BudgetSpec, policy: str | dict | ExitPolicy) -> None:
        self.entries[BudgetSpec.parse(budget)] = build_policy(policy)

    def policy_for(self, budget: str | BudgetSpec, default: ExitPolicy | str | None = None) -> ExitPolicy:
        budget = BudgetSpec.parse(budget)
        if budget in self.entries:
            return self.entries[budget]
        fitting = [b for b in self.entries if b.kind == budget.kind and b.value <= budget.value]
        if fitting:
            return self.entries[max(fitting, key=lambda b: b.value)]
        if budget.kind_of.fraction:
            if budget.value >= 1:
                return build_policy(default) if default is not None else build_policy("full")
            cap = Budget(max_fraction=budget.value)
            return build_policy(default) | cap if default is not None else cap
        known = ", ".join(str(b) for b in sorted(self.entries, key=str)) or "none"
        raise ValueError(f"no calibrated policy fits budget {budget} (calibrated: {known}); run calibrate for it")

    def to_dict(self) -> dict[str, str]:
        ordered = sorted(self.entries.items(), key=lambda item: (item[0].kind, item[0].value))
        return {str(b): p.spec() for b, p in ordered}

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
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            return cls(data)
        except (ValueError, AttributeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a valid budget table ({exc}); re-run calibrate") from exc

    @classmethod
    def update(cls, model_dir: str | Path, entries: dict[str | BudgetSpec, str | ExitPolicy]) -> "BudgetTable":
        """Add entries to the model folder's table under a file lock (concurrent
        calibrations of one model keep every entry) and return the merged table."""
        with io.locked(Path(model_dir) / BUDGET_TABLE_FILE):
            table = cls.load(model_dir)
            for budget, policy in entries.items():
                table.add(budget, policy)
            table.save(model_dir)
        return table


def policy_for_request(model_dir: str | Path, default: ExitPolicy, policy: str | None = None,
                       budget: str | None = None) -> ExitPolicy:
    """What a command runs: ``policy`` if given, else the model's budget table's choice
    for ``budget``, else the model's default policy."""
    if policy:
        return build_policy(policy)
    if budget is None:
        return default
    return BudgetTable.load(model_dir).policy_for(budget, default)

"""Budget kinds (``KIND:VALUE``: mean, max, stages, flops, ms, pNN, rtf) and the parsed
:class:`BudgetSpec`. A new kind is one subclass decorated with :func:`register_budget_kind`."""
from __future__ import annotations

import decimal
import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from adaptive_exit.runtime.staged import ExitResult

from .units import cost_unit


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
    quantile: float | None = None  # the per-sample quantile measured (None: the mean; 1.0: the maximum)
    risk = False  # a quality guarantee (drop:), calibrated by risk control instead of by cost

    @classmethod
    def for_name(cls, name: str) -> "BudgetKind | None":
        """An instance if ``name`` (lower case) is this kind, else None."""
        return cls() if name == cls.name else None

    @property
    def label(self) -> str:
        return self.name

    def parse_value(self, raw: str) -> float:
        text = raw.strip().lower()
        scale = decimal.Decimal(1)
        if text.endswith("%"):
            text, scale = text[:-1], decimal.Decimal("0.01")
        else:
            for suffix, factor in sorted(self.suffixes.items(), key=lambda item: -len(item[0])):
                if suffix and text.endswith(suffix):
                    text, scale = text[: -len(suffix)], decimal.Decimal(repr(factor))
                    break
        float(text)  # ValueError for anything that is not a number
        try:  # scaled in decimal, so "41%" is 0.41 and writes back as itself (41 * 0.01 is 0.41000000000000003 in floats)
            value = float(decimal.Decimal(text) * scale)
        except decimal.DecimalException:
            raise ValueError(f"{raw.strip()!r} is not a finite number") from None
        if not math.isfinite(value):
            raise ValueError(f"{raw.strip()!r} is not a finite number")
        return value

    def check(self, value: float) -> None:
        if value <= 0:
            raise ValueError("the value must be > 0")
        if self.fraction and value > 1:
            raise ValueError(f"{self.label} is a fraction of the full cost, in (0, 1]")

    def measure(self, spent: Tensor) -> float:
        """The achieved figure from each sample's spent cost in :attr:`unit`: the mean, or
        the :attr:`quantile` of the samples' costs."""
        if self.quantile is None:
            return float(spent.double().mean())
        return float(torch.quantile(spent.double(), self.quantile))

    def format_value(self, value: float) -> str:
        return cost_unit(self.unit).format_value(value)

    @property
    def needs_cost_model(self) -> bool:
        return cost_unit(self.unit).needs_cost_model


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
    quantile = 1.0


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
        self.quantile = percentile / 100

    @classmethod
    def for_name(cls, name):
        match = re.fullmatch(r"p(\d{1,2})", name)
        return cls(int(match.group(1))) if match and 0 < int(match.group(1)) < 100 else None

    @property
    def label(self) -> str:
        return f"p{self.percentile}"


register_budget_kind(PercentileLatency)


@register_budget_kind
class MeanRtf(BudgetKind):
    """``rtf:0.3``: mean real-time factor per utterance (processing time / audio duration)."""

    name, unit = "rtf", "rtf"


@register_budget_kind
class QualityDrop(BudgetKind):
    """``drop:0.01``: the cheapest policy whose quality drop against the full model is at most
    0.01 (in the metric's units: accuracy is a fraction, so 1 point; ``1%`` is the same), with
    the calibration's stated confidence. A quality guarantee rather than a cost: calibrated by
    :func:`adaptive_exit.budgets.risk.certify`, never met or missed by a cost."""

    name, unit = "drop", "fraction"
    risk = True

    def check(self, value: float) -> None:
        if value < 0:
            raise ValueError("the allowed drop must be >= 0")


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
        example = "e.g. 'mean:0.5', 'max:0.5', 'stages:3', 'flops:2G', 'ms:15', 'p95:20ms', 'rtf:0.3', 'drop:0.01'"
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
            spent = cost_unit(self.unit).from_result(result)
            if spent is None:
                raise ValueError(f"budget {self} needs per-sample costs in {self.unit} from a cost model")
            return spent
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

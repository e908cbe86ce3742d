"""Cost units: what a budget is counted in, and how each unit measures itself.

A unit turns a model (and, for measured units, its cost model, the samples' input
sizes and audio durations) into an (N, L) table: the cumulative cost of sample i
when it exits after stage k. ``stages`` and ``fraction`` come from the model alone
(and from an :class:`ExitResult` directly); ``flops``, ``ms`` and ``rtf`` need a
:class:`~adaptive_exit.budgets.costs.CostModel`. A new unit is one subclass decorated
with :func:`register_cost_unit`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from adaptive_exit.runtime.staged import ExitResult, StagedModel, stage_costs

if TYPE_CHECKING:
    from .costs import CostModel


class CostUnit:
    name = ""
    needs_cost_model = True

    def table(self, model: StagedModel, sizes: Sequence[int] | None, cost_model: "CostModel | None",
              durations: Sequence[float] | None) -> Tensor:
        raise NotImplementedError

    def from_result(self, result: ExitResult) -> Tensor | None:
        """(N,) each sample's spent cost read off a result, or None when only a cost table knows it."""
        return None

    def format_value(self, value: float) -> str:
        return f"{value:g}"

    @staticmethod
    def _need(what: object, message: str) -> None:
        if what is None:
            raise ValueError(message)


_UNITS: dict[str, CostUnit] = {}


def register_cost_unit(cls: type[CostUnit]) -> type[CostUnit]:
    _UNITS[cls.name] = cls()
    return cls


def cost_unit(name: str) -> CostUnit:
    if name not in _UNITS:
        raise ValueError(f"unknown cost unit {name!r}; expected one of {tuple(_UNITS)}")
    return _UNITS[name]


def cost_table(unit: str, model: StagedModel, sizes: Sequence[int] | None = None, cost_model: "CostModel | None" = None,
               durations: Sequence[float] | None = None) -> Tensor:
    """(N, L) cumulative cost of each sample exiting after each stage, in ``unit``."""
    return cost_unit(unit).table(model, sizes, cost_model, durations)


@register_cost_unit
class Stages(CostUnit):
    name, needs_cost_model = "stages", False

    def table(self, model, sizes, cost_model, durations):
        self._need(sizes, "cost unit 'stages' needs the number of samples (sizes)")
        return torch.ones(len(sizes), model.num_stages, dtype=torch.float64).cumsum(1)

    def from_result(self, result):
        return result.stages_used.double().cpu()


@register_cost_unit
class Fraction(CostUnit):
    name, needs_cost_model = "fraction", False

    def table(self, model, sizes, cost_model, durations):
        self._need(sizes, "cost unit 'fraction' needs the number of samples (sizes)")
        costs = torch.tensor(stage_costs(model), dtype=torch.float64)
        return (costs / costs.sum()).expand(len(sizes), -1).clone().cumsum(1)

    def from_result(self, result):
        return result.fractions.cpu()


@register_cost_unit
class Flops(CostUnit):
    name = "flops"

    def table(self, model, sizes, cost_model, durations):
        self._need(sizes if cost_model is not None else None, "cost unit 'flops' needs input sizes and a cost model")
        return torch.tensor([cost_model.flops(s) for s in sizes], dtype=torch.float64).cumsum(1)


@register_cost_unit
class Milliseconds(CostUnit):
    name = "ms"

    def table(self, model, sizes, cost_model, durations):
        self._need(sizes if cost_model is not None else None, f"cost unit {self.name!r} needs input sizes and a cost model")
        return torch.from_numpy(cost_model.latency_table(sizes)).cumsum(1)

    def format_value(self, value):
        return f"{value:g}ms"


@register_cost_unit
class RealTimeFactor(Milliseconds):
    name = "rtf"

    def table(self, model, sizes, cost_model, durations):
        latency = super().table(model, sizes, cost_model, durations)
        self._need(durations, "cost unit 'rtf' needs the audio duration of every sample")
        seconds = torch.as_tensor(durations, dtype=torch.float64)
        if bool((seconds <= 0).any()):
            raise ValueError("rtf needs positive audio durations")
        return latency / 1000.0 / seconds[:, None]

    def format_value(self, value):
        return f"{value:g}"

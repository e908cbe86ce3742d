"""A hard cap on stages or cost per sample (the ``budget:`` policy)."""
from __future__ import annotations

from typing import Sequence

import torch

from .base import ExitPolicy, integer_arg, number_arg, register_policy


@register_policy
class Budget(ExitPolicy):
    """A hard cap: exit once ``max_stages`` stages ran, or before the next stage
    would push the cumulative cost past ``max_cost`` (model cost units) or past
    ``max_fraction`` of the full model's cost. The first stage always runs."""

    name = "budget"

    def __init__(self, max_stages: int | None = None, max_cost: float | None = None, max_fraction: float | None = None):
        if max_stages is None and max_cost is None and max_fraction is None:
            raise ValueError("budget needs max_stages, max_cost or max_fraction")
        if max_stages is not None:
            max_stages = integer_arg(max_stages, "budget max_stages", 1)
        for label, value in (("max_cost", max_cost), ("max_fraction", max_fraction)):
            if value is not None and not number_arg(value, f"budget {label}") > 0:
                raise ValueError(f"budget {label} must be > 0, got {value!r}")
        self.max_stages = max_stages
        self.max_cost = None if max_cost is None else float(max_cost)
        self.max_fraction = None if max_fraction is None else float(max_fraction)

    def last_stage(self, stage_costs: Sequence[float]) -> int:
        """Index of the last stage this budget lets a sample run."""
        num = len(stage_costs)
        last = num - 1 if self.max_stages is None else min(num, self.max_stages) - 1
        limits = []
        if self.max_cost is not None:
            limits.append(self.max_cost)
        if self.max_fraction is not None:
            limits.append(self.max_fraction * sum(stage_costs))
        for limit in limits:
            cumulative = 0.0
            for k, cost in enumerate(stage_costs):
                cumulative += cost
                if k > 0 and cumulative > limit * (1 + 1e-9):
                    last = min(last, k - 1)
                    break
        return last

    def _init(self, batch_size, stage_costs, device):
        return {"last": self.last_stage(stage_costs)}

    def step(self, k, output, state):
        return torch.full((output.shape[0],), k >= state["last"], dtype=torch.bool, device=output.device)

    def spec(self):
        parts = []
        if self.max_stages is not None:
            parts.append(f"max_stages={self.max_stages}")
        if self.max_cost is not None:
            parts.append(f"max_cost={self.max_cost:g}")
        if self.max_fraction is not None:
            parts.append(f"max_fraction={self.max_fraction:g}")
        return "budget:" + ",".join(parts)

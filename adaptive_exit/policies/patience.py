"""PABEE's patience rule (also for regression values and signals, with a distance)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import ExitPolicy, integer_arg, number_arg, register_policy
from .signals import DISTANCES


@register_policy
class Patience(ExitPolicy):
    """PABEE's patience rule.

    A counter per sample: +1 when stage k's prediction equals stage k-1's, reset
    to 0 otherwise; exit when the counter reaches ``patience``. ``patience=0``
    never exits early. Predictions are the argmax over the last dimension (all
    positions must agree for token outputs). With a ``threshold``, "unchanged"
    means ``distance(prev, cur) < threshold`` instead, for regression values and
    signals (``distance``: abs, l2 or relative).
    """

    name = "patience"

    def __init__(self, patience: int, threshold: float | None = None, distance: str | None = None):
        patience = integer_arg(patience, "patience", 0)
        if distance is not None and threshold is None:
            raise ValueError("patience: a distance needs a threshold (e.g. 'patience:2,threshold=0.05,distance=relative')")
        if threshold is not None:
            threshold = number_arg(threshold, "patience threshold")
            if not threshold >= 0:
                raise ValueError(f"patience threshold must be >= 0, got {threshold!r}")
            distance = distance or "abs"
            if distance not in DISTANCES:
                raise ValueError(f"unknown distance {distance!r}; known: {sorted(DISTANCES)}")
        self.patience = patience
        self.threshold = threshold
        self.distance = distance

    def _init(self, batch_size, stage_costs, device):
        return {"counter": torch.zeros(batch_size, dtype=torch.long, device=device), "prev": None}

    def _unchanged(self, prev: Tensor, output: Tensor) -> Tensor:
        if self.threshold is None:
            return (prev.argmax(-1) == output.argmax(-1)).reshape(output.shape[0], -1).all(dim=1)
        return DISTANCES[self.distance](prev, output) < self.threshold

    def step(self, k, output, state):
        prev = state["prev"]
        if prev is not None:
            unchanged = self._unchanged(prev, output)
            state["counter"] = torch.where(unchanged, state["counter"] + 1, torch.zeros_like(state["counter"]))
        state["prev"] = output
        if self.patience == 0:
            return torch.zeros(output.shape[0], dtype=torch.bool, device=output.device)
        return state["counter"] >= self.patience

    def threshold_values(self, outputs):
        if self.threshold is None:
            raise ValueError("plain patience has no threshold; quantiles need patience:P,threshold={},distance=...")
        return torch.cat([DISTANCES[self.distance](outputs[:, k], outputs[:, k + 1]) for k in range(outputs.shape[1] - 1)])

    def spec(self):
        if self.threshold is None:
            return f"patience:{self.patience}"
        return f"patience:{self.patience},threshold={self.threshold:g},distance={self.distance}"

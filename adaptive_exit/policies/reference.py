"""The two reference points of every sweep: the full model and the oracle exit (evaluation only)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import ExitPolicy, register_policy


@register_policy
class Never(ExitPolicy):
    """Never exit early: the full model."""

    name = "full"
    aliases = ("never", "none")

    def step(self, k, output, state):
        return torch.zeros(output.shape[0], dtype=torch.bool, device=output.device)

    def spec(self):
        return "full"


@register_policy
class Oracle(ExitPolicy):
    """Exit at the earliest stage whose output is right (evaluation only).

    ``targets`` are the batch's targets in its original row order. For class
    logits "right" means argmax == target; with ``tolerance`` it means
    ``|output - target| <= tolerance`` for every element (regression).
    It cannot be written in a spec: it needs the targets.
    """

    name = "oracle"

    @classmethod
    def from_spec(cls, name, args, kwargs):
        raise ValueError("the oracle needs targets: build Oracle(targets) in code (evaluation only)")

    def __init__(self, targets: Tensor, tolerance: float | None = None):
        self.targets = torch.as_tensor(targets)
        self.tolerance = tolerance

    def _init(self, batch_size, stage_costs, device):
        if self.targets.shape[0] != batch_size:
            raise ValueError(f"oracle has {self.targets.shape[0]} targets for a batch of {batch_size}")
        return {"targets": self.targets.to(device)}

    def step(self, k, output, state):
        targets = state["targets"]
        if self.tolerance is None:
            right = output.argmax(-1) == targets
        else:
            right = (output.reshape(targets.shape).double() - targets.double()).abs() <= self.tolerance
        return right.reshape(output.shape[0], -1).all(dim=1)

    def spec(self):
        return "oracle" if self.tolerance is None else f"oracle:tolerance={self.tolerance:g}"

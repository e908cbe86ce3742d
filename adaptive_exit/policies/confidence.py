"""Confidence exits: max-probability or (normalised) entropy against a threshold (DeeBERT, FastBERT)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import ExitPolicy, number_arg, register_policy
from .signals import entropy


CONFIDENCE_MEASURES = ("max_prob", "entropy", "normalized_entropy")


@register_policy
class Confidence(ExitPolicy):
    """Exit when the prediction is confident enough (DeeBERT, FastBERT).

    ``max_prob``: exit when max softmax probability >= threshold.
    ``entropy``: exit when the entropy (nats) <= threshold.
    ``normalized_entropy``: entropy / log(num_classes) <= threshold.
    For outputs with positions (tokens), the least confident position decides.
    Specs: ``max_prob:0.9``, ``entropy:0.3``, ``normalized_entropy:0.2``.
    """

    name = "confidence"
    aliases = CONFIDENCE_MEASURES

    @classmethod
    def from_spec(cls, name, args, kwargs):
        if name in CONFIDENCE_MEASURES:
            if "measure" in kwargs:
                raise ValueError(f"{name!r} names its measure already; drop measure=")
            kwargs = {**kwargs, "measure": name}
        return cls(*args, **kwargs)

    def __init__(self, threshold: float, measure: str = "max_prob"):
        if measure not in CONFIDENCE_MEASURES:
            raise ValueError(f"unknown confidence measure {measure!r}; known: {list(CONFIDENCE_MEASURES)}")
        threshold = number_arg(threshold, f"{measure} threshold")
        if threshold < 0:
            raise ValueError(f"{measure} threshold must be a finite number >= 0, got {threshold!r}")
        if measure == "max_prob" and threshold > 1:
            raise ValueError(f"max_prob threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        self.measure = measure

    def score(self, output: Tensor) -> Tensor:
        """(B,) the measure of each sample (the least confident position for tokens)."""
        batch = output.shape[0]
        if self.measure == "max_prob":
            return torch.softmax(output.double(), dim=-1).amax(dim=-1).reshape(batch, -1).amin(dim=1)
        return entropy(output, normalized=self.measure == "normalized_entropy").reshape(batch, -1).amax(dim=1)

    def step(self, k, output, state):
        if output.shape[-1] < 2:
            raise ValueError("confidence policies need class logits (last dimension >= 2); use patience with a threshold for regression")
        score = self.score(output)
        return score >= self.threshold if self.measure == "max_prob" else score <= self.threshold

    def threshold_values(self, outputs):
        return torch.cat([self.score(outputs[:, k]) for k in range(max(1, outputs.shape[1] - 1))])  # the last stage exits anyway

    def spec(self):
        return f"{self.measure}:{self.threshold:g}"

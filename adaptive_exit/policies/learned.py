"""A learned exit: per stage, a small logistic model predicts from what the runner already
has whether this exit is already as good as going on to the end (BERxiT's learning-to-exit,
with the agreement features of PABEE and PCEE-BERT).

The fitted weights live in the policy's spec, so a learned policy is saved, replayed,
calibrated, served and streamed like any other: ``learned:0.7,kind=logits,w=...``. It is
fitted from recorded exit outputs and their per-sample quality (:meth:`Learned.fit`) on
data kept out of the final evaluation.

Features, for class logits (the least confident position decides for token outputs):
max probability, margin between the two best classes, normalised entropy, how many
stages in a row the prediction has not changed, whether it changed at this stage, and
the change of max probability since the last stage. For values and signals (regression,
enhanced spectra): log relative and absolute distance to the previous stage's output,
the previous stage's relative distance, and the run of stages whose relative distance
stayed under 1%.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .base import ExitPolicy, number_arg, register_policy
from .signals import abs_distance, entropy, relative_distance

KINDS = ("logits", "values")
_FEATURES = {"logits": 6, "values": 4}
_TINY = 1e-8
_SETTLED = 0.01  # relative distance under which a signal counts as unchanged


def _stage_features(kind: str, output: Tensor, state: dict) -> Tensor:
    """(B, F) features of stage ``output``, updating the per-sample ``state``."""
    batch = output.shape[0]
    prev = state.get("prev")
    if kind == "logits":
        probs = torch.softmax(output.double(), dim=-1)
        top2 = probs.topk(2, dim=-1).values
        max_prob = top2[..., 0].reshape(batch, -1).amin(dim=1)
        margin = (top2[..., 0] - top2[..., 1]).reshape(batch, -1).amin(dim=1)
        ent = entropy(output, normalized=True).reshape(batch, -1).amax(dim=1)
        labels = output.argmax(-1).reshape(batch, -1)
        if prev is None:
            same = torch.zeros(batch, dtype=torch.bool, device=output.device)
            delta = torch.zeros(batch, dtype=torch.float64, device=output.device)
        else:
            same = (labels == state["labels"]).all(dim=1)
            delta = max_prob - state["max_prob"]
        run = torch.where(same, state.get("run", torch.zeros_like(delta)) + 1, torch.zeros_like(delta))
        state.update(labels=labels, max_prob=max_prob, run=run)
        feats = [max_prob, margin, ent, run, (~same).double(), delta]
    else:
        if prev is None:
            zero = torch.zeros(batch, dtype=torch.float64, device=output.device)
            rel, dist, run = zero + math.log(_TINY), zero + math.log(_TINY), zero
        else:
            raw = relative_distance(prev, output).clamp(max=1e8)
            rel = torch.log(raw + _TINY)
            dist = torch.log(abs_distance(prev, output) + _TINY)
            run = torch.where(raw < _SETTLED, state["run"] + 1, torch.zeros_like(raw))
        prev_rel = state.get("rel", torch.full_like(rel, math.log(_TINY)))
        state.update(rel=rel, run=run)
        feats = [rel, dist, prev_rel, run]
    state["prev"] = output
    return torch.stack(feats, dim=1)


def stage_features(kind: str, outputs: Tensor) -> Tensor:
    """(N, L, F) features of recorded outputs (N, L, ...), as the policy computes them."""
    state: dict = {}
    return torch.stack([_stage_features(kind, outputs[:, k], state) for k in range(outputs.shape[1])], dim=1)


def output_kind(outputs: Tensor) -> str:
    """Class logits ((N, L, C) or per token (N, L, T, C), C >= 2) or values (regression
    scores (N, L, 1), enhanced spectra (N, L, 2, F, T))."""
    return "logits" if 3 <= outputs.dim() <= 4 and outputs.shape[-1] >= 2 else "values"


@register_policy
class Learned(ExitPolicy):
    """Exit at stage k when the stage's fitted model says the exit is as good as going on
    with probability >= ``threshold``. ``w``: per stage (all but the last), the feature
    weights then the bias, ``;``-separated (what :meth:`fit` writes)."""

    name = "learned"

    def __init__(self, threshold: float, w: str | Sequence[float], kind: str = "logits"):
        threshold = number_arg(threshold, "learned threshold")
        if not 0 <= threshold <= 1:
            raise ValueError(f"learned threshold is a probability in [0, 1], got {threshold}")
        if kind not in KINDS:
            raise ValueError(f"learned kind must be one of {list(KINDS)}, got {kind!r}")
        raw = str(w).split(";") if isinstance(w, (str, int, float)) else w
        values = [float(f"{number_arg(v, 'learned weight'):.6g}") for v in raw]  # what the spec holds, exactly
        width = _FEATURES[kind] + 1
        if not values or len(values) % width:
            raise ValueError(f"learned weights: {len(values)} numbers is not a whole number of stages of "
                             f"{width} ({_FEATURES[kind]} features and a bias) for kind {kind!r}")
        self.threshold, self.kind = threshold, kind
        self.weights = torch.tensor(values, dtype=torch.float64).reshape(-1, width)

    @property
    def num_stages(self) -> int:
        return self.weights.shape[0] + 1

    def _init(self, batch_size, stage_costs, device):
        if len(stage_costs) != self.num_stages:
            raise ValueError(f"this learned policy was fitted for a model of {self.num_stages} stages; "
                             f"this one has {len(stage_costs)}")
        return {}

    def probability(self, k: int, features: Tensor) -> Tensor:
        """(B,) the fitted probability that stage k's exit is as good as the last one's."""
        row = self.weights[k].to(features.device)
        return torch.sigmoid(features @ row[:-1] + row[-1])

    def step(self, k, output, state):
        features = _stage_features(self.kind, output, state)
        if k >= self.num_stages - 1:
            return torch.ones(output.shape[0], dtype=torch.bool, device=output.device)
        return self.probability(k, features) >= self.threshold

    def threshold_values(self, outputs):
        features = stage_features(self.kind, outputs)
        return torch.cat([self.probability(k, features[:, k]) for k in range(self.num_stages - 1)])

    def template(self) -> str:
        """The spec with ``{}`` in place of the threshold: the family a grid of thresholds
        sweeps (calibration candidates, benchmarks)."""
        weights = ";".join(f"{v:.6g}" for v in self.weights.reshape(-1).tolist())
        return f"learned:{{}},kind={self.kind},w={weights}"

    def spec(self):
        return self.template().format(f"{self.threshold:g}")

    @classmethod
    def fit(cls, outputs: Tensor, quality: Tensor, threshold: float = 0.5, kind: str | None = None,
            regularization: float = 1.0) -> "Learned":
        """Fit per-stage logistic models on recorded exit ``outputs`` (N, L, ...) and their
        per-sample ``quality`` (N, L, higher is better): the label of stage k is whether its
        quality is at least the last stage's. Features are standardised in the fit and the
        scaling folded into the weights. Keep the data apart from what you evaluate on."""
        from sklearn.linear_model import LogisticRegression

        kind = kind or output_kind(outputs)
        num_stages = outputs.shape[1]
        if num_stages < 2:
            raise ValueError("a learned exit needs a model of at least two stages")
        if tuple(quality.shape) != tuple(outputs.shape[:2]):
            raise ValueError(f"quality must be (N, L) = {tuple(outputs.shape[:2])}, got {tuple(quality.shape)}")
        features = stage_features(kind, outputs.double()).cpu().numpy()
        quality = torch.nan_to_num(quality.double(), nan=-math.inf).cpu().numpy()
        rows = []
        for k in range(num_stages - 1):
            x, y = features[:, k], quality[:, k] >= quality[:, -1]
            mean, scale = x.mean(axis=0), x.std(axis=0)
            scale = np.where(scale > 0, scale, 1.0)
            if y.all() or not y.any():  # one class: a constant decision
                w, b = np.zeros(x.shape[1]), (20.0 if y.all() else -20.0)
            else:
                model = LogisticRegression(C=regularization, max_iter=1000).fit((x - mean) / scale, y)
                w = model.coef_[0] / scale
                b = float(model.intercept_[0] - (model.coef_[0] * mean / scale).sum())
            rows.append([*w.tolist(), b])
        return cls(threshold, [v for row in rows for v in row], kind)

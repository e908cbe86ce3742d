"""What policies compare: distances between successive exit outputs, and entropy."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).double()


def abs_distance(prev: Tensor, cur: Tensor) -> Tensor:
    """Largest absolute change of any element (PABEE's regression rule for a scalar)."""
    return (_flat(cur) - _flat(prev)).abs().amax(dim=1)


def l2_distance(prev: Tensor, cur: Tensor) -> Tensor:
    return (_flat(cur) - _flat(prev)).norm(dim=1)


def relative_distance(prev: Tensor, cur: Tensor) -> Tensor:
    """||cur - prev||^2 / ||prev||^2: the spectral distance of progressive enhancement.

    Zero-padded positions add nothing to either sum, so padding cannot leak into
    the decision. A silent previous estimate gives +inf (never "converged").
    """
    num = (_flat(cur) - _flat(prev)).pow(2).sum(dim=1)
    den = _flat(prev).pow(2).sum(dim=1)
    out = num / den
    return torch.where(den > 0, out, torch.where(num > 0, torch.full_like(out, math.inf), torch.zeros_like(out)))


DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "abs": abs_distance,
    "l2": l2_distance,
    "relative": relative_distance,
}


def entropy(logits: Tensor, normalized: bool = False) -> Tensor:
    """Entropy in nats of softmax(logits) over the last dimension (float64);
    ``normalized`` divides by log(num_classes), giving a value in [0, 1]."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    value = -(logp.exp() * logp).sum(dim=-1)
    return value / math.log(logits.shape[-1]) if normalized else value

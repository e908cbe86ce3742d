"""Speech quality metrics: wide/narrow-band PESQ, STOI, ESTOI, SI-SDR.

A signal that cannot be scored (too short, silent reference, NaN, or PESQ's "no
utterance detected") gives NaN with the reason logged, never an exception in the
middle of an evaluation; reports count the NaNs.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

MIN_SECONDS = 0.25


def si_sdr(reference: Tensor | np.ndarray, estimate: Tensor | np.ndarray, eps: float = 0.0) -> Tensor:
    """Scale-invariant SDR in dB (Le Roux et al. 2019) of zero-meaned signals over the
    last dimension; differentiable. ``eps`` > 0 keeps it finite for training losses;
    with 0, a silent reference gives NaN. NumPy input is scored in float64."""
    reference, estimate = torch.as_tensor(reference), torch.as_tensor(estimate)
    if reference.dtype != torch.float64 and not (reference.requires_grad or estimate.requires_grad):
        reference, estimate = reference.double(), estimate.double()
    reference = reference - reference.mean(-1, keepdim=True)
    estimate = estimate - estimate.mean(-1, keepdim=True)
    energy = (reference * reference).sum(-1, keepdim=True)
    target = (estimate * reference).sum(-1, keepdim=True) / (energy + eps) * reference
    noise = estimate - target
    return 10 * torch.log10(((target * target).sum(-1) + eps) / ((noise * noise).sum(-1) + eps).clamp_min(1e-20))


def _unscorable(reference: np.ndarray, estimate: np.ndarray, sr: int) -> str | None:
    if reference.shape != estimate.shape:
        return f"length mismatch {reference.shape} vs {estimate.shape}"
    if len(reference) < MIN_SECONDS * sr:
        return f"too short ({len(reference) / sr:.3f} s)"
    if not (np.all(np.isfinite(reference)) and np.all(np.isfinite(estimate))):
        return "NaN or infinite samples"
    if not np.any(reference):
        return "silent reference"
    return None


def score(reference: np.ndarray, estimate: np.ndarray, sr: int = 16000, metrics: tuple[str, ...] = ("pesq", "stoi", "estoi", "si_sdr")) -> dict[str, float]:
    """Every requested metric for one utterance; NaN where it cannot be computed."""
    reason = _unscorable(reference, estimate, sr)
    if reason is not None:
        logger.warning("cannot score utterance: %s", reason)
        return {m: math.nan for m in metrics}
    out = {}
    for metric in metrics:
        try:
            out[metric] = _one(metric, reference, estimate, sr)
        except Exception as exc:  # noqa: BLE001 - pesq raises its own error types
            logger.warning("%s failed: %s", metric, exc)
            out[metric] = math.nan
    return out


def _one(metric: str, reference: np.ndarray, estimate: np.ndarray, sr: int) -> float:
    if metric == "si_sdr":
        return float(si_sdr(reference, estimate))
    if metric == "pesq_nb":
        from pesq import pesq

        from .audio import resample

        return float(pesq(8000, resample(reference, sr, 8000), resample(estimate, sr, 8000), "nb"))
    if metric == "pesq":
        from pesq import pesq

        if sr != 16000:
            raise ValueError("wide-band PESQ needs 16 kHz")
        return float(pesq(16000, reference, estimate, "wb"))
    if metric in ("stoi", "estoi"):
        from pystoi import stoi

        return float(stoi(reference, estimate, sr, extended=metric == "estoi"))
    raise ValueError(f"unknown speech metric {metric!r}")

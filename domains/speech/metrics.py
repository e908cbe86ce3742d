"""Speech quality metrics: wide/narrow-band PESQ, STOI, ESTOI, SI-SDR.

A signal that cannot be scored (too short, silent reference, NaN, or PESQ's "no
utterance detected") gives NaN with the reason logged, never an exception in the
middle of an evaluation; reports count the NaNs.
"""
from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

MIN_SECONDS = 0.25
def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), zero-mean signals."""
    reference = reference.astype(np.float64) - reference.mean()
    estimate = estimate.astype(np.float64) - estimate.mean()
    energy = np.dot(reference, reference)
    if energy <= 0:
        return math.nan
    target = np.dot(estimate, reference) / energy * reference
    noise = estimate - target
    return float(10 * np.log10(np.dot(target, target) / max(np.dot(noise, noise), 1e-20)))


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
        return si_sdr(reference, estimate)
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

"""Training objectives of progressive enhancement: a stage-weighted spectral loss that
makes every stage a usable output, progressive-learning intermediate targets, and an
optional convergence regularizer on the exit rule's own distance."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from adaptive_exit.training.losses import MultiExitObjective
from adaptive_exit.policies import relative_distance

from .metrics import si_sdr
from .stft import STFT


class SpectralLoss:
    """alpha * complex MSE + (1 - alpha) * magnitude MSE over real frames of compressed
    spectra, minus an optional SI-SDR term (dB / 100) on the waveform."""

    def __init__(self, alpha: float = 0.5, si_sdr_weight: float = 0.0, compress: float = 0.5):
        if not 0 <= alpha <= 1:
            raise ValueError(f"loss_alpha must be in [0, 1], got {alpha}")
        self.alpha, self.si_sdr_weight, self.compress = alpha, si_sdr_weight, compress

    def __call__(self, output: Tensor, batch: Any) -> Tensor:
        target = batch["clean_spec"]
        mask = frame_mask(batch["frames"], output.shape[-1], output.device)
        bins = mask.sum() * output.shape[2]
        complex_err = ((output - target) ** 2 * mask).sum() / (2 * bins)
        magnitude = lambda s: torch.sqrt(s[:, 0] ** 2 + s[:, 1] ** 2 + 1e-8)  # noqa: E731
        magnitude_err = ((magnitude(output) - magnitude(target)) ** 2 * mask[:, 0]).sum() / bins
        loss = self.alpha * complex_err + (1 - self.alpha) * magnitude_err
        if self.si_sdr_weight:
            loss = loss - self.si_sdr_weight * batch_si_sdr(output, batch, self.compress) / 100.0
        return loss


def frame_mask(frames: Tensor, total: int, device) -> Tensor:
    """(B, 1, 1, T) 1 on each utterance's real frames."""
    mask = torch.arange(total, device=device)[None, :] < frames.to(device)[:, None]
    return mask[:, None, None, :].float()


def batch_si_sdr(output: Tensor, batch: Any, compress: float) -> Tensor:
    """Mean SI-SDR (dB, differentiable) of the waveforms of a batch of spectra."""
    stft = STFT(compress=compress)
    values = []
    for i in range(output.shape[0]):
        frames, length = int(batch["frames"][i]), int(batch["lengths"][i])
        estimate = stft.waveform(output[i, ..., :frames], length)
        values.append(si_sdr(batch["clean_wav"][i].to(estimate.device), estimate, eps=1e-8))
    return torch.stack(values).mean()


def intermediate_targets(batch: dict[str, Any], stft: STFT, num_stages: int, step_db: float) -> list[dict[str, Any]]:
    """Progressive-learning targets (as PL-CRN): stage q (1-based) of Q learns
    clean + (noisy - clean) * 10^(-q * step_db / 20), a mixture q * step_db dB cleaner
    than the input; stage Q learns the clean speech. Each entry replaces the batch's
    ``clean_spec`` / ``clean_wav`` for that stage's loss."""
    if step_db < 0:
        raise ValueError(f"model.target_snr_step_db must be >= 0, got {step_db}")
    targets = []
    for q in range(1, num_stages):
        gain = 10 ** (-q * step_db / 20)
        wavs = [c + gain * (n - c) for c, n in zip(batch["clean_wav"], batch["noisy_wav"])]
        targets.append({"clean_spec": stft.batch(wavs)[0], "clean_wav": wavs})
    targets.append({"clean_spec": batch["clean_spec"], "clean_wav": batch["clean_wav"]})
    return targets


def stage_target_batch(batch: dict[str, Any], k: int, num_exits: int) -> dict[str, Any]:
    """The batch exit k (0-based) is scored against: its intermediate target when the
    collator made them, otherwise the clean speech."""
    if "stage_targets" not in batch:
        return batch
    return {**batch, **batch["stage_targets"][k]}


class ConvergentObjective(MultiExitObjective):
    """The multi-exit spectral objective plus ``change_weight`` times the mean relative
    change each stage makes to the previous (detached) estimate, ||S_q - S_q-1||^2 /
    ||S_q-1||^2 over each utterance's own frames: the exit rule's own distance. A stage
    then changes an estimate only where the change pays for itself in the loss, so
    successive outputs converge where later stages have little to add."""

    def __init__(self, *args, change_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if change_weight < 0:
            raise ValueError(f"model.change_weight must be >= 0, got {change_weight}")
        self.change_weight = change_weight

    def __call__(self, outputs: Sequence[Tensor], batch: Any, phase: int = 1) -> Tensor:
        loss = super().__call__(outputs, batch, phase)
        if not self.change_weight or len(outputs) < 2 or (self.scheme != "joint" and phase == 1):
            return loss
        changes = torch.stack([relative_distance(prev.detach(), cur) for prev, cur in zip(outputs[:-1], outputs[1:])])
        changes = torch.where(torch.isfinite(changes), changes, torch.zeros_like(changes))  # a silent estimate has no relative change
        return loss + self.change_weight * changes.mean().to(loss.dtype)

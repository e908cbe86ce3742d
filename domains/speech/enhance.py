"""Waveform in, waveform out: the one place a recording goes through STFT, the staged
model under an exit policy and the inverse STFT (used by the CLI, the benchmarks and
the Python API)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from adaptive_exit.runner import EarlyExitRunner
from adaptive_exit.staged import ExitResult


@torch.no_grad()
def enhance_waveform(runner: EarlyExitRunner, audio: np.ndarray | Tensor) -> tuple[np.ndarray, ExitResult]:
    """Enhance one mono recording at the model's sample rate with ``runner`` (its model
    and policy); returns the enhanced waveform (same length) and the exit result."""
    model = runner.model
    wav = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not isinstance(audio, Tensor) else audio).float()
    length = wav.shape[-1]
    if length == 0:
        raise ValueError("the audio is empty (0 samples)")
    if length <= model.stft.n_fft // 2:  # too short for a centred STFT frame: zero-pad, then cut back
        wav = torch.nn.functional.pad(wav, (0, model.stft.n_fft - length))
    spec, frames = model.stft.batch([wav])
    result = runner({"noisy_spec": spec, "frames": frames})
    enhanced = model.stft.waveform(result.output[0, ..., : int(frames[0])], wav.shape[-1])[:length]
    return enhanced.numpy(), result

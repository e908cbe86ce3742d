"""Waveform in, waveform out: the one place a recording goes through STFT, the staged
model under an exit policy and the inverse STFT (used by the CLI, the benchmarks and
the Python API)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from adaptive_exit.runner import EarlyExitRunner
from adaptive_exit.staged import ExitResult


def padded_length(model, samples: int) -> int:
    """A recording's length after zero-padding recordings shorter than one STFT frame."""
    return model.stft.n_fft if samples <= model.stft.n_fft // 2 else samples


def spectra(model, audios: list[np.ndarray | Tensor]) -> dict[str, Tensor]:
    """The runner's batch for recordings at the model's rate: padded spectra, frame counts
    and the original lengths (recordings shorter than one frame are zero-padded)."""
    wavs = []
    for audio in audios:
        wav = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not isinstance(audio, Tensor) else audio).float()
        if wav.shape[-1] == 0:
            raise ValueError("the audio is empty (0 samples)")
        wav = torch.nn.functional.pad(wav, (0, padded_length(model, wav.shape[-1]) - wav.shape[-1]))  # short: cut back later
        wavs.append(wav)
    spec, frames = model.stft.batch(wavs)
    lengths = torch.tensor([w.shape[-1] for w in wavs])
    originals = torch.tensor([int(np.asarray(a).shape[-1]) if not isinstance(a, Tensor) else a.shape[-1] for a in audios])
    return {"noisy_spec": spec, "frames": frames, "lengths": lengths, "original_lengths": originals}


def waveform(model, output: Tensor, frames: int, length: int, original: int) -> np.ndarray:
    """One row of the runner's output back to a waveform of the original length."""
    return model.stft.waveform(torch.as_tensor(output)[..., :frames], length)[:original].numpy()


@torch.no_grad()
def enhance_batch(runner: EarlyExitRunner, audios: list[np.ndarray | Tensor]) -> tuple[list[np.ndarray], ExitResult]:
    """Enhance mono recordings at the model's sample rate as one batch (each exits on its own)."""
    batch = spectra(runner.model, audios)
    result = runner({"noisy_spec": batch["noisy_spec"], "frames": batch["frames"]})
    return [waveform(runner.model, result.output[i], int(batch["frames"][i]), int(batch["lengths"][i]),
                     int(batch["original_lengths"][i])) for i in range(len(audios))], result


def enhance_waveform(runner: EarlyExitRunner, audio: np.ndarray | Tensor) -> tuple[np.ndarray, ExitResult]:
    """Enhance one mono recording at the model's sample rate with ``runner`` (its model
    and policy); returns the enhanced waveform (same length) and the exit result."""
    enhanced, result = enhance_batch(runner, [audio])
    return enhanced[0], result

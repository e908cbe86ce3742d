"""Waveform in, waveform out: the one place a recording goes through STFT, the staged
model under an exit policy and the inverse STFT (used by the CLI, the benchmarks and
the Python API), and where a recording at another rate is brought to the model's rate
and back (above the model band the original is kept, scaled by the model's own gain in
its top band; ``stream.py`` does the same chunk by chunk)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.staged import ExitResult


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


def enhance_recording(runner: EarlyExitRunner, audio: np.ndarray, rate: int, high_band: str = "keep") -> tuple[np.ndarray, ExitResult]:
    """Enhance one mono recording at any sample ``rate``; the result has the input's rate
    and length. ``high_band="keep"``: above the model band (8 kHz for a 16 kHz model) the
    original is kept, scaled per frame by the gain the model applied in its top band;
    ``"drop"``: nothing above the model band."""
    from .audio import resample

    if high_band not in ("keep", "drop"):
        raise ValueError(f"high_band must be keep or drop, got {high_band!r}")
    model = runner.model
    audio = np.asarray(audio, dtype=np.float32)
    low = resample(audio, rate, model.sample_rate)
    batch = spectra(model, [low])
    with torch.no_grad():
        result = runner({"noisy_spec": batch["noisy_spec"], "frames": batch["frames"]})
    frames = int(batch["frames"][0])
    enhanced = waveform(model, result.output[0], frames, int(batch["lengths"][0]), int(batch["original_lengths"][0]))
    out = back_to_rate(model, audio, rate, low, enhanced, batch["noisy_spec"][0, ..., :frames],
                       torch.as_tensor(result.output[0])[..., :frames], high_band)
    return out, result


def back_to_rate(model, original: np.ndarray, rate: int, low: np.ndarray, enhanced: np.ndarray, noisy_spec: Tensor,
                 enhanced_spec: Tensor, high_band: str = "keep") -> np.ndarray:
    """The enhanced recording at the original ``rate`` and length: ``enhanced`` (at the model
    rate) resampled, plus above the model band the original scaled by the model's top-band
    gain (from the noisy and enhanced spectra of the model-rate signal) with ``"keep"``."""
    from .audio import resample

    if rate == model.sample_rate:
        return fit_length(enhanced, len(original))
    out = fit_length(resample(enhanced, model.sample_rate, rate), len(original))
    if high_band == "keep" and rate > model.sample_rate:
        reference = fit_length(resample(low, model.sample_rate, rate), len(original))
        gains = top_band_gain(magnitude(model, noisy_spec), magnitude(model, enhanced_spec), top_band(model))
        out = add_high_band(out, original, reference, gains.numpy(), 0, model.stft.hop * rate / model.sample_rate)
    return out


def magnitude(model, spec: Tensor) -> Tensor:
    """(2, F, T) (compressed) spectrum -> (F, T) linear magnitude."""
    mag = torch.sqrt(spec[0].double() ** 2 + spec[1].double() ** 2)
    return mag.pow(1.0 / model.stft.compress) if model.stft.compress else mag


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    return audio[:length] if len(audio) >= length else np.pad(audio, (0, length - len(audio)))


def top_band(model, low_hz: float = 5500.0) -> Tensor:
    """The STFT bins of the model's top band (``low_hz`` to 100 Hz below Nyquist)."""
    freqs = np.arange(model.stft.freq_bins) * model.sample_rate / model.stft.n_fft
    return torch.from_numpy((freqs >= low_hz) & (freqs <= model.sample_rate / 2 - 100))


def top_band_gain(noisy: Tensor, enhanced: Tensor, band: Tensor) -> Tensor:
    """Per frame, the amplitude gain (0..1) the model applied in ``band``: magnitudes (F, T)
    in, (T,) out; 1 where the input is silent there."""
    noisy_power = (noisy[band].double() ** 2).sum(0)
    gain = ((enhanced[band].double() ** 2).sum(0) / noisy_power.clamp_min(1e-12)).clamp(0, 1).sqrt()
    return torch.where(noisy_power > 1e-10, gain, torch.ones_like(gain))


def add_high_band(enhanced: np.ndarray, original: np.ndarray, reference: np.ndarray, gains: np.ndarray,
                  start: int, hop: float) -> np.ndarray:
    """``enhanced`` (at the original rate) plus the original's content above the model band,
    ``original - reference`` (``reference`` = the original through the model rate and back),
    scaled by the per-frame ``gains`` interpolated to samples ``start ..`` (frames ``hop``
    samples apart)."""
    positions = (start + np.arange(len(enhanced))) / hop
    return enhanced + (original - reference) * np.interp(positions, np.arange(len(gains)), gains).astype(np.float32)



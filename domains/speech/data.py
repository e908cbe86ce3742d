"""Speech data: paired folders, on-the-fly mixing of clean speech with noise, a synthetic generator.

Every dataset item is ``{"name", "noisy", "clean"}`` with 16 kHz float32 waveforms.
Mixtures are reproducible: item i of a dataset with seed s is always the same.
"""
from __future__ import annotations

import math
import random
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .audio import SAMPLE_RATE, list_audio, load_audio
from .channel import ChannelAugment
from .noise_synth import procedural_noise
from .stft import STFT


class PairedFolder:
    """``root/noisy/X.wav`` with ``root/clean/X.wav`` (VoiceBank+DEMAND layout)."""

    def __init__(self, root: str | Path):
        root = Path(root)
        noisy, clean = list_audio(root / "noisy"), list_audio(root / "clean")
        clean_names = {p.name for p in clean}
        unpaired = [p.name for p in noisy if p.name not in clean_names]
        if unpaired:
            raise ValueError(f"{root}: noisy files without a clean twin: {unpaired[:5]}")
        if not noisy:
            raise ValueError(f"{root}/noisy has no audio files")
        self.root, self.names = root, [p.name for p in noisy]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name = self.names[i]
        noisy, clean = load_audio(self.root / "noisy" / name), load_audio(self.root / "clean" / name)
        n = min(len(noisy), len(clean))
        return {"name": name, "noisy": noisy[:n], "clean": clean[:n]}


def _check_index(i: int, size: int) -> None:
    # Generated datasets have no natural end: without this, `for item in dataset` never stops.
    if not 0 <= i < size:
        raise IndexError(f"index {i} out of range for a dataset of {size} items")


@lru_cache(maxsize=2048)
def _cached(path: str) -> np.ndarray:
    audio = load_audio(path)
    return audio - audio.mean()  # some LibriSpeech files carry a DC offset


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """clean + noise scaled so that 10 log10(P_clean / P_noise) = snr_db."""
    p_clean, p_noise = float(np.mean(clean**2)), float(np.mean(noise**2))
    if p_noise <= 0:
        return clean.copy()
    return clean + noise * math.sqrt(p_clean / (p_noise * 10 ** (snr_db / 10)))


def _segment(audio: np.ndarray, length: int, rng: random.Random) -> np.ndarray:
    if len(audio) >= length:
        start = rng.randrange(len(audio) - length + 1)
        return audio[start:start + length]
    reps = int(math.ceil(length / len(audio)))
    return np.tile(audio, reps)[:length]


def tilt(audio: np.ndarray, coefficient: float) -> np.ndarray:
    """First-order spectral tilt y[n] = x[n] - c x[n-1] (c > 0 brightens, c < 0 darkens), power kept."""
    out = audio.astype(np.float64).copy()
    out[1:] -= coefficient * audio[:-1]
    power = float(np.mean(out**2))
    return out * math.sqrt(float(np.mean(audio.astype(np.float64) ** 2)) / power) if power > 0 else out


class MixtureDataset:
    """Clean speech files mixed with noise files at a random SNR, segment and gain.

    Training-time noise augmentation widens a small noise set: ``babble_prob`` replaces
    the noise by a sum of 3-6 other talkers (cafeteria-like), ``synth_noise_prob`` by a
    procedurally generated noise (`noise_synth.procedural_noise`), and ``noise_eq``
    tilts the spectrum of whichever noise was drawn.
    """

    def __init__(self, clean_files: Sequence[Path], noise_files: Sequence[Path], size: int, seed: int,
                 seconds: float = 3.0, snr_range: tuple[float, float] = (-5.0, 15.0), gain_db: tuple[float, float] = (-6.0, 6.0),
                 babble_prob: float = 0.0, noise_eq: bool = False, synth_noise_prob: float = 0.0,
                 channel: ChannelAugment | None = None):
        for name, p in (("babble_prob", babble_prob), ("synth_noise_prob", synth_noise_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if babble_prob + synth_noise_prob > 1:
            raise ValueError(f"babble_prob + synth_noise_prob must be <= 1, got {babble_prob} + {synth_noise_prob}")
        if not clean_files:
            raise ValueError("no clean speech files to mix")
        if not noise_files:
            raise ValueError("no noise files to mix")
        self.clean_files, self.noise_files = list(clean_files), list(noise_files)
        self.size, self.seed, self.length = size, seed, int(seconds * SAMPLE_RATE)
        self.snr_range, self.gain_db = snr_range, gain_db
        self.babble_prob, self.noise_eq, self.synth_noise_prob = babble_prob, noise_eq, synth_noise_prob
        self.channel = channel or ChannelAugment()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        _check_index(i, self.size)
        rng = random.Random(self.seed * 1_000_003 + i)
        clean = _segment(_cached(str(rng.choice(self.clean_files))), self.length, rng)
        noise = self._noise(rng)
        snr = rng.uniform(*self.snr_range)
        if self.channel.active:  # rooms, telephone bands, codecs (channel.py)
            clean = self.channel.speech(clean, rng)
            clean, noisy = self.channel.channel(clean, mix_at_snr(clean, noise, snr), rng)
        else:
            noisy = mix_at_snr(clean, noise, snr)
        gain = 10 ** (rng.uniform(*self.gain_db) / 20)
        peak = max(float(np.abs(noisy).max()) * gain, 1e-9)
        gain = gain / peak * 0.95 if peak > 0.95 else gain  # never clip
        return {"name": f"mix{i:06d}_snr{snr:+.1f}", "noisy": (noisy * gain).astype(np.float32), "clean": (clean * gain).astype(np.float32)}

    def _noise(self, rng: random.Random) -> np.ndarray:
        kind = rng.random() if self.babble_prob or self.synth_noise_prob else 1.0
        if kind < self.babble_prob:
            talkers = [_segment(_cached(str(rng.choice(self.clean_files))), self.length, rng) for _ in range(rng.randint(3, 6))]
            noise = sum(t / max(float(np.sqrt(np.mean(t**2))), 1e-6) for t in talkers)
        elif kind < self.babble_prob + self.synth_noise_prob:
            noise = procedural_noise(self.length, np.random.default_rng(rng.getrandbits(64)))
        else:
            noise = _segment(_cached(str(rng.choice(self.noise_files))), self.length, rng)
        return tilt(noise, rng.uniform(-0.9, 0.9)) if self.noise_eq else noise


# --------------------------------------------------------------------------- synthetic speech

def synthetic_speech(seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like audio: voiced syllables (harmonics of a gliding f0 shaped by three
    moving formants), short unvoiced bursts, and pauses."""
    total = int(seconds * sr)
    out = np.zeros(total, dtype=np.float64)
    t = 0
    while t < total:
        t += int(rng.uniform(0.05, 0.25) * sr)  # pause
        n = min(int(rng.uniform(0.12, 0.35) * sr), total - t)
        if n <= 0:
            break
        time = np.arange(n) / sr
        f0 = rng.uniform(90, 240) * (1 + rng.uniform(-0.15, 0.15) * time / max(time[-1], 1e-3))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        formants = [(rng.uniform(a, b), rng.uniform(a, b)) for a, b in ((300, 900), (900, 2400), (2200, 3400))]
        syllable = np.zeros(n)
        for k in range(1, int(7000 / f0.max())):
            freq = k * f0
            amp = sum(np.exp(-0.5 * ((freq - (s + (e - s) * time / max(time[-1], 1e-3))) / 120.0) ** 2) for s, e in formants)
            syllable += amp * np.sin(k * phase) / np.sqrt(k)
        if rng.random() < 0.3:  # fricative-like burst
            burst = rng.standard_normal(n) * np.hanning(n) * 0.3
            syllable += np.convolve(burst, [1, -0.9], mode="same")
        out[t:t + n] += syllable * np.hanning(n)
        t += n
    peak = np.abs(out).max()
    return (out / peak * 0.5 if peak > 0 else out).astype(np.float32)


def synthetic_noise(n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Coloured noise: a random mix of white, pink-ish and a low hum."""
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    pink = np.fft.irfft(spectrum / np.sqrt(np.maximum(freqs, 20.0)), n)
    hum = np.sin(2 * np.pi * rng.uniform(50, 120) * np.arange(n) / sr)
    w = rng.dirichlet([1, 1, 0.3])
    noise = w[0] * white / white.std() + w[1] * pink / pink.std() + w[2] * hum / hum.std()
    return noise.astype(np.float32)


class SyntheticDataset:
    """Synthetic speech mixed with synthetic noise: a quickstart needs no files."""

    def __init__(self, size: int, seed: int, seconds: float = 2.0, snr_range: tuple[float, float] = (-5.0, 10.0)):
        self.size, self.seed, self.seconds, self.snr_range = size, seed, seconds, snr_range

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        _check_index(i, self.size)
        rng = np.random.default_rng(self.seed * 1_000_003 + i)
        clean = synthetic_speech(self.seconds, rng)
        snr = float(rng.uniform(*self.snr_range))
        noisy = mix_at_snr(clean, synthetic_noise(len(clean), rng), snr)
        scale = min(1.0, 0.95 / max(float(np.abs(noisy).max()), 1e-9))
        return {"name": f"synth{i:06d}_snr{snr:+.1f}", "noisy": (noisy * scale).astype(np.float32), "clean": (clean * scale).astype(np.float32)}


class SpeechCollator:
    """Per-utterance STFT (exact for every length), zero-padded to a batch."""

    def __init__(self, stft: STFT):
        self.stft = stft

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty list of utterances")
        noisy = [torch.as_tensor(item["noisy"]) for item in items]
        noisy_spec, frames = self.stft.batch(noisy)
        batch = {"noisy_spec": noisy_spec, "frames": frames, "lengths": torch.tensor([len(w) for w in noisy]),
                 "names": [item["name"] for item in items], "noisy_wav": noisy}
        if items[0].get("clean") is not None:
            clean = [torch.as_tensor(item["clean"]) for item in items]
            batch["clean_spec"], _ = self.stft.batch(clean)
            batch["clean_wav"] = clean
        return batch

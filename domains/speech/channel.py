"""Training-time channel augmentation: rooms, telephone bands and codecs.

Each is drawn per mixture by :class:`ChannelAugment` and applied so that the model
learns to remove noise, not to reinvent what the channel took away:

* **reverb** (the speech through a room): the clean speech is convolved with a
  statistical room impulse response (a direct path, then exponentially decaying
  Gaussian reflections with a random RT60 and direct-to-reverberant ratio, the model
  behind image-source RIR generators' late tails); the *reverberant* speech is both
  the target and what the noise is added to: the enhancer denoises, it does not
  dereverberate.
* **band-limiting** (telephone, low-rate recordings): speech and noise go through a
  steep low-pass at a random 3.2-4 kHz (an 8 kHz capture) or 5.5-7 kHz; the target is
  the band-limited clean speech, so a narrow-band input is cleaned inside its band and
  never given a hallucinated high band.
* **codec** (narrow-band only): the noisy mixture is G.711 mu-law coded at 8 kHz, as a
  phone line does; the target stays uncoded, so quantisation noise is noise to remove.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE, resample


def room_impulse_response(rng: random.Random, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A statistical RIR: unit direct path, then Gaussian reflections decaying by 60 dB
    over RT60 (0.15-0.9 s) from a 2-10 ms pre-delay, at a direct-to-reverberant
    ratio of -3..12 dB."""
    rt60 = rng.uniform(0.15, 0.9)
    pre = int(rng.uniform(0.002, 0.010) * sr)
    length = int(rt60 * sr)
    t = np.arange(length) / sr
    gen = np.random.default_rng(rng.getrandbits(64))
    tail = gen.standard_normal(length) * np.exp(-6.9078 * t / rt60)
    drr_db = rng.uniform(-3.0, 12.0)
    tail *= math.sqrt(10 ** (-drr_db / 10) / max(float(np.sum(tail**2)), 1e-12))
    rir = np.zeros(pre + length)
    rir[0] = 1.0
    rir[pre:] += tail
    return rir


def reverberate(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """The speech through the room, same length, same power."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(speech, rir)[: len(speech)]
    power = float(np.mean(wet**2))
    return wet * math.sqrt(float(np.mean(speech**2)) / power) if power > 0 else wet


def lowpass(audio: np.ndarray, cutoff_hz: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A steep zero-phase low-pass (8th-order Butterworth, applied forwards and backwards)."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(8, cutoff_hz, btype="low", fs=sr, output="sos")
    return sosfiltfilt(sos, audio).astype(audio.dtype)


def mu_law(audio: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """G.711-style mu-law (mu = 255, 8 bits) at 8 kHz, back at ``sr``."""
    narrow = resample(audio.astype(np.float32), sr, 8000)
    peak = max(float(np.abs(narrow).max()), 1e-9)
    x = np.clip(narrow / peak, -1, 1)
    coded = np.sign(x) * np.log1p(255 * np.abs(x)) / math.log(256)
    coded = np.round((coded + 1) * 127.5) / 127.5 - 1
    decoded = np.sign(coded) * ((1 + 255) ** np.abs(coded) - 1) / 255
    out = resample((decoded * peak).astype(np.float32), 8000, sr)
    return _fit(out, len(audio))


def _fit(audio: np.ndarray, length: int) -> np.ndarray:
    return audio[:length] if len(audio) >= length else np.pad(audio, (0, length - len(audio)))


@dataclass
class ChannelAugment:
    """Probabilities of each channel effect (see the module docstring); all 0 = off."""

    reverb_prob: float = 0.0
    bandlimit_prob: float = 0.0
    codec_prob: float = 0.0  # of the narrow-band mixtures

    def __post_init__(self) -> None:
        for name in ("reverb_prob", "bandlimit_prob", "codec_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

    @property
    def active(self) -> bool:
        return bool(self.reverb_prob or self.bandlimit_prob)

    def speech(self, clean: np.ndarray, rng: random.Random) -> np.ndarray:
        """The clean speech as the room made it (the target and the mixture's speech)."""
        if rng.random() < self.reverb_prob:
            return reverberate(clean, room_impulse_response(rng))
        return clean

    def channel(self, clean: np.ndarray, noisy: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        """(target, noisy) after the recording channel."""
        if rng.random() >= self.bandlimit_prob:
            return clean, noisy
        narrow = rng.random() < 0.6
        cutoff = rng.uniform(3200, 4000) if narrow else rng.uniform(5500, 7000)
        clean, noisy = lowpass(clean, cutoff), lowpass(noisy, cutoff)
        if narrow and rng.random() < self.codec_prob:
            noisy = mu_law(noisy)
        return clean, noisy

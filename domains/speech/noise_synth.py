"""Procedural background noise for training: many noise types from a few random choices.

Only four real noise recordings ship offline, and a small enhancer trained on them
learns those four sounds rather than "noise". Each call here draws a new noise:

* a random smooth spectral envelope (a slope in dB per octave plus 0-3 resonant bumps),
  so the noise can be rumbly (traffic, engines), hissy (fans, air) or anything between;
* a slow random level modulation (0.3-8 Hz), from steady to fluctuating (crowds, passing cars);
* sometimes a hum or engine tone (a drifting fundamental with harmonics);
* sometimes impulsive events (clicks, knocks, clatter: short decaying bursts).

The output is unit-RMS float64; the mixer sets the level from the SNR.
"""
from __future__ import annotations

import numpy as np

from .audio import SAMPLE_RATE


def _shaped(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    """White noise through a random smooth spectral envelope (log-frequency)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    octaves = np.log2(np.maximum(np.fft.rfftfreq(n, 1 / sr), 20.0) / 1000.0)  # octaves re 1 kHz
    gain_db = rng.uniform(-9.0, 3.0) * octaves
    for _ in range(int(rng.integers(0, 4))):
        centre, width = rng.uniform(-5.5, 2.9), rng.uniform(0.2, 1.5)  # 20 Hz .. 7.5 kHz
        gain_db += rng.uniform(-15.0, 20.0) * np.exp(-0.5 * ((octaves - centre) / width) ** 2)
    gain_db -= gain_db.max()  # keep the filter numerically tame
    return np.fft.irfft(spectrum * 10 ** (gain_db / 20), n)


def _level_envelope(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Log-normal level fluctuation through random control points at 0.3-8 Hz."""
    points = int(n / sr * rng.uniform(0.3, 8.0)) + 2
    control = rng.standard_normal(points) * rng.uniform(0.2, 1.2)
    return np.exp(np.interp(np.linspace(0, points - 1, n), np.arange(points), control))


def _hum(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    """A drifting fundamental (40-400 Hz) with decaying harmonics up to 4 kHz."""
    time = np.arange(n) / sr
    f0 = rng.uniform(40.0, 400.0) * (1 + rng.uniform(-0.05, 0.05) * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * time))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    decay = rng.uniform(0.5, 2.0)
    harmonics = range(1, max(2, int(4000 / f0.max())))
    return sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k**decay for k in harmonics)


def _impulses(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Poisson-timed short bursts (5-80 ms) with exponential decay and random brightness."""
    out = np.zeros(n)
    for _ in range(int(rng.poisson(rng.uniform(0.5, 4.0) * n / sr)) + 1):
        length = int(rng.uniform(0.005, 0.08) * sr)
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / rng.uniform(2.0, 8.0)))
        burst[1:] -= rng.uniform(-0.9, 0.9) * burst[:-1]
        start = int(rng.integers(0, max(1, n - length)))
        segment = out[start:start + length]
        segment += burst[: len(segment)] * rng.uniform(0.3, 3.0)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x**2)))
    return x / rms if rms > 0 else x


def procedural_noise(n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One random background noise of ``n`` samples with unit RMS (see the module docstring)."""
    if n <= 0:
        raise ValueError(f"procedural_noise needs a positive length, got {n}")
    noise = _unit(_shaped(n, rng, sr))
    if rng.random() < 0.6:
        noise = _unit(noise * _level_envelope(n, rng, sr))
    if rng.random() < 0.3:
        noise = noise + _unit(_hum(n, rng, sr)) * 10 ** (rng.uniform(-20.0, 0.0) / 20)
    if rng.random() < 0.3:
        noise = noise + _unit(_impulses(n, rng, sr)) * 10 ** (rng.uniform(-10.0, 6.0) / 20)
    return _unit(noise)

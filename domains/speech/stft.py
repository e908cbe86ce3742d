"""STFT front end: 20 ms Hann window, 10 ms hop, FFT 320 at 16 kHz, optional power compression.

Each utterance is transformed at its own length (``torch.stft`` with centring
reflect-pads the edges, so transforming a zero-padded batch would change the
last frames); spectra are then zero-padded in time to stack a batch.
"""
from __future__ import annotations

import torch
from torch import Tensor


class STFT:
    def __init__(self, n_fft: int = 320, hop: int = 160, win: int = 320, compress: float | None = 0.5):
        if compress is not None and not 0 < compress <= 1:
            raise ValueError(f"power compression must be in (0, 1], got {compress}")
        self.n_fft, self.hop, self.win, self.compress = n_fft, hop, win, compress
        self.window = torch.hann_window(win)

    @property
    def freq_bins(self) -> int:
        return self.n_fft // 2 + 1

    def frames(self, num_samples: int) -> int:
        return num_samples // self.hop + 1

    def spectrum(self, wav: Tensor) -> Tensor:
        """(N,) waveform -> (2, F, T) real/imag of the (compressed) spectrum."""
        spec = torch.stft(wav, self.n_fft, self.hop, self.win, self.window.to(wav.device), center=True, return_complex=True)
        if self.compress is not None:
            spec = torch.polar(spec.abs().clamp_min(1e-12).pow(self.compress), spec.angle())
        return torch.stack([spec.real, spec.imag])

    def waveform(self, spec: Tensor, length: int) -> Tensor:
        """(2, F, T) (compressed) spectrum -> (length,) waveform."""
        complex_spec = torch.complex(spec[0].float(), spec[1].float())
        if self.compress is not None:
            complex_spec = torch.polar(complex_spec.abs().pow(1.0 / self.compress), complex_spec.angle())
        return torch.istft(complex_spec, self.n_fft, self.hop, self.win, self.window.to(spec.device), center=True, length=length)

    def batch(self, wavs: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Spectra of utterances of different lengths: (B, 2, F, T_max) and frame counts (B,)."""
        specs = [self.spectrum(w) for w in wavs]
        frames = torch.tensor([s.shape[-1] for s in specs])
        out = specs[0].new_zeros(len(specs), 2, self.freq_bins, int(frames.max()))
        for i, s in enumerate(specs):
            out[i, ..., : s.shape[-1]] = s
        return out, frames

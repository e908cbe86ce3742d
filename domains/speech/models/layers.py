"""Layers the causal enhancers share: a time-causal 2-D convolution, the encoder that folds
the spectrum into sub-bands, and the exit head that unfolds a latent into a complex mask."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn


if TYPE_CHECKING:
    from .base import StreamState


class CausalConv(nn.Module):
    """A 2-D convolution over (frequency, time) with ``time_kernel - 1`` frames of past
    context and none of the future; strided along frequency."""

    def __init__(self, cin: int, cout: int, freq_kernel: int, time_kernel: int, freq_stride: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, (freq_kernel, time_kernel), stride=(freq_stride, 1),
                              padding=(freq_kernel // 2, 0), groups=groups)
        self.context = time_kernel - 1

    def forward(self, x: Tensor, past: Tensor | None) -> tuple[Tensor, Tensor]:
        """x: (B, C, F, T); past: (B, C, F, context) or None (silence before the start)."""
        if not self.context:
            return self.conv(x), x[..., :0]
        if past is None:
            past = x.new_zeros(*x.shape[:3], self.context)
        full = torch.cat([past, x], -1)
        return self.conv(full), full[..., full.shape[-1] - self.context:]

    def bands_out(self, bands_in: int) -> int:
        kernel, stride, pad = self.conv.kernel_size[0], self.conv.stride[0], self.conv.padding[0]
        return (bands_in + 2 * pad - kernel) // stride + 1


class Encoder(nn.Module):
    """Noisy features (B, 3, F, T) -> latent (B, T, bands, hidden): a time-causal 5x2
    convolution, then ``downsample - 1`` grouped 3x1 ones, each halving the bands
    (161 bins -> 81 -> 41 -> 21)."""

    def __init__(self, hidden: int, downsample: int, freq_bins: int):
        super().__init__()
        convs = [CausalConv(3, hidden, 5, 2, 2)]
        convs += [CausalConv(hidden, hidden, 3, 1, 2, groups=2 if hidden % 2 == 0 else 1) for _ in range(downsample - 1)]
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in convs)
        self.acts = nn.ModuleList(nn.PReLU(hidden) for _ in convs)
        self.bands = [freq_bins]
        for conv in convs:
            self.bands.append(conv.bands_out(self.bands[-1]))

    def forward(self, x: Tensor, state: StreamState) -> Tensor:
        for i, (conv, norm, act) in enumerate(zip(self.convs, self.norms, self.acts)):
            x, state.past[f"enc{i}"] = conv(x, state.past.get(f"enc{i}"))
            x = act(norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return x.permute(0, 3, 2, 1).contiguous()  # (B, T, bands, C)

    def macs(self) -> float:
        """Multiply-accumulates per frame."""
        return float(sum(conv.conv.weight.numel() * bands for conv, bands in zip(self.convs, self.bands[1:])))


class ExitHead(nn.Module):
    """Latent (B, T, bands, C) + noisy features (B, T, F, 3) -> raw complex mask (B, 2, F, T)."""

    def __init__(self, hidden: int, freq_bins: int, bands: int, width: int = 8):
        super().__init__()
        self.per_band = -(-freq_bins // bands)  # bins each sub-band unfolds into
        self.freq_bins, self.width = freq_bins, width
        self.unfold = nn.Linear(hidden, self.per_band * width)
        self.refine = nn.Sequential(nn.Linear(width + 3, width), nn.GELU(), nn.Linear(width, 2))

    def forward(self, latent: Tensor, features: Tensor) -> Tensor:
        b, t, f, _ = latent.shape
        bins = self.unfold(latent).reshape(b, t, f * self.per_band, self.width)[:, :, : self.freq_bins]
        raw = self.refine(torch.cat([bins, features], -1))  # (B, T, F, 2)
        return raw.permute(0, 3, 2, 1)

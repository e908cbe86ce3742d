"""A causal dual-path progressive enhancer: frequency modelling inside each frame,
causal context along time, an exit head after every stage.

Layout (DPCRN / GTCRN-like, made stage-wise): an encoder of time-causal convolutions
folds the 161 STFT bins into 21 sub-bands of ``hidden`` channels. Each stage is one
dual-path block on that latent: a convolution across the sub-bands of each frame
(harmonics, formants, where the noise sits), then two dilated causal convolutions along
time in every sub-band (noise statistics and speech context from the past; dilations
1, 2 | 4, 8 | 16, 32 | ... so three stages see 2.5 s), each followed by a channel mix,
all residual and frame-normalised. Exit head q turns the latent after stage q into a
bounded complex ratio mask for every bin (a sub-band unfolds into its bins by a linear
map, refined per bin together with the noisy bin's own features) and applies it to the
noisy spectrum. Deeper stages have more context and more layers, so quality rises with
stages, and every stage is a usable output; successive outputs converge where later
stages have little left to add, which the spectral-distance patience rule detects.

Depthwise convolutions are written as weighted sums of shifted copies (CPU training is
several times faster than with grouped ``Conv1d``). Everything is causal, and every
layer with past context keeps it in a :class:`StreamState`, so offline processing is the
streaming computation over one long chunk: streaming equals offline by construction
(``stream.py``). Padded frames of a batch come after each utterance's real frames, so
causal layers never carry them into real ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import CausalStages, EnhancerConfig, StreamState, complex_mask, register_architecture


@dataclass
class DualPathConfig(EnhancerConfig):
    architecture: str = "dual-path"
    downsample: int = 3  # stride-2 frequency convolutions in the encoder (161 bins -> 81 -> 41 -> 21 sub-bands)

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.downsample <= 6:
            raise ValueError(f"model.downsample must be 1..6 (stride-2 frequency convolutions), got {self.downsample}")


class TimeConv(nn.Module):
    """Depthwise causal convolution along time in every sub-band, (B, T, bands, C) in and
    out, with ``(kernel - 1) * dilation`` frames of past context carried as state. Written
    as a weighted sum of time-shifted copies: on CPU that trains several times faster than
    a grouped ``Conv1d`` and needs no layout changes."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(kernel, channels) / kernel)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.kernel, self.dilation = kernel, dilation
        self.context = (kernel - 1) * dilation

    def forward(self, x: Tensor, past: Tensor | None) -> tuple[Tensor, Tensor]:
        t = x.shape[1]
        if past is None:
            past = x.new_zeros(x.shape[0], self.context, *x.shape[2:])
        full = torch.cat([past, x], 1)
        out = self.bias + sum(self.weight[j] * full[:, self.context - j * self.dilation: self.context - j * self.dilation + t]
                              for j in range(self.kernel))
        return out, full[:, full.shape[1] - self.context:]


class BandConv(nn.Module):
    """Depthwise convolution across the sub-bands of each frame (zero-padded, centred),
    as a weighted sum of band-shifted copies (see :class:`TimeConv`)."""

    def __init__(self, channels: int, kernel: int = 5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(kernel, channels) / kernel)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.kernel = kernel

    def forward(self, x: Tensor) -> Tensor:
        f, half = x.shape[2], self.kernel // 2
        padded = nn.functional.pad(x, (0, 0, half, half))
        return self.bias + sum(self.weight[j] * padded[:, :, j:j + f] for j in range(self.kernel))


class DualPathBlock(nn.Module):
    """One stage: a frequency path (depthwise convolution across the sub-bands of each
    frame, then a channel mix) and a time path (two dilated causal depthwise convolutions
    along each sub-band, each followed by a channel mix), all residual and frame-normalised."""

    def __init__(self, hidden: int, dilations: tuple[int, ...], kernel: int = 3):
        super().__init__()
        self.freq = BandConv(hidden)
        self.freq_mix = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU())
        self.freq_norm = nn.LayerNorm(hidden)
        self.times = nn.ModuleList(TimeConv(hidden, kernel, d) for d in dilations)
        self.time_mixes = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.GELU()) for _ in dilations)
        self.time_norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in dilations)

    def forward(self, x: Tensor, memory: dict[str, Tensor], prefix: str) -> Tensor:
        """x: (B, T, bands, C); ``memory`` holds (and gets) each time convolution's past frames."""
        x = x + self.freq_norm(self.freq_mix(self.freq(x)))
        for j, (conv, mix, norm) in enumerate(zip(self.times, self.time_mixes, self.time_norms)):
            key = f"{prefix}.time{j}"
            along, memory[key] = conv(x, memory.get(key))
            x = x + norm(mix(along))
        return x


def stage_dilations(k: int, per_stage: int = 2, cycle: int = 6) -> tuple[int, ...]:
    """Dilations of stage k's time convolutions: 1, 2 | 4, 8 | 16, 32 | 1, 2 | ... so three
    stages together see 2.5 s of past and every stage adds both near and far context."""
    return tuple(2 ** ((per_stage * k + j) % cycle) for j in range(per_stage))


class DualPathEnhancer(CausalStages, nn.Module):
    """The StagedModel over :class:`DualPathBlock` stages (see the module docstring and
    :class:`~.base.CausalStages` for the state and the streaming calls)."""

    def __init__(self, cfg: DualPathConfig):
        super().__init__()
        self.build(cfg, lambda k: DualPathBlock(cfg.hidden, stage_dilations(k)), head_width=8)

    def stage(self, k: int, latent: Tensor, features: Tensor, noisy: Tensor, memory: StreamState) -> tuple[Tensor, Tensor]:
        """Stage k on a latent: (new latent, the stage's estimate (B, 2, F, T))."""
        latent = self.blocks[k](latent, memory.past, f"stage{k}")
        return latent, complex_mask(self.heads[k](latent, features), noisy)

    def skip_stages(self, first: int, state: dict[str, Tensor], memory: StreamState) -> None:
        """The past frames of the stages a streamed piece skipped: the exit stage's latent
        (each stage is a residual refinement, so that is its best stand-in), so a later
        piece that runs the stage sees recent context, not context that ended where skipping began."""
        latent = state["latent"]
        for k in range(first, self.num_stages):
            for j, conv in enumerate(self.blocks[k].times):
                key = f"stage{k}.time{j}"
                past = memory.past.get(key)
                if past is None:
                    past = latent.new_zeros(latent.shape[0], conv.context, *latent.shape[2:])
                memory.past[key] = torch.cat([past, latent], 1)[:, -conv.context:]

    def stage_macs(self) -> float:
        """Multiply-accumulates per frame of one stage (block and exit head)."""
        c, f, bins, head, block = self.config.hidden, self.bands, self.stft.freq_bins, self.heads[0], self.blocks[0]
        paths = 1 + len(block.times)
        per_band = paths * (c * c + c) + c * block.freq.kernel + sum(t.kernel * c for t in block.times)
        per_bin = (head.width + 3) * head.width + head.width * 2
        return float(f * per_band + f * c * head.per_band * head.width + bins * per_bin)


register_architecture("dual-path", DualPathConfig, DualPathEnhancer)

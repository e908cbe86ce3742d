"""A causal dual-path *recurrent* progressive enhancer (GTCRN / DPCRN-style stages).

The encoder of :mod:`.dual_path` folds the 161 STFT bins into 21 sub-bands of ``hidden``
channels (time-causal convolutions). Each stage is one dual-path recurrent block on that
latent: a bidirectional GRU runs *across the sub-bands of each frame* (the whole spectrum
of the frame informs every band: harmonics, where the noise sits), then a GRU runs *along
time in every sub-band* (noise statistics and speech context from the whole past, carried
as a hidden state, so it streams frame by frame). Both GRUs are grouped (the channels
split into ``rnn_groups`` independent GRUs, as GTCRN's DPGRNN), each is followed by a
channel mix, a layer norm and a residual connection. An exit head after every stage turns
the latent into a bounded complex ratio mask for every bin (as in :mod:`.dual_path`).

Why recurrent: the convolutional dual-path stages see a fixed window of the past and mix
bands only with their neighbours; a GRU along time keeps a running noise estimate of any
length, and a GRU across bands lets the whole frame decide each band's mask. Deeper
stages stack more of both, so each stage refines the last.

Streaming: the time GRUs' hidden states and the encoder's past frames are the stream's
memory (:class:`StreamState`), so the offline computation is the streaming one over one
long chunk. Padded frames of a batch come after each utterance's real frames, so the
causal time path never carries them into real ones; the band path and the norms work
within a frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import CausalStages, EnhancerConfig, StreamState, complex_mask, register_architecture


@dataclass
class DPRNNConfig(EnhancerConfig):
    architecture: str = "dprnn"
    downsample: int = 3  # stride-2 frequency convolutions in the encoder (161 bins -> 81 -> 41 -> 21 sub-bands)
    rnn_groups: int = 2  # channels split into this many independent GRUs
    head_width: int = 8  # features per bin in the exit heads

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.downsample <= 6:
            raise ValueError(f"model.downsample must be 1..6 (stride-2 frequency convolutions), got {self.downsample}")
        if self.rnn_groups < 1 or self.hidden % (2 * self.rnn_groups):
            raise ValueError(f"model.hidden ({self.hidden}) must split into model.rnn_groups ({self.rnn_groups}) "
                             "groups of two directions")
        if self.head_width < 1:
            raise ValueError(f"model.head_width must be >= 1, got {self.head_width}")


class GroupedGRU(nn.Module):
    """``groups`` independent GRUs over equal slices of the channels (fewer weights and
    multiply-accumulates than one GRU over all of them: GTCRN's grouped RNN)."""

    def __init__(self, channels: int, groups: int, bidirectional: bool):
        super().__init__()
        if channels % (groups * (2 if bidirectional else 1)):
            raise ValueError(f"{channels} channels do not split into {groups} groups"
                             f"{' of two directions' if bidirectional else ''}")
        self.groups, self.bidirectional = groups, bidirectional
        width = channels // groups
        self.rnns = nn.ModuleList(nn.GRU(width, width // (2 if bidirectional else 1), batch_first=True,
                                         bidirectional=bidirectional) for _ in range(groups))

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (N, L, C); state: (groups, N, C / groups) (unidirectional only) -> (N, L, C), new state."""
        outputs, states = [], []
        for g, (rnn, part) in enumerate(zip(self.rnns, x.chunk(self.groups, -1))):
            out, h = rnn(part, None if state is None else state[g:g + 1].contiguous())
            outputs.append(out)
            states.append(h)
        return torch.cat(outputs, -1), torch.cat(states, 0)

    def macs(self, length: int) -> float:
        """Multiply-accumulates for a sequence of ``length`` steps."""
        total = 0
        for rnn in self.rnns:
            i, h = rnn.input_size, rnn.hidden_size
            total += 3 * (i * h + h * h) * (2 if self.bidirectional else 1)
        return float(total * length)


class DualPathRNNBlock(nn.Module):
    """One stage: a grouped bidirectional GRU across the bands of each frame, then a grouped
    GRU along time in each band; each followed by a channel mix, a norm and a residual."""

    def __init__(self, hidden: int, groups: int):
        super().__init__()
        self.band_rnn = GroupedGRU(hidden, groups, bidirectional=True)
        self.band_mix = nn.Linear(hidden, hidden)
        self.band_norm = nn.LayerNorm(hidden)
        self.time_rnn = GroupedGRU(hidden, groups, bidirectional=False)
        self.time_mix = nn.Linear(hidden, hidden)
        self.time_norm = nn.LayerNorm(hidden)

    def forward(self, x: Tensor, memory: dict[str, Tensor], key: str) -> Tensor:
        """x: (B, T, bands, C); ``memory[key]`` holds (and gets) the time GRUs' state (B, bands, groups, C/groups)."""
        b, t, f, c = x.shape
        along_bands, _ = self.band_rnn(x.reshape(b * t, f, c))
        x = x + self.band_norm(self.band_mix(along_bands)).reshape(b, t, f, c)
        seq = x.permute(0, 2, 1, 3).reshape(b * f, t, c)
        past = memory.get(key)
        state = None if past is None else past.reshape(b * f, -1, past.shape[-1]).transpose(0, 1)
        along_time, state = self.time_rnn(seq, state)
        memory[key] = state.transpose(0, 1).reshape(b, f, *state.shape[::2])
        return x + self.time_norm(self.time_mix(along_time)).reshape(b, f, t, c).permute(0, 2, 1, 3)

    def macs(self, bands: int) -> float:
        """Multiply-accumulates per frame."""
        c = self.band_mix.in_features
        return self.band_rnn.macs(bands) + self.time_rnn.macs(1) * bands + 2 * bands * (c * c + c)


class DualPathRNNEnhancer(CausalStages, nn.Module):
    """The StagedModel over :class:`DualPathRNNBlock` stages (see the module docstring and
    :class:`~.base.CausalStages` for the state and the streaming calls)."""

    def __init__(self, cfg: DPRNNConfig):
        super().__init__()
        self.build(cfg, lambda k: DualPathRNNBlock(cfg.hidden, cfg.rnn_groups), cfg.head_width)

    def stage(self, k: int, latent: Tensor, features: Tensor, noisy: Tensor, memory: StreamState) -> tuple[Tensor, Tensor]:
        """Stage k on a latent: (new latent, the stage's estimate (B, 2, F, T))."""
        latent = self.blocks[k](latent, memory.past, f"stage{k}.rnn")
        return latent, complex_mask(self.heads[k](latent, features), noisy)

    def stage_macs(self) -> float:
        """Multiply-accumulates per frame of one stage (block and exit head)."""
        head, bins = self.heads[0], self.stft.freq_bins
        per_bin = (head.width + 3) * head.width + head.width * 2
        head_macs = self.bands * self.config.hidden * head.per_band * head.width + bins * per_bin
        return float(self.blocks[0].macs(self.bands) + head_macs)


register_architecture("dprnn", DPRNNConfig, DualPathRNNEnhancer)

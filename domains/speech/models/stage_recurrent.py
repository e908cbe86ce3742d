"""A progressive speech-enhancement network as a StagedModel.

Stage q takes the noisy (compressed) complex spectrum and the previous stage's
estimate and maps them to a new complex estimate. A convolutional GRU carries a
memory across stages (stage-recurrent, as PL-CRN++ / DARCN). With
``shared=True`` every stage uses the same weights; otherwise each has its own.
``causal=True`` gives time convolutions no look-ahead (streaming).

Three output forms (``output``): ``"mapping"`` adds a predicted complex residual to
the previous estimate; ``"masked-mapping"`` (default) forms each stage's complex
estimate as a bounded complex ratio mask on the noisy spectrum plus a complex
residual; ``"refine"`` applies the bounded mask to the previous stage's estimate
instead (plus a residual), so each stage edits the last one. The mask part keeps a
small model from inventing energy it cannot justify, which is what made plain
mapping degrade on unseen noise types.

Padding never leaks: spectra are per-utterance, and every time-mixing layer's
input is multiplied by the frame mask, so padded frames look exactly like the
convolution's own zero padding of a lone utterance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adaptive_exit.runtime.staged import select_rows

from ..audio import SAMPLE_RATE
from ..stft import STFT
from .base import EnhancerConfig, complex_mask, frame_mask, register_architecture

OUTPUT_FORMS = ("masked-mapping", "mapping", "refine")


@dataclass
class StageRecurrentConfig(EnhancerConfig):
    architecture: str = "stage-recurrent"
    hidden: int = 128
    time_kernel: int = 3
    dilations: list = field(default_factory=lambda: [1, 2, 4])
    shared: bool = True  # one set of weights for every stage
    causal: bool = False  # time convolutions without look-ahead
    output: str = "masked-mapping"  # masked-mapping (bounded complex mask on the noisy + residual) | refine (on the previous estimate) | mapping

    def __post_init__(self):
        super().__post_init__()
        if self.output not in OUTPUT_FORMS:
            raise ValueError(f"model.output must be one of {OUTPUT_FORMS}, got {self.output!r}")
        if self.time_kernel < 1:
            raise ValueError(f"model.time_kernel must be >= 1, got {self.time_kernel}")
        if not self.dilations or any(not isinstance(d, int) or d < 1 for d in self.dilations):
            raise ValueError(f"model.dilations must be a non-empty list of integers >= 1, got {self.dilations}")


class TimeConv(nn.Module):
    """Dilated Conv1d over time; symmetric or causal (left-only) padding."""

    def __init__(self, channels: int, kernel: int, dilation: int, causal: bool):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        total = dilation * (kernel - 1)
        self.pad = (total, 0) if causal else (total // 2, total - total // 2)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.conv(F.pad(x * mask, self.pad))


class FrameNorm(nn.Module):
    """LayerNorm over the features of each frame: causal and blind to padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T)
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class Stage(nn.Module):
    """One refinement pass: (noisy, previous estimate, memory) -> (new estimate, memory).

    Frame features from both spectra, a dilated temporal convolution stack, a GRU
    cell over the stage index (the memory), and a residual complex-spectrum update.
    """

    def __init__(self, cfg: StageRecurrentConfig):
        super().__init__()
        d, f = cfg.hidden, cfg.freq_bins
        self.inp = nn.Conv1d(4 * f, d, 1)
        self.blocks = nn.ModuleList(TimeConv(d, cfg.time_kernel, dil, cfg.causal) for dil in cfg.dilations)
        self.norms = nn.ModuleList(FrameNorm(d) for _ in cfg.dilations)
        self.memory = nn.GRUCell(d, d)
        self.output = cfg.output
        self.masked = cfg.output in ("masked-mapping", "refine")
        self.out = nn.Conv1d(d, (4 if self.masked else 2) * f, 1)

    def forward(self, noisy: Tensor, previous: Tensor, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b, _, f, t = noisy.shape
        x = self.inp(torch.cat([noisy, previous], 1).reshape(b, 4 * f, t))
        for block, norm in zip(self.blocks, self.norms):
            x = x + F.gelu(norm(block(x, mask)))
        d = x.shape[1]
        h = self.memory((x * mask).transpose(1, 2).reshape(b * t, d), h.transpose(1, 2).reshape(b * t, d))
        h = h.reshape(b, t, d).transpose(1, 2) * mask
        if self.masked:
            out = self.out(h).reshape(b, 4, f, t)
            base = noisy if self.output == "masked-mapping" else previous
            estimate = complex_mask(out[:, :2], base) + out[:, 2:]
        else:
            estimate = previous + self.out(h).reshape(b, 2, f, t)
        return estimate * mask.unsqueeze(1), h


class ProgressiveEnhancer(nn.Module):
    """Stage-wise complex spectral mapping; see the module docstring. It owns its
    config (``model.config``), sample rate and STFT front end."""

    sample_rate = SAMPLE_RATE
    state_names = ("noisy", "estimate", "h", "mask")  # the offline state, in export order
    stage_updates = ("estimate", "h")  # what each stage changes

    def __init__(self, cfg: StageRecurrentConfig):
        super().__init__()
        self.config = cfg
        self.stft = STFT(compress=cfg.compress)
        self.num_stages = cfg.num_stages
        count = 1 if cfg.shared else cfg.num_stages
        self.stages = nn.ModuleList(Stage(cfg) for _ in range(count))

    def stage_module(self, k: int) -> Stage:
        return self.stages[0 if self.config.shared else k]

    def begin(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        noisy, frames = batch["noisy_spec"], batch["frames"]
        mask = frame_mask(noisy, frames)  # (B, 1, T)
        h = noisy.new_zeros(noisy.shape[0], self.config.hidden, noisy.shape[3])
        return {"noisy": noisy, "estimate": noisy, "h": h, "mask": mask}

    def run_stage(self, k: int, state: dict[str, Tensor]) -> dict[str, Tensor]:
        estimate, h = self.stage_module(k)(state["noisy"], state["estimate"], state["h"], state["mask"])
        return {**state, "estimate": estimate, "h": h}

    def exit_output(self, k: int, state: dict[str, Tensor]) -> Tensor:
        return state["estimate"]  # zero on padded frames

    def select(self, state: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        return select_rows(state, keep)

    def stage_cost(self, k: int) -> float:
        return 1.0

    def backbone_parameters(self):
        return self.parameters()


register_architecture("stage-recurrent", StageRecurrentConfig, ProgressiveEnhancer)

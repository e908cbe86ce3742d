"""What every progressive enhancer shares: its config's common fields, the complex ratio
mask, the noisy features, and the streaming memory of causal models.

An architecture is one module in this folder: a config dataclass (a subclass of
:class:`EnhancerConfig` with its own fields, registered with :func:`register_architecture`)
and a model class. Saved folders name their architecture; :func:`enhancer_config` builds
the right config from a recipe's or a folder's ``model:`` fields.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..stft import STFT
from .layers import Encoder, ExitHead


@dataclass
class EnhancerConfig:
    """The fields every architecture has (a recipe's ``model:`` section; saved with the weights)."""

    architecture: str = "dual-path"
    num_stages: int = 6
    hidden: int = 32  # features per frame (stage-recurrent) or channels per sub-band
    compress: float = 0.5  # power-law compression of spectrum magnitudes
    loss_alpha: float = 0.5  # alpha * complex + (1 - alpha) * magnitude, on compressed spectra
    si_sdr_weight: float = 0.0  # optional SI-SDR term on the waveform of every stage
    change_weight: float = 0.0  # penalty on each stage's relative change of the previous estimate (convergence regularizer)
    target_snr_step_db: float = 0.0  # progressive learning: stage q < last trains towards clean + noise attenuated by q * step dB; 0 = clean for every stage
    init_from: str | None = None  # training starts from this saved model's weights (same architecture and sizes); kept as a record

    def __post_init__(self):
        if self.num_stages < 1 or self.hidden < 1:
            raise ValueError(f"model.num_stages and model.hidden must be >= 1, got {self.num_stages}, {self.hidden}")
        if not 0 < self.compress <= 1:
            raise ValueError(f"model.compress must be in (0, 1], got {self.compress}")
        if not 0 <= self.loss_alpha <= 1:
            raise ValueError(f"model.loss_alpha must be in [0, 1], got {self.loss_alpha}")
        for name in ("si_sdr_weight", "change_weight", "target_snr_step_db"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def freq_bins(self) -> int:
        return STFT().freq_bins


#: settings that shape training, not the network: ``init_from`` may change them
TRAINING_ONLY = ("init_from", "loss_alpha", "si_sdr_weight", "change_weight", "target_snr_step_db")

_ARCHITECTURES: dict[str, tuple[type[EnhancerConfig], Callable[[Any], nn.Module]]] = {}


def register_architecture(name: str, config: type[EnhancerConfig], build: Callable[[Any], nn.Module]) -> None:
    _ARCHITECTURES[name] = (config, build)


def architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def config_class(architecture: str) -> type[EnhancerConfig]:
    if architecture not in _ARCHITECTURES:
        raise ValueError(f"model.architecture must be one of {architectures()}, got {architecture!r}")
    return _ARCHITECTURES[architecture][0]


def enhancer_config(**fields: Any) -> EnhancerConfig:
    """The config of ``fields["architecture"]`` (default dual-path) from its fields."""
    architecture = fields.get("architecture", "dual-path")
    cls = config_class(architecture)
    own = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - own)
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not a setting of architecture {architecture!r} "
                         f"(its settings: {', '.join(sorted(own))})")
    return cls(**fields)


def build_enhancer(cfg: EnhancerConfig) -> nn.Module:
    """The progressive enhancer a config describes (its ``architecture``)."""
    return _ARCHITECTURES[cfg.architecture][1](cfg)


def network_settings(cfg: EnhancerConfig) -> dict[str, Any]:
    """The fields that shape the network (what two models must share to swap weights)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in TRAINING_ONLY}


def complex_mask(raw: Tensor, spec: Tensor) -> Tensor:
    """Apply a complex ratio mask with magnitude bounded by tanh (< 1) to (B, 2, F, T) spectra."""
    real, imag = raw[:, 0], raw[:, 1]
    magnitude = torch.sqrt(real**2 + imag**2 + 1e-8)
    scale = torch.tanh(magnitude) / magnitude
    m_re, m_im = real * scale, imag * scale
    return torch.stack([m_re * spec[:, 0] - m_im * spec[:, 1], m_re * spec[:, 1] + m_im * spec[:, 0]], 1)


def noisy_features(noisy: Tensor) -> Tensor:
    """(B, 2, F, T) compressed spectrum -> (B, 3, F, T): real, imaginary, magnitude."""
    return torch.cat([noisy, torch.sqrt(noisy[:, :1] ** 2 + noisy[:, 1:] ** 2 + 1e-8)], 1)


def frame_mask(noisy: Tensor, frames: Tensor) -> Tensor:
    """(B, 1, T): 1 on each utterance's real frames."""
    mask = torch.arange(noisy.shape[-1], device=noisy.device)[None, :] < frames[:, None].to(noisy.device)
    return mask[:, None, :].to(noisy.dtype)


@dataclass
class StreamState:
    """The memory of a causal enhancer for a batch of streams: each causal layer's past
    (input frames or a recurrent state), keyed by layer (``enc0``, ``stage3.time1``, ...),
    batch first. Absent until the layer first runs (silence before the start)."""

    past: dict[str, Tensor] = field(default_factory=dict)

    def select(self, keep: Tensor) -> "StreamState":
        """The memory of the streams ``keep`` (row indices)."""
        return StreamState({name: value[keep] for name, value in self.past.items()})


class CausalStages:
    """The StagedModel and :class:`~adaptive_exit.runtime.staged.StreamingModel` methods of
    a causal enhancer written as ``encode(noisy, memory)`` and ``stage(k, latent, features,
    noisy, memory)``: offline processing is the streaming computation over one long piece
    from an empty memory, so streaming at full depth equals offline by construction.

    Offline state (a batch of whole utterances): ``noisy`` (B, 2, F, T), ``features``
    (B, T, F, 3), ``latent`` (B, T, bands, C), ``estimate`` (B, 2, F, T), ``mask`` (B, 1, T).
    """

    state_names = ("noisy", "features", "latent", "estimate", "mask")  # the offline state, in export order
    stage_updates = ("latent", "estimate")  # what each stage changes

    def build(self, cfg: EnhancerConfig, block: Callable[[int], nn.Module], head_width: int) -> None:
        """The parts every causal enhancer has: its STFT, the encoder (161 bins folded into
        sub-bands), stage ``k``'s ``block(k)`` and an exit head per stage."""
        from ..audio import SAMPLE_RATE

        self.config, self.sample_rate = cfg, SAMPLE_RATE
        self.stft = STFT(compress=cfg.compress)
        self.num_stages = cfg.num_stages
        bins = self.stft.freq_bins
        self.encoder = Encoder(cfg.hidden, cfg.downsample, bins)
        self.bands = self.encoder.bands[-1]
        self.blocks = nn.ModuleList(block(k) for k in range(cfg.num_stages))
        self.heads = nn.ModuleList(ExitHead(cfg.hidden, bins, self.bands, head_width) for _ in range(cfg.num_stages))

    def encode(self, noisy: Tensor, memory: StreamState) -> tuple[Tensor, Tensor]:
        """(B, 2, F, T) noisy spectrum -> (features (B, T, F, 3), latent (B, T, bands, C)) by
        the model's causal ``encoder``."""
        features = noisy_features(noisy)
        return features.permute(0, 3, 2, 1), self.encoder(features, memory)

    def encoder_macs(self) -> float:
        return self.encoder.macs()

    # -- StagedModel
    def begin(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        noisy = batch["noisy_spec"]
        features, latent = self.encode(noisy, StreamState())
        return {"noisy": noisy, "features": features, "latent": latent, "estimate": noisy,
                "mask": frame_mask(noisy, batch["frames"])}

    def run_stage(self, k: int, state: dict[str, Tensor]) -> dict[str, Tensor]:
        latent, estimate = self.stage(k, state["latent"], state["features"], state["noisy"], StreamState())
        return {**state, "latent": latent, "estimate": estimate * state["mask"].unsqueeze(1)}

    def exit_output(self, k: int, state: dict[str, Tensor]) -> Tensor:
        return state["estimate"]  # zero on padded frames

    def select(self, state: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        from adaptive_exit.runtime.staged import select_rows

        return select_rows(state, keep)

    def stage_cost(self, k: int) -> float:
        """Multiply-accumulates per frame, relative to one stage: the encoder counts in stage 0."""
        return 1.0 + (self.encoder_macs() / self.stage_macs() if k == 0 else 0.0)

    def backbone_parameters(self):
        return self.parameters()

    # -- StreamingModel
    def new_memory(self) -> StreamState:
        return StreamState()

    def stream_begin(self, batch: dict[str, Tensor], memory: StreamState) -> dict[str, Tensor]:
        noisy = batch["noisy_spec"]
        features, latent = self.encode(noisy, memory)
        return {"noisy": noisy, "features": features, "latent": latent, "estimate": noisy}

    def stream_stage(self, k: int, state: dict[str, Tensor], memory: StreamState) -> dict[str, Tensor]:
        latent, estimate = self.stage(k, state["latent"], state["features"], state["noisy"], memory)
        return {**state, "latent": latent, "estimate": estimate}

    def skip_stages(self, first: int, state: dict[str, Tensor], memory: StreamState) -> None:
        """A piece that stopped before stage ``first``: by default the skipped stages' memory
        stays as it was (their past has a gap, never a wrong past)."""

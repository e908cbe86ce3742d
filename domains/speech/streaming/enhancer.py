"""Chunk-by-chunk enhancement at the model's rate with chunk-level early exit (see the package docstring)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from adaptive_exit.policies import ExitPolicy, build_policy
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.staged import StreamingModel
from adaptive_exit.runtime.streaming import StreamPiece

from ..enhance import top_band, top_band_gain
from .frames import OverlapAdd, StreamingSTFT


@dataclass
class ChunkRecord:
    frames: int
    stages: int
    seconds: float


@dataclass
class StreamStats:
    """What a stream cost: per-chunk stages and processing time."""

    chunks: list[ChunkRecord] = field(default_factory=list)
    num_stages: int = 0
    hop_seconds: float = 0.01

    @property
    def audio_seconds(self) -> float:
        return sum(c.frames for c in self.chunks) * self.hop_seconds

    @property
    def rtf(self) -> float:
        return sum(c.seconds for c in self.chunks) / max(self.audio_seconds, 1e-9)

    @property
    def mean_stages(self) -> float:
        frames = sum(c.frames for c in self.chunks)
        return sum(c.stages * c.frames for c in self.chunks) / max(frames, 1)

    def compute_fraction(self, stage_costs: list[float]) -> float:
        """The stream's compute as a share of running every chunk to full depth."""
        cumulative = np.cumsum(stage_costs)
        frames = sum(c.frames for c in self.chunks)
        return float(sum(c.frames * cumulative[c.stages - 1] for c in self.chunks) / max(frames * cumulative[-1], 1e-12))

    def latency_ms(self, q: float = 0.95) -> float:
        """The q-quantile of per-chunk processing time, ms."""
        values = sorted(1000 * c.seconds for c in self.chunks)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    def summary(self) -> dict:
        return {"chunks": len(self.chunks), "mean_stages": self.mean_stages, "num_stages": self.num_stages,
                "rtf": self.rtf, "chunk_latency_ms_p50": self.latency_ms(0.5), "chunk_latency_ms_p95": self.latency_ms(0.95)}


class StreamingEnhancer:
    """Enhance one stream at the model's rate, chunk by chunk (see the module docstring).

    ``push(samples)`` returns the enhanced samples that are final so far, ``flush()`` the
    rest; the output has exactly as many samples as the input. ``policy`` (or assign
    ``enhancer.policy`` between pushes: a new budget) decides each chunk's stages.
    """

    def __init__(self, model, policy: ExitPolicy | str = "full", chunk_ms: float = 40.0, top_band_hz: float = 5500.0):
        if not isinstance(model, StreamingModel):
            raise ValueError(f"streaming needs a causal model that carries its state across pieces (architecture: "
                             f"dual-path or dprnn); this is a {getattr(model.config, 'architecture', type(model).__name__)} model")
        self.model = model.eval()
        stft = model.stft
        self.compress = stft.compress
        self.analysis = StreamingSTFT(stft.n_fft, stft.hop, stft.window)
        self.synthesis = OverlapAdd(stft.n_fft, stft.hop, stft.window)
        self.chunk_frames = max(1, round(chunk_ms / 1000 * model.sample_rate / stft.hop))
        self.piece = StreamPiece(model)
        self.runner = EarlyExitRunner(self.piece, build_policy(policy))
        self.pending: list[Tensor] = []
        self.stats = StreamStats(num_stages=model.num_stages, hop_seconds=stft.hop / model.sample_rate)
        self.top_band = top_band(model, top_band_hz)
        self.gains: list[float] = []  # per frame: the model's power gain in its top band (for RateBridge)
        self.length = 0

    @property
    def policy(self) -> ExitPolicy:
        return self.runner.policy

    @policy.setter
    def policy(self, value: ExitPolicy | str) -> None:
        self.runner.policy = build_policy(value)

    def push(self, samples: np.ndarray) -> np.ndarray:
        self.length += len(samples)
        self.pending.append(self.analysis.push(samples))
        return self._run(final=False)

    def flush(self) -> np.ndarray:
        self.pending.append(self.analysis.flush())
        out = self._run(final=True)
        before = self.synthesis.emitted - len(out)  # what earlier pushes returned
        total = np.concatenate([out, self.synthesis.flush(self.length)])
        return total[: max(0, self.length - before)]  # the trailing reflection is padding

    @torch.no_grad()
    def _run(self, final: bool) -> np.ndarray:
        frames = torch.cat(self.pending, -1) if self.pending else torch.zeros(0)
        self.pending = []
        outputs = []
        while frames.shape[-1] >= self.chunk_frames or (final and frames.shape[-1]):
            chunk, frames = frames[:, : self.chunk_frames], frames[:, self.chunk_frames:]
            outputs.append(self.synthesis.push(self._enhance(chunk)))
        if frames.shape[-1]:
            self.pending = [frames]
        return np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)

    def _enhance(self, frames: Tensor) -> Tensor:
        start = time.perf_counter()
        magnitude = frames.abs()
        compressed = torch.polar(magnitude.clamp_min(1e-12).pow(self.compress), frames.angle()) if self.compress else frames
        spec = torch.stack([compressed.real, compressed.imag])[None].float()
        result = self.runner({"noisy_spec": spec})
        self.piece.finish()
        out = torch.as_tensor(result.output)[0]
        estimate = torch.complex(out[0].double(), out[1].double())
        if self.compress:
            estimate = torch.polar(estimate.abs().pow(1.0 / self.compress), estimate.angle())
        self.gains.extend(top_band_gain(magnitude, estimate.abs(), self.top_band).tolist())
        self.stats.chunks.append(ChunkRecord(frames.shape[-1], int(result.exit_stage[0]) + 1, time.perf_counter() - start))
        return estimate

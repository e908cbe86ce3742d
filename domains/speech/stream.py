"""Streaming enhancement with chunk-level early exit, at any sample rate, in bounded memory.

:class:`StreamingEnhancer` takes audio at the model rate in pieces of any size (a
microphone callback, blocks read from a file) and returns the enhanced audio as soon
as it is final. Every ``chunk_ms`` of frames it runs the causal model's stages on the
new frames only, carrying each layer's past frames across chunks (``StreamState``), and
stops after the stage at which the exit policy (the spectral-distance patience rule on
this chunk's successive estimates, under the current budget) says the output has
converged. At full depth the output equals offline enhancement of the whole recording
(the STFT with centring and reflect padding, the overlap-add and its window envelope are
reproduced sample for sample).

A stage a chunk skips gets its past frames filled from the exit stage's latent (each
stage is a residual refinement, so that is its best stand-in), so a later chunk that runs
the stage sees recent context rather than context that ended where skipping began.

:class:`RateBridge` wraps it for audio at any rate: soxr streams resample to the model
rate and back, and above the model band (8 kHz for 16 kHz models) the original signal is
kept, ``x - up(down(x))``, scaled per frame by the suppression the model applied in its
own top band (5.5-8 kHz), so wide-band recordings keep their air and sibilance where the
model kept the speech, and lose it where the model removed noise. ``high_band="drop"``
returns only the model band instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from adaptive_exit.policies import ExitPolicy, build_policy
from adaptive_exit.runtime.runner import EarlyExitRunner

from .dual_path import StreamState
from .enhance import add_high_band, fit_length, top_band, top_band_gain


class StreamingSTFT:
    """The frames of ``torch.stft(x, center=True, pad_mode="reflect")``, computed as the
    samples arrive (the leading reflection needs the first ``n_fft // 2 + 1`` samples, the
    trailing one is added by :meth:`flush`)."""

    def __init__(self, n_fft: int, hop: int, window: Tensor):
        self.n_fft, self.hop, self.window = n_fft, hop, window
        self.half = n_fft // 2
        self.head: list[np.ndarray] = []  # samples before the leading reflection can be built
        self.buffer: np.ndarray | None = None  # padded signal from the next frame's start
        self.tail = np.zeros(0, dtype=np.float32)  # the last half + 1 samples (for the trailing reflection)
        self.received = 0

    def push(self, samples: np.ndarray) -> Tensor:
        samples = np.asarray(samples, dtype=np.float32)
        self.received += len(samples)
        self.tail = np.concatenate([self.tail, samples])[-(self.half + 1):]
        if self.buffer is None:
            self.head.append(samples)
            start = np.concatenate(self.head)
            if len(start) <= self.half:
                return self._empty()
            self.head = []
            self.buffer = np.concatenate([start[1:self.half + 1][::-1], start])
        else:
            self.buffer = np.concatenate([self.buffer, samples])
        return self._frames()

    def flush(self) -> Tensor:
        """The last frames (the trailing reflection); the stream must hold more than
        ``n_fft // 2`` samples (shorter recordings: pad them, as offline enhancement does)."""
        if self.buffer is None:
            raise ValueError(f"a stream of {self.received} samples is too short to enhance "
                             f"(at least {self.half + 1} needed)")
        self.buffer = np.concatenate([self.buffer, self.tail[-2::-1][: self.half]])
        return self._frames()

    def _frames(self) -> Tensor:
        count = (len(self.buffer) - self.n_fft) // self.hop + 1 if len(self.buffer) >= self.n_fft else 0
        if count <= 0:
            return self._empty()
        used = (count - 1) * self.hop + self.n_fft
        frames = torch.stft(torch.from_numpy(self.buffer[:used].copy()), self.n_fft, self.hop, self.n_fft,
                            self.window, center=False, return_complex=True)
        self.buffer = self.buffer[count * self.hop:]
        return frames  # (F, count)

    def _empty(self) -> Tensor:
        return torch.zeros(self.n_fft // 2 + 1, 0, dtype=torch.complex64)


class OverlapAdd:
    """The inverse of :class:`StreamingSTFT`: ``torch.istft(center=True)`` as frames
    arrive; returns the samples no later frame can change."""

    def __init__(self, n_fft: int, hop: int, window: Tensor):
        self.n_fft, self.hop = n_fft, hop
        self.window = window.double()
        self.signal = np.zeros(0)
        self.envelope = np.zeros(0)
        self.skip = n_fft // 2  # centring: the first half frame is padding
        self.emitted = 0

    def push(self, frames: Tensor) -> np.ndarray:
        count = frames.shape[-1]
        if not count:
            return np.zeros(0, dtype=np.float32)
        pieces = (torch.fft.irfft(frames.to(torch.complex128), n=self.n_fft, dim=0) * self.window[:, None]).numpy()
        start = len(self.signal) - (self.n_fft - self.hop) if len(self.signal) else 0
        total = start + (count - 1) * self.hop + self.n_fft
        self.signal = np.pad(self.signal, (0, total - len(self.signal)))
        self.envelope = np.pad(self.envelope, (0, total - len(self.envelope)))
        square = (self.window ** 2).numpy()
        for i in range(count):
            at = start + i * self.hop
            self.signal[at:at + self.n_fft] += pieces[:, i]
            self.envelope[at:at + self.n_fft] += square
        return self._emit(len(self.signal) - (self.n_fft - self.hop))

    def flush(self, length: int) -> np.ndarray:
        """The rest, up to ``length`` output samples in all."""
        out = self._emit(len(self.signal))
        return out[: max(0, length - (self.emitted - len(out)))]

    def _emit(self, final: int) -> np.ndarray:
        ready = self.signal[:final] / np.where(self.envelope[:final] > 1e-11, self.envelope[:final], 1.0)
        self.signal, self.envelope = self.signal[final:], self.envelope[final:]
        drop = min(self.skip, len(ready))
        self.skip -= drop
        out = ready[drop:].astype(np.float32)
        self.emitted += len(out)
        return out


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

    def latency_ms(self, q: float = 0.95) -> float:
        """The q-quantile of per-chunk processing time, ms."""
        values = sorted(1000 * c.seconds for c in self.chunks)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    def summary(self) -> dict:
        return {"chunks": len(self.chunks), "mean_stages": self.mean_stages, "num_stages": self.num_stages,
                "rtf": self.rtf, "chunk_latency_ms_p50": self.latency_ms(0.5), "chunk_latency_ms_p95": self.latency_ms(0.95)}


class _Chunk:
    """A StagedModel over one chunk of one stream: the stream's memory goes in and comes out."""

    def __init__(self, model, memory: StreamState):
        self.model, self.memory = model, memory
        self.num_stages = model.num_stages
        self.last_latent: Tensor | None = None
        self.stages_run = 0

    def stage_cost(self, k: int) -> float:
        return self.model.stage_cost(k)

    def begin(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        noisy = batch["noisy_spec"]
        features, latent = self.model.encode(noisy, self.memory)
        return {"noisy": noisy, "features": features, "latent": latent, "estimate": noisy}

    def run_stage(self, k: int, state: dict[str, Tensor]) -> dict[str, Tensor]:
        latent, estimate = self.model.stage(k, state["latent"], state["features"], state["noisy"], self.memory)
        self.last_latent, self.stages_run = latent, k + 1
        return {**state, "latent": latent, "estimate": estimate}

    def exit_output(self, k: int, state: dict[str, Tensor]) -> Tensor:
        return state["estimate"]

    def select(self, state: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        return {name: value[keep] for name, value in state.items()}

    def fill_skipped(self) -> None:
        """Past frames of the stages this chunk skipped: the exit stage's latent."""
        for k in range(self.stages_run, self.num_stages):
            for j, conv in enumerate(self.model.blocks[k].times):
                key = f"stage{k}.time{j}"
                past = self.memory.past.get(key)
                if past is None:
                    past = self.last_latent.new_zeros(self.last_latent.shape[0], conv.context, *self.last_latent.shape[2:])
                self.memory.past[key] = torch.cat([past, self.last_latent], 1)[:, -conv.context:]


class StreamingEnhancer:
    """Enhance one stream at the model's rate, chunk by chunk (see the module docstring).

    ``push(samples)`` returns the enhanced samples that are final so far, ``flush()`` the
    rest; the output has exactly as many samples as the input. ``policy`` (or assign
    ``enhancer.policy`` between pushes: a new budget) decides each chunk's stages.
    """

    def __init__(self, model, policy: ExitPolicy | str = "full", chunk_ms: float = 40.0, top_band_hz: float = 5500.0):
        if not hasattr(model, "encode"):
            raise ValueError(f"streaming needs a causal model with per-layer state (architecture: dual-path); this is "
                             f"a {getattr(model.config, 'architecture', type(model).__name__)} model")
        self.model = model.eval()
        stft = model.stft
        self.compress = stft.compress
        self.analysis = StreamingSTFT(stft.n_fft, stft.hop, stft.window)
        self.synthesis = OverlapAdd(stft.n_fft, stft.hop, stft.window)
        self.chunk_frames = max(1, round(chunk_ms / 1000 * model.sample_rate / stft.hop))
        self.memory = StreamState()
        self.runner = EarlyExitRunner(_Chunk(model, self.memory), build_policy(policy))
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
        chunk = self.runner.model
        chunk.stages_run = 0
        result = self.runner({"noisy_spec": spec})
        chunk.fill_skipped()
        out = torch.as_tensor(result.output)[0]
        estimate = torch.complex(out[0].double(), out[1].double())
        if self.compress:
            estimate = torch.polar(estimate.abs().pow(1.0 / self.compress), estimate.angle())
        self.gains.extend(top_band_gain(magnitude, estimate.abs(), self.top_band).tolist())
        self.stats.chunks.append(ChunkRecord(frames.shape[-1], int(result.exit_stage[0]) + 1, time.perf_counter() - start))
        return estimate


class RateBridge:
    """A :class:`StreamingEnhancer` for audio at ``sample_rate`` (see the module docstring)."""

    def __init__(self, model, sample_rate: int, policy: ExitPolicy | str = "full", chunk_ms: float = 40.0,
                 high_band: str = "keep"):
        import soxr

        if high_band not in ("keep", "drop"):
            raise ValueError(f"high_band must be keep or drop, got {high_band!r}")
        self.rate, self.model_rate = int(sample_rate), int(model.sample_rate)
        self.enhancer = StreamingEnhancer(model, policy, chunk_ms)
        self.same = self.rate == self.model_rate
        self.keep_high = high_band == "keep" and self.rate > self.model_rate
        if not self.same:
            self.down = soxr.ResampleStream(self.rate, self.model_rate, 1, dtype="float32", quality="HQ")
            self.up = soxr.ResampleStream(self.model_rate, self.rate, 1, dtype="float32", quality="HQ")
            if self.keep_high:
                self.up_input = soxr.ResampleStream(self.model_rate, self.rate, 1, dtype="float32", quality="HQ")
        self.original: list[np.ndarray] = []  # input at its rate, not yet output
        self.reference: list[np.ndarray] = []  # up(down(input)), not yet output
        self.enhanced: list[np.ndarray] = []  # up(enhanced), not yet output
        self.received = self.emitted = 0
        self.gains_dropped = 0  # top-band gains of frames already used and forgotten

    @property
    def stats(self) -> StreamStats:
        return self.enhancer.stats

    @property
    def policy(self) -> ExitPolicy:
        return self.enhancer.policy

    @policy.setter
    def policy(self, value: ExitPolicy | str) -> None:
        self.enhancer.policy = value

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32)
        self.received += len(samples)
        if self.same:
            return self.enhancer.push(samples)
        low = self.down.resample_chunk(samples)
        self._collect(samples, low, self.enhancer.push(low), last=False)
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        if self.same:
            return self.enhancer.flush()
        low = self.down.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if self.enhancer.length + len(low) <= self.enhancer.analysis.half:  # a very short recording
            low = np.pad(low, (0, self.enhancer.analysis.half + 1 - self.enhancer.length - len(low)))
        self._collect(np.zeros(0, dtype=np.float32), low, self.enhancer.push(low), last=False)
        self._collect(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32), self.enhancer.flush(), last=True)
        return self._emit(final=True)

    def _collect(self, original: np.ndarray, low: np.ndarray, enhanced_low: np.ndarray, last: bool) -> None:
        self.original.append(original)
        self.enhanced.append(self.up.resample_chunk(enhanced_low, last=last))
        if self.keep_high:
            self.reference.append(self.up_input.resample_chunk(low, last=last))

    def _emit(self, final: bool) -> np.ndarray:
        enhanced = np.concatenate(self.enhanced)
        original = np.concatenate(self.original)
        count = min(len(enhanced), len(original))
        if self.keep_high:
            reference = np.concatenate(self.reference)
            count = min(count, len(reference))
        if final:
            count = len(original)
            enhanced = fit_length(enhanced, count)
            if self.keep_high:
                reference = fit_length(reference, count)
        out = enhanced[:count].copy()
        if self.keep_high:
            gains = np.asarray(self.enhancer.gains) if self.enhancer.gains else np.ones(1)
            hop = self.enhancer.model.stft.hop * self.rate / self.model_rate
            out = add_high_band(out, original[:count], reference[:count], gains, self.emitted - self.gains_dropped * hop, hop)
            self.reference = [reference[count:]]
            done = max(0, int((self.emitted + count) / hop) - 1 - self.gains_dropped)  # frames no later sample needs
            del self.enhancer.gains[:min(done, max(0, len(self.enhancer.gains) - 1))]  # bounded memory on long streams
            self.gains_dropped += min(done, max(0, len(gains) - 1))
        self.enhanced, self.original = [enhanced[count:]], [original[count:]]
        self.emitted += count
        return out


def enhance_stream(model, blocks: Iterable[np.ndarray], sample_rate: int, policy: ExitPolicy | str = "full",
                   chunk_ms: float = 40.0, high_band: str = "keep") -> Iterator[np.ndarray]:
    """Enhanced audio for a stream of blocks at ``sample_rate`` (a microphone, ``soundfile.blocks``);
    yields output pieces as they become final, the last one after the input ends."""
    bridge = RateBridge(model, sample_rate, policy, chunk_ms, high_band)
    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        out = bridge.push(block.mean(axis=1) if block.ndim == 2 else block)
        if len(out):
            yield out
    yield bridge.flush()


def stream_file(model, source, target, policy: ExitPolicy | str = "full", chunk_ms: float = 40.0,
                high_band: str = "keep", subtype: str = "PCM_16", block_seconds: float = 2.0) -> tuple[StreamStats, dict]:
    """Enhance an audio file of any length in bounded memory: blocks are read, streamed
    through a :class:`RateBridge` and written as they become final, to a temporary file
    renamed onto ``target`` at the end (nothing is left half-written). Returns the stream's
    statistics and facts about the file (rate, length, clipped samples)."""
    import soundfile as sf

    from adaptive_exit import io

    from .audio import check_audio

    try:
        info = sf.info(str(source))
    except Exception as exc:  # noqa: BLE001 - soundfile raises LibsndfileError, RuntimeError, ...
        raise ValueError(f"{source}: not a readable audio file ({exc})") from None
    if info.frames == 0:
        raise ValueError(f"{source}: the audio is empty (0 samples)")
    bridge = RateBridge(model, info.samplerate, policy, chunk_ms, high_band)
    facts = {"sample_rate": info.samplerate, "samples": 0, "clipped": 0}
    integer = not subtype.startswith(("FLOAT", "DOUBLE"))

    def put(out, piece: np.ndarray) -> None:
        if integer:
            facts["clipped"] += int(np.count_nonzero(np.abs(piece) > 1.0))
            piece = np.clip(piece, -1.0, 1.0)
        out.write(piece)

    def write(tmp) -> None:
        with sf.SoundFile(str(tmp), "w", info.samplerate, 1, subtype=subtype, format="WAV") as out:
            for block in sf.blocks(str(source), blocksize=max(1, int(block_seconds * info.samplerate)), dtype="float32",
                                   always_2d=True):
                mono = check_audio(block.mean(axis=1), f"{source} (from sample {facts['samples']})")
                facts["samples"] += len(mono)
                put(out, bridge.push(mono))
            put(out, bridge.flush())

    io.write_with(target, write)
    return bridge.stats, facts

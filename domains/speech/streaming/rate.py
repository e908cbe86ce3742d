"""Streaming at any sample rate (soxr both ways, the high band kept or dropped), and whole
files enhanced in bounded memory."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from adaptive_exit.policies import ExitPolicy

from ..enhance import add_high_band, fit_length
from .enhancer import StreamingEnhancer, StreamStats


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

    from ..audio import check_audio

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

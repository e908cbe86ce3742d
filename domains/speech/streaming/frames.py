"""The STFT and its inverse computed as samples arrive, equal to ``torch.stft``/``torch.istft``
with centring and reflect padding (sample for sample)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


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

"""The speech endpoint of ``adaptive-exit serve``: ``POST /enhance`` with a WAV (or FLAC/OGG)
body; the answer is the enhanced WAV at the input's own sample rate and length, with the
stages used in the ``X-Exit-Stage`` header."""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from adaptive_exit.serving import RequestError, ServeAdapter

from .audio import check_audio, resample
from .enhance import padded_length, spectra, waveform


class SpeechServeAdapter(ServeAdapter):
    path = "/enhance"
    content_types = ("audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/ogg", "application/octet-stream")
    max_request_bytes = 20 << 20
    max_seconds = 120.0

    def __init__(self, model: Any):
        self.model = model

    def parse(self, body: bytes, content_type: str) -> list[dict[str, Any]]:
        import soundfile as sf

        try:
            audio, sr = sf.read(io.BytesIO(body), dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001 - libsndfile's own error types
            raise RequestError(f"the body is not a readable audio file ({exc})") from None
        audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
        if len(audio) > self.max_seconds * sr:
            raise RequestError(f"{len(audio) / sr:.1f} s of audio; at most {self.max_seconds:g} s per request", 413)
        try:
            check_audio(audio, "the request")
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return [{"audio": resample(audio, sr, self.model.sample_rate), "sr": sr, "length": len(audio)}]

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = spectra(self.model, [item["audio"] for item in items])
        return batch

    def item_result(self, item: dict[str, Any], output: torch.Tensor, stage: int, num_stages: int) -> dict[str, Any]:
        length = padded_length(self.model, len(item["audio"]))
        enhanced = waveform(self.model, output, self.model.stft.frames(length), length, len(item["audio"]))
        enhanced = resample(enhanced, self.model.sample_rate, item["sr"])
        enhanced = np.pad(enhanced, (0, max(0, item["length"] - len(enhanced))))[: item["length"]]
        return {"audio": enhanced, "sr": item["sr"], "stages_used": stage + 1, "num_stages": num_stages}

    def respond(self, items: list[dict[str, Any]], results: list[dict[str, Any]]) -> tuple[bytes, str]:
        import soundfile as sf

        buffer = io.BytesIO()
        result = results[0]
        sf.write(buffer, result["audio"], result["sr"], format="WAV", subtype="FLOAT")
        return buffer.getvalue(), "audio/wav"

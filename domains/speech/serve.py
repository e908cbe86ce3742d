"""The speech endpoint of ``adaptive-exit serve``: ``POST /enhance`` with a WAV (or FLAC/OGG)
body; the answer is the enhanced WAV (float) at the input's own sample rate and length
(above the model band the original is kept, scaled by the model's top-band gain, as
``enhance`` does), with the stages used in the ``X-Stages-Used`` / ``X-Num-Stages`` headers."""
from __future__ import annotations

import io
from typing import Any

import torch

from adaptive_exit.deploy.serving import RequestError, ServeAdapter

from .audio import check_audio, check_header, resample
from .enhance import back_to_rate, padded_length, spectra, waveform


class SpeechServeAdapter(ServeAdapter):
    path = "/enhance"
    content_types = ("audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/ogg", "application/octet-stream")
    limit_name = "request_bytes_audio"

    def __init__(self, model: Any):
        self.model = model

    def parse(self, body: bytes, content_type: str) -> list[dict[str, Any]]:
        import soundfile as sf

        try:
            info = sf.info(io.BytesIO(body))
        except Exception as exc:  # noqa: BLE001 - libsndfile's own error types
            raise RequestError(f"the body is not a readable audio file ({' '.join(str(exc).split())})") from None
        try:
            check_header("the request", info.samplerate, info.frames, "request_audio_seconds")
        except ValueError as exc:
            raise RequestError(str(exc), 413 if "limit request_audio_seconds" in str(exc) else 400) from None
        try:
            audio, sr = sf.read(io.BytesIO(body), dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001 - libsndfile's own error types
            raise RequestError(f"the body is not a readable audio file ({' '.join(str(exc).split())})") from None
        audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
        try:
            check_audio(audio, "the request")
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return [{"audio": resample(audio, sr, self.model.sample_rate), "original": audio, "sr": sr}]

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = spectra(self.model, [item["audio"] for item in items])
        return batch

    def item_result(self, item: dict[str, Any], output: torch.Tensor, stage: int, num_stages: int) -> dict[str, Any]:
        length = padded_length(self.model, len(item["audio"]))
        frames = self.model.stft.frames(length)
        enhanced = waveform(self.model, output, frames, length, len(item["audio"]))
        noisy_spec = spectra(self.model, [item["audio"]])["noisy_spec"][0]
        enhanced = back_to_rate(self.model, item["original"], item["sr"], item["audio"], enhanced, noisy_spec,
                                torch.as_tensor(output)[..., :frames])
        return {"audio": enhanced, "sr": item["sr"], "stages_used": stage + 1, "num_stages": num_stages}

    def respond(self, items: list[dict[str, Any]], results: list[dict[str, Any]]) -> tuple[bytes, str, dict[str, str]]:
        import soundfile as sf

        buffer = io.BytesIO()
        result = results[0]
        sf.write(buffer, result["audio"], result["sr"], format="WAV", subtype="FLOAT")
        return buffer.getvalue(), "audio/wav", {"X-Stages-Used": str(result["stages_used"]),
                                                 "X-Num-Stages": str(result["num_stages"])}

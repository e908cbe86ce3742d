"""Audio input with clear errors: mono float32 at 16 kHz, or a ValueError that names the file.

Stereo (or more channels) is downmixed to mono by averaging the channels (``enhance``
reports it per file). Headers are checked before decoding (:func:`check_header`). Other
sample rates are resampled with librosa (soxr). Empty, silent-only-by-NaN, or
non-audio files are rejected with the reason.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    if orig_sr == target_sr:
        return audio
    import librosa

    return librosa.resample(audio, orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq").astype(np.float32)


def check_audio(audio: np.ndarray, where: str) -> np.ndarray:
    if audio.size == 0:
        raise ValueError(f"{where}: the audio is empty (0 samples)")
    if not np.all(np.isfinite(audio)):
        bad = int(np.sum(~np.isfinite(audio)))
        raise ValueError(f"{where}: {bad} sample(s) are NaN or infinite")
    return audio


def check_header(where: str, samplerate: int, frames: int, seconds_limit: str = "audio_seconds") -> None:
    """Refuse what a header claims before anything is decoded: implausible sample rates
    (limits ``sample_rate_min``/``sample_rate_max``) and more audio than ``max_seconds``
    (the ``seconds_limit`` limit), so a 16 kB file claiming 1 Hz costs nothing."""
    from adaptive_exit.limits import limit

    low, high = limit("sample_rate_min"), limit("sample_rate_max")
    if not low <= samplerate <= high:
        raise ValueError(f"{where}: sample rate {samplerate} Hz is outside {low:g}..{high:g} Hz "
                         "(limits sample_rate_min/sample_rate_max)")
    cap = limit(seconds_limit)
    if frames / samplerate > cap:
        raise ValueError(f"{where}: {frames / samplerate:.1f} s of audio is over the {cap:g} s limit (limit {seconds_limit})")


def audio_header(path: str | os.PathLike):
    """The file's header (``soundfile.info``), checked by :func:`check_header`."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - soundfile raises LibsndfileError, RuntimeError, ...
        raise ValueError(f"{path}: not a readable audio file ({exc})") from None
    check_header(str(path), info.samplerate, info.frames)
    return info


def load_audio(path: str | os.PathLike, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read a file as mono float32 at ``target_sr``."""
    return read_audio(path, target_sr)[0]


def read_audio(path: str | os.PathLike, target_sr: int | None = SAMPLE_RATE) -> tuple[np.ndarray, int, int]:
    """(mono float32 audio at ``target_sr`` (None: the file's own rate), the file's sample
    rate, its length in samples)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    audio_header(path)
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - soundfile raises LibsndfileError, RuntimeError, ...
        raise ValueError(f"{path}: not a readable audio file ({exc})") from None
    audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    check_audio(audio, str(path))
    if target_sr is None:
        return audio, sr, len(audio)
    return check_audio(resample(audio, sr, target_sr), str(path)), sr, len(audio)


def save_audio(path: str | os.PathLike, audio: np.ndarray, sr: int = SAMPLE_RATE, subtype: str = "PCM_16") -> int:
    """Write a WAV atomically; returns how many samples were clipped to [-1, 1] (integer
    formats only: ``FLOAT`` keeps any level)."""
    import soundfile as sf

    from adaptive_exit import io

    clipped = 0
    if not subtype.startswith(("FLOAT", "DOUBLE")):
        clipped = int(np.count_nonzero(np.abs(audio) > 1.0))
        audio = np.clip(audio, -1.0, 1.0)
    io.write_with(path, lambda tmp: sf.write(str(tmp), audio, sr, subtype=subtype, format="WAV"))
    return clipped


def audio_seconds(path: str | os.PathLike) -> float:
    """A file's duration from its (checked) header; nothing is decoded."""
    info = audio_header(path)
    return info.frames / info.samplerate


def is_float_file(path: str | os.PathLike) -> bool:
    """Does the file store floating-point samples (which may exceed +-1)?"""
    import soundfile as sf

    try:
        return sf.info(str(path)).subtype in ("FLOAT", "DOUBLE")
    except Exception:  # noqa: BLE001 - unreadable files are reported by read_audio
        return False


def list_audio(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)

"""A short real recording with its clean reference (see README.md for its licence), so the
speech commands and tests run in an empty folder without any dataset."""
from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).parent


def noisy_path() -> Path:
    return FOLDER / "noisy.flac"


def clean_path() -> Path:
    return FOLDER / "clean.flac"

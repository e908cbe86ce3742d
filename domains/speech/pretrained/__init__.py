"""Speech models trained by this project's own recipes, shipped with the package.

Each sub-folder is a saved model folder (``config.json``, ``model.safetensors``, the
calibrated ``budget_policies.json``) with a ``README.md`` that gives the command that
trained it and its measured scores. ``adaptive-exit enhance`` uses :data:`DEFAULT` when
``--model`` is not given.
"""
from __future__ import annotations

from pathlib import Path

DEFAULT = "voicebank-dual-path"


def available() -> list[str]:
    """Names of the shipped models."""
    root = Path(__file__).resolve().parent
    return sorted(p.name for p in root.iterdir() if (p / "model.safetensors").is_file())


def path(name: str = DEFAULT) -> Path:
    """The folder of a shipped model (load it with ``load_speech_model`` or pass it as ``--model``)."""
    folder = Path(__file__).resolve().parent / name
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"no shipped speech model {name!r}; shipped: {available() or 'none'}")
    return folder

"""Resumable training: one checkpoint file, written atomically, read without unpickling objects.

A run killed after a checkpoint and resumed ends with exactly the weights of an
uninterrupted run. Settings that shape the weights must match the checkpoint's
(``train.resume=force`` continues anyway, with a warning).
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from adaptive_exit import io
from adaptive_exit.errors import CheckpointError

from .config import SHAPING_SETTINGS, TrainConfig

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


class Checkpoint:
    def __init__(self, output_dir: Path, config: TrainConfig):
        self.output_dir, self.config = output_dir, config
        self.path = output_dir / "checkpoint" / CHECKPOINT_NAME

    def clean_temporaries(self) -> None:
        """Writes killed mid-way leave ``.last.pt.*.tmp`` behind."""
        io.remove_stale_temporaries(self.path.parent, CHECKPOINT_NAME)

    def save(self, step: int, model_state: dict, optimizer, scheduler, history: list[dict[str, Any]]) -> None:
        io.torch_save(self.path, {"step": step, "model": model_state, "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "history": history, "config": asdict(self.config)})
        io.write_json(self.output_dir / "train_history.json", history)

    def load(self, model, optimizer, scheduler) -> tuple[int, list[dict[str, Any]]]:
        """(step, history) after loading the checkpoint into model, optimizer and scheduler.
        Read with ``weights_only=True``: a crafted file cannot run code."""
        path = self.path
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict) or not {"step", "model", "optimizer", "scheduler"} <= set(data):
                raise ValueError("not an adaptive-exit training checkpoint")
        except Exception as exc:  # noqa: BLE001 - unpickling refusals, truncated files, ...
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if "Weights only load failed" in reason:
                reason = "it holds Python objects beyond tensors and plain data, which are never unpickled"
            raise CheckpointError(f"cannot resume from checkpoint {path}: {reason}. "
                                  "Delete it (or set train.resume=false) to start over.") from None
        changed = self.changed_settings(data.get("config") or {})
        if changed and self.config.resume != "force":
            raise CheckpointError(f"{path} was written with other settings ({'; '.join(changed)}); "
                                  "use a new run_dir, set train.resume=false to start over, or train.resume=force to continue")
        if changed:
            logger.warning("resuming %s with changed settings: %s", path, "; ".join(changed))
        try:
            model.load_state_dict(data["model"])
            optimizer.load_state_dict(data["optimizer"])
            scheduler.load_state_dict(data["scheduler"])
        except Exception as exc:  # noqa: BLE001 - another model's weights
            raise CheckpointError(f"cannot resume from {path}: it holds another model "
                                  f"({str(exc).splitlines()[0][:200]}). Delete it to start over.") from None
        logger.info("resumed from %s at step %d", path, data["step"])
        return int(data["step"]), list(data.get("history", []))

    def changed_settings(self, saved: dict[str, Any]) -> list[str]:
        """Settings that shape the trained weights and differ from the checkpoint's."""
        current = asdict(self.config)
        return [f"{key}: {saved[key]!r} -> {current[key]!r}" for key in SHAPING_SETTINGS
                if key in saved and saved[key] != current[key]]

"""Training: one loop for every staged model on Hugging Face Accelerate (:mod:`.trainer`),
its settings (:mod:`.config`), data order (:mod:`.data_order`), checkpoints
(:mod:`.checkpoint`) and multi-exit objectives (:mod:`.losses`)."""
from __future__ import annotations

from .checkpoint import CHECKPOINT_NAME, Checkpoint
from .config import SHAPING_SETTINGS, TrainConfig, make_accelerator, resolve_mixed_precision, set_seed
from .trainer import Trainer

__all__ = ["CHECKPOINT_NAME", "Checkpoint", "SHAPING_SETTINGS", "TrainConfig", "Trainer", "make_accelerator",
           "resolve_mixed_precision", "set_seed"]

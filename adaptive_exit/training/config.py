"""The ``train:`` section of a recipe, seeding, and the Accelerate setup."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from adaptive_exit.fields import bounded, check_ranges

# Settings a resumed run must share with its checkpoint for the resume to equal an uninterrupted run.
SHAPING_SETTINGS = ("max_steps", "batch_size", "lr", "head_lr", "weight_decay", "warmup_steps", "grad_accum",
                    "max_grad_norm", "mixed_precision", "scheme", "exit_weights", "first_phase_fraction",
                    "distill_temperature", "distill_weight", "gradient_rescale", "group_by_length", "seed")


@dataclass
class TrainConfig:
    """Optimisation settings (the ``train:`` section of a recipe)."""

    max_steps: int = bounded(1000, ge=0)  # 0: no multi-exit training (a model taken from model.init_from as it is)
    batch_size: int = bounded(32, ge=1)
    lr: float = bounded(1e-3, gt=0)
    head_lr: float | None = bounded(None, gt=0)  # a separate rate for model.exit_parameters() (new exit heads)
    weight_decay: float = bounded(0.0, ge=0)
    warmup_steps: int = bounded(0, ge=0)
    grad_accum: int = bounded(1, ge=1)
    max_grad_norm: float | None = bounded(1.0, gt=0)  # null: no clipping
    mixed_precision: str = "auto"
    scheme: str = "joint"
    exit_weights: Any = "pabee"
    first_phase_fraction: float = bounded(0.5, ge=0, le=1)
    distill_temperature: float = bounded(1.0, gt=0)  # distill / romebert: T (RomeBERT's reference uses 3)
    distill_weight: float = bounded(0.9, ge=0, le=1)  # romebert: gamma, the share of each early exit's loss from distillation
    gradient_rescale: bool = True  # romebert: scale the gradient into exit i by 1 / (L - i) (its gradient regularization)
    eval_every: int = bounded(0, ge=0)  # recipes: every N steps, score every exit on ``eval_split`` (train_history.json)
    eval_split: str = "dev"
    keep_best: str | None = None  # recipes: save the model whose last exit scores best on eval_split under this metric
    save_every: int = bounded(200, ge=0)
    log_every: int = bounded(50, ge=0)
    seed: int = bounded(0, ge=0)
    resume: bool | str = True  # true: continue from checkpoint/last.pt if its settings match; "force": even if not
    group_by_length: bool = False  # batches of similar-length inputs (long texts: much less padding)
    progress: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, "train")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(f"train.mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.keep_best and not self.eval_every:
            raise ValueError("train.keep_best needs train.eval_every > 0 (how often to validate)")
        if self.resume not in (True, False, "force"):
            raise ValueError(f"train.resume must be true, false or force, got {self.resume!r}")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (Accelerate's ``set_seed``; NumPy takes 32 bits)."""
    from accelerate.utils import set_seed as accelerate_set_seed

    accelerate_set_seed(seed % 2**32)


def resolve_mixed_precision(setting: str) -> str:
    """``auto``: bf16 on a GPU that supports it, fp16 on other GPUs, none on CPU."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_accelerator(config: TrainConfig, find_unused_parameters: bool = False):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]
    # cpu=True on machines without a GPU: without it Accelerate ignores a torchrun
    # launch on CPUs (DistributedType.NO) and every process trains alone.
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        kwargs_handlers=handlers,
    )

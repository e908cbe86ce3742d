"""One training loop for every staged model, written once on Hugging Face Accelerate.

The same code runs in one CPU process and under ``accelerate launch`` /
``torchrun`` on many processes: each optimizer step consumes one global batch of
``batch_size`` samples per accumulation step, split evenly across processes, so
the data order does not depend on the number of processes.

Determinism and resuming: the data order of epoch e is a permutation seeded by
``seed + e``, and the random generators are reseeded from (seed, step, rank)
before every step. A run killed after a checkpoint and resumed therefore ends
with exactly the weights of an uninterrupted run. Checkpoints are one file,
written to a temporary name and renamed.
"""
from __future__ import annotations

import json
import logging
import math
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from accelerate.utils import send_to_device
from tqdm.auto import tqdm

from adaptive_exit import io
from adaptive_exit.errors import CheckpointError, TrainingDiverged
from adaptive_exit.fields import bounded, check_ranges
from adaptive_exit.training.losses import MultiExitObjective
from adaptive_exit.runtime.threads import progress_enabled
from adaptive_exit.runtime.staged import all_exit_outputs

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
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


class Trainer:
    """Train a staged model with a multi-exit objective.

    ``collate(list_of_samples)`` builds a batch that ``model.begin`` accepts;
    ``objective`` maps all exit outputs to a loss. ``eval_fn(model)`` (optional)
    returns metrics, logged every ``eval_every`` steps. ``on_step_end(step)`` is
    a hook (used by tests to simulate a crash).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Sequence[Any],
        collate: Callable[[list[Any]], Any],
        objective: MultiExitObjective,
        config: TrainConfig,
        output_dir: str | os.PathLike,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        on_step_end: Callable[[int], None] | None = None,
        lengths: Sequence[int] | None = None,
    ):
        if len(train_data) == 0:
            raise ValueError("the training dataset is empty")
        self.model = model
        self.train_data = train_data
        self.collate = collate
        self.objective = objective
        self.config = config
        self.output_dir = Path(output_dir)
        self.eval_fn = eval_fn
        self.on_step_end = on_step_end
        self.lengths = lengths  # per-sample input lengths, for train.group_by_length
        self._order_cache: tuple[int, Tensor] | None = None
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ data order

    def _global_batches_per_epoch(self) -> int:
        return len(self.train_data) // self.config.batch_size

    def _epoch_order(self, epoch: int) -> Tensor:
        """The sample order of an epoch: a permutation seeded by seed + epoch. With
        ``group_by_length`` (and sample lengths), each window of 50 batches is sorted by
        length and the batches are shuffled again, so a batch holds inputs of similar
        length and carries little padding while the order stays random."""
        if self._order_cache and self._order_cache[0] == epoch:
            return self._order_cache[1]
        generator = torch.Generator().manual_seed(self.config.seed + epoch)
        order = torch.randperm(len(self.train_data), generator=generator)
        size = self.config.batch_size
        if self.config.group_by_length and self.lengths is not None:
            lengths = torch.as_tensor(self.lengths)
            window = size * 50
            chunks = [c[torch.argsort(lengths[c], descending=True, stable=True)] for c in order.split(window)]
            grouped = torch.cat(chunks)
            usable = len(grouped) // size * size
            batches = grouped[:usable].view(-1, size)
            order = torch.cat([batches[torch.randperm(len(batches), generator=generator)].reshape(-1), grouped[usable:]])
        self._order_cache = (epoch, order)
        return order

    def _batch_indices(self, micro_index: int, rank: int, world: int) -> list[int]:
        """Indices of this rank's share of global micro-batch ``micro_index``."""
        per_epoch = self._global_batches_per_epoch()
        epoch, offset = divmod(micro_index, per_epoch)
        order = self._epoch_order(epoch)
        size = self.config.batch_size
        global_batch = order[offset * size:(offset + 1) * size].tolist()
        return global_batch[rank::world]

    # ------------------------------------------------------------------ phases

    def _phase(self, step: int) -> int:
        if self.objective.phases == 1:
            return 1
        return 1 if step < round(self.config.first_phase_fraction * self.config.max_steps) else 2

    def _freeze_for_phase_two(self, model: nn.Module) -> None:
        if not hasattr(model, "backbone_parameters"):
            raise ValueError(
                f"scheme {self.objective.scheme!r} needs model.backbone_parameters() "
                "(the backbone and final exit, frozen in phase 2)"
            )
        for p in model.backbone_parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoint" / CHECKPOINT_NAME

    def _save_checkpoint(self, accelerator, model, optimizer, scheduler, step: int) -> None:
        if accelerator.is_main_process:
            io.torch_save(self.checkpoint_path, {
                "step": step,
                "model": accelerator.unwrap_model(model).inner.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": self.history,
                "config": asdict(self.config),
            })
            io.write_json(self.output_dir / "train_history.json", self.history)
        accelerator.wait_for_everyone()

    def _load_checkpoint(self, model, optimizer, scheduler) -> int:
        """Resume from ``checkpoint/last.pt``. It is read with ``weights_only=True``, so a
        crafted file cannot run code; settings that shape the weights must match the
        checkpoint's (``train.resume=force`` continues anyway, with a warning)."""
        path = self.checkpoint_path
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
        changed = self._changed_settings(data.get("config") or {})
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
        self.history = list(data.get("history", []))
        logger.info("resumed from %s at step %d", path, data["step"])
        return int(data["step"])

    def _changed_settings(self, saved: dict[str, Any]) -> list[str]:
        """Settings that shape the trained weights and differ from the checkpoint's."""
        current = asdict(self.config)
        return [f"{key}: {saved[key]!r} -> {current[key]!r}" for key in SHAPING_SETTINGS
                if key in saved and saved[key] != current[key]]

    # ------------------------------------------------------------------ loop

    def _param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if self.config.head_lr is None:
            return [{"params": trainable}]
        if not hasattr(model, "exit_parameters"):
            raise ValueError("train.head_lr needs model.exit_parameters() (the exit heads)")
        heads = {id(p) for p in model.exit_parameters()}
        return [
            {"params": [p for p in trainable if id(p) not in heads]},
            {"params": [p for p in trainable if id(p) in heads], "lr": self.config.head_lr},
        ]

    def _scheduler(self, optimizer):
        warmup, total = self.config.warmup_steps, self.config.max_steps

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def train(self) -> nn.Module:
        cfg = self.config
        if cfg.max_steps == 0:
            self.model.eval()
            return self.model
        if self._global_batches_per_epoch() < 1:
            raise ValueError(f"the training set has {len(self.train_data)} samples, fewer than train.batch_size={cfg.batch_size}")
        set_seed(cfg.seed)
        accelerator = make_accelerator(cfg, find_unused_parameters=self.objective.phases > 1)
        rank, world = accelerator.process_index, accelerator.num_processes
        if cfg.batch_size % world:
            raise ValueError(f"train.batch_size={cfg.batch_size} must be divisible by the {world} processes")

        model = self.model
        optimizer = torch.optim.AdamW(self._param_groups(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = self._scheduler(optimizer)
        start = 0
        if accelerator.is_main_process:  # writes killed mid-way leave .last.pt.*.tmp behind
            io.remove_stale_temporaries(self.checkpoint_path.parent, CHECKPOINT_NAME)
        accelerator.wait_for_everyone()
        if cfg.resume and self.checkpoint_path.exists():
            start = self._load_checkpoint(model, optimizer, scheduler)
        raw = model
        model, optimizer = accelerator.prepare(_AllExits(raw), optimizer)

        frozen = False
        bar = tqdm(total=cfg.max_steps, initial=start, desc="training", disable=not (cfg.progress and accelerator.is_main_process and progress_enabled()))
        running: list[float] = []
        smoothed: float | None = None
        for step in range(start, cfg.max_steps):
            phase = self._phase(step)
            if phase == 2 and not frozen:
                self._freeze_for_phase_two(raw)
                frozen = True
            set_seed(cfg.seed * 1_000_003 + step * 101 + rank)
            model.train()
            loss_value = 0.0
            for micro in range(cfg.grad_accum):
                indices = self._batch_indices(step * cfg.grad_accum + micro, rank, world)
                batch = send_to_device(self.collate([self.train_data[i] for i in indices]), accelerator.device)
                sync = micro == cfg.grad_accum - 1
                context = accelerator.no_sync(model) if not sync and world > 1 else nullcontext()
                with context, accelerator.autocast():
                    outputs = model(batch)
                    loss = self.objective(outputs, batch, phase) / cfg.grad_accum
                accelerator.backward(loss)
                loss_value += float(loss.detach())
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"training loss became {loss_value} at step {step + 1}; nothing was saved for this step. "
                                       "Lower train.lr (or set train.max_grad_norm) and check the data")
            running.append(loss_value)
            smoothed = loss_value if smoothed is None else 0.9 * smoothed + 0.1 * loss_value
            bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)  # shown at the bar's next refresh
            bar.update(1)
            done = step + 1
            if cfg.log_every and done % cfg.log_every == 0 or done == cfg.max_steps:
                entry = {"step": done, "loss": float(np.mean(running)), "lr": scheduler.get_last_lr()[0], "phase": phase}
                running = []
                if self.eval_fn is not None and (done == cfg.max_steps or (cfg.eval_every and done % cfg.eval_every == 0)):
                    model.eval()
                    entry.update(self.eval_fn(raw))
                self.history.append(entry)
                logger.debug("step %d: %s", done, json.dumps(entry))
            elif self.eval_fn is not None and cfg.eval_every and done % cfg.eval_every == 0:
                model.eval()
                self.history.append({"step": done, **self.eval_fn(raw)})
            if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.max_steps:
                self._save_checkpoint(accelerator, model, optimizer, scheduler, done)
            if self.on_step_end is not None:
                self.on_step_end(done)
        bar.close()
        raw.eval()
        for p in raw.parameters():
            p.requires_grad_(True)
        self.model = raw
        return raw


class _AllExits(nn.Module):
    """Makes "run every stage" the module's forward, so DDP sees (and syncs) it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, batch: Any) -> list[torch.Tensor]:
        return all_exit_outputs(self.inner, batch)


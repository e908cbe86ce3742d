"""One training loop for every staged model, written once on Hugging Face Accelerate.

The same code runs in one CPU process and under ``accelerate launch`` / ``torchrun``
on many processes (see :mod:`.data_order` for how batches are split). Determinism and
resuming: the random generators are reseeded from (seed, step, rank) before every
step, so a run killed after a checkpoint (:mod:`.checkpoint`) and resumed ends with
exactly the weights of an uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch import nn
from tqdm.auto import tqdm

from adaptive_exit.errors import TrainingDiverged
from adaptive_exit.runtime.staged import all_exit_outputs
from adaptive_exit.runtime.threads import progress_enabled

from .checkpoint import Checkpoint
from .config import TrainConfig, make_accelerator, set_seed
from .data_order import EpochOrder
from .losses import MultiExitObjective

logger = logging.getLogger(__name__)


class Trainer:
    """Train a staged model with a multi-exit objective.

    ``collate(list_of_samples)`` builds a batch that ``model.begin`` accepts;
    ``objective`` maps all exit outputs to a loss. ``eval_fn(model)`` (optional)
    returns metrics, logged every ``eval_every`` steps. ``on_step_end(step)`` is
    a hook (used by tests to simulate a crash).
    """

    def __init__(self, model: nn.Module, train_data: Sequence[Any], collate: Callable[[list[Any]], Any],
                 objective: MultiExitObjective, config: TrainConfig, output_dir: str | os.PathLike,
                 eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
                 on_step_end: Callable[[int], None] | None = None, lengths: Sequence[int] | None = None):
        if len(train_data) == 0:
            raise ValueError("the training dataset is empty")
        self.model, self.train_data, self.collate, self.objective = model, train_data, collate, objective
        self.config, self.output_dir = config, Path(output_dir)
        self.eval_fn, self.on_step_end = eval_fn, on_step_end
        self.order = EpochOrder(len(train_data), config.batch_size, config.seed,
                                lengths if config.group_by_length else None)
        self.checkpoint = Checkpoint(self.output_dir, config)
        self.history: list[dict[str, Any]] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoint.path

    def _param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if self.config.head_lr is None:
            return [{"params": trainable}]
        if not hasattr(model, "exit_parameters"):
            raise ValueError("train.head_lr needs model.exit_parameters() (the exit heads)")
        heads = {id(p) for p in model.exit_parameters()}
        return [{"params": [p for p in trainable if id(p) not in heads]},
                {"params": [p for p in trainable if id(p) in heads], "lr": self.config.head_lr}]

    def _scheduler(self, optimizer):
        """Linear warm-up, then linear decay to zero at ``max_steps``."""
        warmup, total = self.config.warmup_steps, self.config.max_steps

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # ------------------------------------------------------------------ the loop, step by step

    def train(self) -> nn.Module:
        cfg = self.config
        if cfg.max_steps == 0:
            self.model.eval()
            return self.model
        run = self._start()
        bar = tqdm(total=cfg.max_steps, initial=run.start, desc="training",
                   disable=not (cfg.progress and run.accelerator.is_main_process and progress_enabled()))
        for step in range(run.start, cfg.max_steps):
            loss = self._step(run, step)
            run.smoothed = loss if run.smoothed is None else 0.9 * run.smoothed + 0.1 * loss
            bar.set_postfix(loss=f"{run.smoothed:.4f}", refresh=False)  # shown at the bar's next refresh
            bar.update(1)
            self._after_step(run, step + 1, loss)
        bar.close()
        raw = run.raw.eval()
        for p in raw.parameters():
            p.requires_grad_(True)
        self.model = raw
        return raw

    def _start(self) -> "_Run":
        """Accelerator, optimizer and schedule; resumed from the checkpoint when there is one."""
        cfg = self.config
        if self.order.batches_per_epoch < 1:
            raise ValueError(f"the training set has {len(self.train_data)} samples, fewer than train.batch_size={cfg.batch_size}")
        set_seed(cfg.seed)
        accelerator = make_accelerator(cfg, find_unused_parameters=self.objective.phases > 1)
        if cfg.batch_size % accelerator.num_processes:
            raise ValueError(f"train.batch_size={cfg.batch_size} must be divisible by the {accelerator.num_processes} processes")
        optimizer = torch.optim.AdamW(self._param_groups(self.model), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = self._scheduler(optimizer)
        start = 0
        if accelerator.is_main_process:
            self.checkpoint.clean_temporaries()
        accelerator.wait_for_everyone()
        if cfg.resume and self.checkpoint.path.exists():
            start, self.history = self.checkpoint.load(self.model, optimizer, scheduler)
        wrapped, optimizer = accelerator.prepare(_AllExits(self.model), optimizer)
        return _Run(accelerator, self.model, wrapped, optimizer, scheduler, start)

    def _step(self, run: "_Run", step: int) -> float:
        """One optimizer step (over ``grad_accum`` micro-batches); returns its loss."""
        cfg, accelerator = self.config, run.accelerator
        phase = self.objective.phase_at(step, cfg.max_steps, cfg.first_phase_fraction)
        if phase != run.phase:
            self.objective.enter_phase(phase, run.raw)
            run.phase = phase
        set_seed(cfg.seed * 1_000_003 + step * 101 + accelerator.process_index)
        run.model.train()
        loss_value = 0.0
        for micro in range(cfg.grad_accum):
            indices = self.order.indices(step * cfg.grad_accum + micro, accelerator.process_index, accelerator.num_processes)
            batch = send_to_device(self.collate([self.train_data[i] for i in indices]), accelerator.device)
            sync = micro == cfg.grad_accum - 1
            context = accelerator.no_sync(run.model) if not sync and accelerator.num_processes > 1 else nullcontext()
            with context, accelerator.autocast():
                loss = self.objective(run.model(batch), batch, phase) / cfg.grad_accum
            accelerator.backward(loss)
            loss_value += float(loss.detach())
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_([p for p in run.model.parameters() if p.requires_grad], cfg.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"training loss became {loss_value} at step {step + 1}; nothing was saved for this step. "
                                   "Lower train.lr (or set train.max_grad_norm) and check the data")
        return loss_value

    def _after_step(self, run: "_Run", done: int, loss: float) -> None:
        """Log, validate and checkpoint on their schedules."""
        cfg = self.config
        run.running.append(loss)
        validate = self.eval_fn is not None and (done == cfg.max_steps or (cfg.eval_every and done % cfg.eval_every == 0))
        if cfg.log_every and done % cfg.log_every == 0 or done == cfg.max_steps:
            entry = {"step": done, "loss": float(np.mean(run.running)), "lr": run.scheduler.get_last_lr()[0], "phase": run.phase}
            run.running = []
            if validate:
                run.model.eval()
                entry.update(self.eval_fn(run.raw))
            self.history.append(entry)
            logger.debug("step %d: %s", done, json.dumps(entry))
        elif validate:
            run.model.eval()
            self.history.append({"step": done, **self.eval_fn(run.raw)})
        if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.max_steps:
            if run.accelerator.is_main_process:
                self.checkpoint.save(done, run.accelerator.unwrap_model(run.model).inner.state_dict(), run.optimizer,
                                     run.scheduler, self.history)
            run.accelerator.wait_for_everyone()
        if self.on_step_end is not None:
            self.on_step_end(done)


class _Run:
    """What one call of :meth:`Trainer.train` holds while it runs."""

    def __init__(self, accelerator, raw: nn.Module, model: nn.Module, optimizer, scheduler, start: int):
        self.accelerator, self.raw, self.model = accelerator, raw, model
        self.optimizer, self.scheduler, self.start = optimizer, scheduler, start
        self.phase = 1
        self.running: list[float] = []
        self.smoothed: float | None = None


class _AllExits(nn.Module):
    """Makes "run every stage" the module's forward, so DDP sees (and syncs) it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, batch: Any) -> list[torch.Tensor]:
        return all_exit_outputs(self.inner, batch)

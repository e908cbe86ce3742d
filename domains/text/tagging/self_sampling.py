"""Self-sampling fine-tuning for token-level exit (Li et al., ACL 2021, Sec. "self-sampling").

Joint training shows every layer the full model's states, but under TOKEE a token's
neighbours may have halted: their keys and values are frozen copies from earlier
layers. Self-sampling closes that gap: for each training batch a threshold and a window
are sampled, the batch runs through the halted-and-copied layers exactly as at
inference (with gradients), and every exit is trained on the states it produces,
with the joint loss's layer weights.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from adaptive_exit.training.losses import exit_weights, weighted_exit_loss

from .tokee import check_layer, halted_layer, halting, normalized_entropy

logger = logging.getLogger(__name__)


def self_sampling_loss(model, batch: dict[str, Tensor], threshold: float, window: int) -> Tensor:
    """The weighted multi-exit loss on the states of one TOKEE pass (train mode).

    At threshold 0 nothing halts and this equals the joint loss of the full model
    (up to the dropout the encoder layers would add)."""
    adapter = model.adapter
    mask2d = batch["attention_mask"].bool()
    hidden = adapter.embed(batch["input_ids"], batch.get("token_type_ids"), batch["attention_mask"])
    active = mask2d.clone()
    own = torch.zeros(mask2d.shape, device=hidden.device)
    losses = []
    for k in range(model.num_stages):
        check_layer(adapter.layer(k))
        hidden = halted_layer(adapter.layer(k), hidden, mask2d, active)
        logits = model.classifiers[k](model.dropout(hidden))
        losses.append(model.task_loss(logits, batch["labels"]))
        with torch.no_grad():
            own = torch.where(active, normalized_entropy(logits.detach()), own)
            active = active & ~halting(own, batch, active, threshold, window)
    return weighted_exit_loss(losses, exit_weights(model.config.exit_weights, model.num_stages))


@dataclass
class SelfSamplingConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.01
    max_threshold: float = 0.4  # thresholds are drawn uniformly from [0, max_threshold]
    windows: Sequence[int] = (0, 1, 2)
    full_fraction: float = 0.0  # share of batches trained on full-model states (threshold 0: the joint loss)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"steps, batch_size and lr must be positive, got {self.steps}, {self.batch_size}, {self.lr}")
        if not 0.0 <= self.full_fraction <= 1.0:
            raise ValueError(f"full_fraction must be in [0, 1], got {self.full_fraction}")
        if self.max_threshold < 0 or not self.windows or min(self.windows) < 0:
            raise ValueError(f"max_threshold and windows must be >= 0 (and at least one window), got "
                             f"{self.max_threshold}, {list(self.windows)}")


def self_sampling_finetune(model, samples: Sequence, collate: Callable[[list], dict[str, Tensor]],
                           cfg: SelfSamplingConfig) -> list[dict[str, float]]:
    """Fine-tune ``model`` in place on ``samples``; returns the loss history (every 50 steps)."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / cfg.steps)
    order: list[int] = []
    history, running = [], []
    model.train()
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(samples)), len(samples))
        batch = collate([samples[i] for i in order[:cfg.batch_size]])
        del order[:cfg.batch_size]
        threshold, window = rng.uniform(0.0, cfg.max_threshold), rng.choice(list(cfg.windows))
        if rng.random() < cfg.full_fraction:
            threshold = 0.0
        loss = self_sampling_loss(model, batch, threshold, window)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "loss": sum(running) / len(running)})
            logger.info("self-sampling step %d: loss %.4f", step + 1, history[-1]["loss"])
            running = []
    model.eval()
    return history

"""Training token reduction after the multi-exit model is trained (``model.token_reduction_training``).

TR-BERT (Ye et al., NAACL 2021), as in its reference code:

1. **policy** phase (``train_rl``): the backbone and exits are frozen; each example is
   repeated K times, each copy draws its own Bernoulli selection at every selection point,
   and REINFORCE trains the policy networks with reward = -loss - alpha * (share of tokens
   kept, averaged over the selection points), the mean reward of the example's K copies
   being the baseline. For the first ``guide_rate`` of the steps one copy of each example
   imitates the residual strategy: it keeps the top-k tokens by |g_r . (h_r - h_s)|, the
   gradient of the loss at a later layer r times how much the token's state still changes
   between the selection point s and r (k: the number the policy expects to keep).
2. **joint** phase (``train_both --train_teacher``): everything trains, on K sampled
   selections per example, with the loss distilled from the full model (the model before
   this phase, without token reduction) plus beta times the policy loss.

Deviations, for batching and a 6-layer backbone: every exit (not only the last) is distilled
from the teacher's final exit with the PABEE weights, so layer exits keep working on the
reduced tokens; the reward uses the final exit's loss; K is configurable (reference: 8).

LTP (Kim et al., KDD 2022): a **soft** phase learns the per-layer thresholds together with
the model (soft masks sigmoid((importance - threshold) / T) scale the tokens, the loss adds
lambda times the mean share kept), then a **hard** phase fine-tunes the model with the
thresholds fixed and tokens really dropped.
"""
from __future__ import annotations

import copy
import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from adaptive_exit.fields import bounded, check_ranges
from adaptive_exit.training.losses import exit_weights, weighted_exit_loss
from adaptive_exit.runtime.threads import progress_enabled


logger = logging.getLogger(__name__)


@dataclass
class TokenReductionTrainConfig:
    """The ``model.token_reduction_training`` section of a recipe."""

    batch_size: int = bounded(8, ge=1)
    samples: int = bounded(4, ge=1)  # trbert: K selections drawn per example (reference code: 8)
    alpha: float = bounded(1.0, ge=0)  # trbert: weight of the kept share in the reward (IMDB in the reference: 1)
    beta: float = bounded(1.0, ge=0)  # trbert joint phase: weight of the policy loss
    guide_rate: float = bounded(0.5, ge=0, le=1)  # trbert: share of policy steps with one copy imitating the residual strategy
    policy_steps: int = bounded(200, ge=0)
    policy_lr: float = bounded(1e-3, gt=0)
    joint_steps: int = bounded(100, ge=0)
    joint_lr: float = bounded(2e-5, gt=0)
    ltp_lambda: float = bounded(0.1, ge=0)  # ltp: weight of the mean kept share in the loss
    soft_steps: int = bounded(200, ge=0)  # ltp
    threshold_lr: float = bounded(1e-2, gt=0)  # ltp
    hard_steps: int = bounded(100, ge=0)  # ltp
    lr: float = bounded(2e-5, gt=0)  # ltp: the model's learning rate in both phases
    max_grad_norm: float = bounded(1.0, gt=0)
    seed: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        check_ranges(self, "model.token_reduction_training")


class _Batches:
    """Endless shuffled batches of the training samples (reproducible by seed)."""

    def __init__(self, samples: Sequence[Any], collate: Callable, batch_size: int, seed: int):
        self.samples, self.collate, self.batch_size = samples, collate, batch_size
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next(self) -> dict[str, Tensor]:
        if len(self.order) < self.batch_size:
            self.order += self.rng.sample(range(len(self.samples)), len(self.samples))
        picked, self.order = self.order[: self.batch_size], self.order[self.batch_size:]
        return self.collate([self.samples[i] for i in picked])


def _repeat(batch: dict[str, Tensor], times: int) -> dict[str, Tensor]:
    return {k: (v.repeat(times, *([1] * (v.dim() - 1))) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def _inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def _all_exits(model, batch: dict[str, Any], extra: dict[str, Any] | None = None) -> tuple[list[Tensor], dict[str, Any]]:
    state = model.begin(_inputs(batch))
    state.update(extra or {})
    outputs = []
    for k in range(model.num_stages):
        state = model.run_stage(k, state)
        outputs.append(model.exit_output(k, state))
    return outputs, state


def _per_row_loss(model, logits: Tensor, labels: Tensor) -> Tensor:
    if model.config.task == "regression":
        return (logits.squeeze(-1) - labels.to(logits.dtype)).pow(2)
    return F.cross_entropy(logits, labels, reduction="none")


def residual_guides(model, batch: dict[str, Tensor]) -> Tensor:
    """(B, S, T) TR-BERT's residual importance of every token at each of the S selection
    points: |g_r . (h_r - h_s)| with h_s the state entering selection point s, h_r a later
    layer's output and g_r the gradient of the final exit's loss at h_r."""
    reducer, layers = model.reducer, model.reducer.layers
    back = min(model.num_stages - 1, max(layers) + max(1, math.ceil(model.num_stages / 4)))
    mode, reducer.mode = reducer.mode, "off"
    try:
        state = model.begin(_inputs(batch))
        entering: dict[int, Tensor] = {}
        h_back = None
        for k in range(model.num_stages):
            if k in layers:
                entering[k] = state["hidden"].detach()
            state = model.run_stage(k, state)
            if k == back:  # differentiate the loss with respect to this layer's output (params may be frozen)
                h_back = state["hidden"].detach().requires_grad_(True)
                state["hidden"] = h_back
        loss = _per_row_loss(model, model.exit_output(model.num_stages - 1, state), batch["labels"]).sum()
        (grad,) = torch.autograd.grad(loss, [h_back])
    finally:
        reducer.mode = mode
    scores = [torch.einsum("bth,bth->bt", grad, h_back.detach() - entering[s]).abs() for s in layers]
    return torch.stack(scores, 1) * batch["attention_mask"].unsqueeze(1)


def _rewards(losses: Tensor, kept: Tensor, alpha: float, samples: int) -> tuple[Tensor, Tensor]:
    """Rewards and advantages (reward minus the mean of the example's K copies) for
    rows ordered copy-major (row j * B + i is copy j of example i)."""
    rewards = -losses - alpha * kept
    grouped = rewards.view(samples, -1)
    return rewards, (grouped - grouped.mean(0, keepdim=True)).reshape(-1)


def train_trbert(model, samples: Sequence[Any], collate: Callable, cfg: TokenReductionTrainConfig) -> list[dict[str, float]]:
    """TR-BERT's policy and joint phases (see the module docstring); returns the history."""
    torch.manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    batches = _Batches(samples, collate, cfg.batch_size, cfg.seed)
    reducer = model.reducer
    weights = exit_weights(model.config.exit_weights, model.num_stages)

    # policy phase: only the policy networks learn
    trainable = set(map(id, reducer.policy_parameters()))
    frozen = [p for p in model.parameters() if id(p) not in trainable and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(reducer.policy_parameters(), lr=cfg.policy_lr)
    model.train()
    reducer.mode = "sample"
    guided = round(cfg.guide_rate * cfg.policy_steps)
    try:
        for step in tqdm(range(cfg.policy_steps), desc="TR-BERT policy", disable=not progress_enabled(), leave=False):
            batch = batches.next()
            extra: dict[str, Any] = {}
            if step < guided:
                extra["guide"] = residual_guides(model, batch).repeat(cfg.samples, 1, 1).transpose(0, 1)
                imitate = torch.zeros(batch["input_ids"].shape[0] * cfg.samples, dtype=torch.bool)
                imitate[: batch["input_ids"].shape[0]] = True  # one copy of each example imitates
                extra["imitate"] = imitate
            repeated = _repeat(batch, cfg.samples)
            outputs, state = _all_exits(model, repeated, extra)
            with torch.no_grad():
                losses = _per_row_loss(model, outputs[-1], repeated["labels"])
                kept = torch.stack(state["kept_fractions"], 1).mean(1)
                _, advantage = _rewards(losses, kept, cfg.alpha, cfg.samples)
            policy_loss = (advantage * state["select_nll"]).mean()
            optimizer.zero_grad(set_to_none=True)
            policy_loss.backward()
            torch.nn.utils.clip_grad_norm_(reducer.policy_parameters(), cfg.max_grad_norm)
            optimizer.step()
            history.append({"phase": "policy", "step": step + 1, "loss": float(losses.mean()), "kept": float(kept.mean()),
                            "guided": step < guided})
    finally:
        for p in frozen:
            p.requires_grad_(True)

    # joint phase: everything learns, distilled from the model before this phase
    if cfg.joint_steps:
        teacher = copy.deepcopy(model).eval()
        teacher.reducer.mode = "off"
        for p in teacher.parameters():
            p.requires_grad_(False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.joint_lr, weight_decay=0.01)
        for step in tqdm(range(cfg.joint_steps), desc="TR-BERT joint", disable=not progress_enabled(), leave=False):
            batch = batches.next()
            repeated = _repeat(batch, cfg.samples)
            with torch.no_grad():
                target = torch.log_softmax(_all_exits(teacher, batch)[0][-1], -1).repeat(cfg.samples, 1)
            outputs, state = _all_exits(model, repeated)
            per_exit = [-(target.exp() * torch.log_softmax(o, -1)).sum(-1) for o in outputs]  # soft cross-entropy per row
            with torch.no_grad():
                kept = torch.stack(state["kept_fractions"], 1).mean(1)
                _, advantage = _rewards(per_exit[-1].detach(), kept, cfg.alpha, cfg.samples)
            loss = weighted_exit_loss([e.mean() for e in per_exit], weights) + cfg.beta * (advantage * state["select_nll"]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            history.append({"phase": "joint", "step": step + 1, "loss": float(loss.detach()), "kept": float(kept.mean())})
    reducer.mode = "hard"
    model.eval()
    return history


def train_ltp(model, samples: Sequence[Any], collate: Callable, cfg: TokenReductionTrainConfig) -> list[dict[str, float]]:
    """LTP's soft phase (thresholds and model) and hard phase (model, thresholds fixed)."""
    torch.manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    batches = _Batches(samples, collate, cfg.batch_size, cfg.seed)
    reducer = model.reducer
    weights = exit_weights(model.config.exit_weights, model.num_stages)
    thresholds = list(reducer.policy_parameters())
    others = [p for p in model.parameters() if all(p is not t for t in thresholds)]
    model.train()
    for phase, steps in (("soft", cfg.soft_steps), ("hard", cfg.hard_steps)):
        reducer.mode = phase
        groups = [{"params": others, "lr": cfg.lr}]
        if phase == "soft":
            groups.append({"params": thresholds, "lr": cfg.threshold_lr, "weight_decay": 0.0})
        for t in thresholds:
            t.requires_grad_(phase == "soft")
        optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
        for step in tqdm(range(steps), desc=f"LTP {phase}", disable=not progress_enabled(), leave=False):
            batch = batches.next()
            outputs, state = _all_exits(model, batch)
            task = weighted_exit_loss([_per_row_loss(model, o, batch["labels"]).mean() for o in outputs], weights)
            kept = torch.stack(state["soft_masks"] if phase == "soft" else state["kept_fractions"], 1).mean()
            loss = task + (cfg.ltp_lambda * kept if phase == "soft" else 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            history.append({"phase": phase, "step": step + 1, "loss": float(task.detach()), "kept": float(kept.detach())})
    for t in thresholds:
        t.requires_grad_(True)
    reducer.mode = "hard"
    model.eval()
    return history


def train_token_reduction(model, samples: Sequence[Any], collate: Callable, cfg: TokenReductionTrainConfig) -> list[dict[str, float]]:
    if model.reducer is None:
        raise ValueError("model.token_reduction_training needs model.token_reduction")
    if model.reducer.cfg.method == "trbert":
        return train_trbert(model, samples, collate, cfg)
    return train_ltp(model, samples, collate, cfg)

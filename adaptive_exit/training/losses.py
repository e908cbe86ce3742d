"""Multi-exit training objectives.

* joint (PABEE): a weighted mean of every exit's task loss, weights 1..L by default.
* two-stage (DeeBERT): phase 1 trains the backbone and the final exit; phase 2
  freezes them and trains the other exits.
* distill (FastBERT): phase 1 as two-stage; phase 2 trains the other exits to
  match the final exit's distribution (KL divergence, no labels needed).
* romebert (RomeBERT, Geng et al. 2021): one stage. The final exit's task loss plus,
  for every earlier exit i, (1 - gamma) * its task loss + gamma * T^2 * KL(final / T ||
  exit_i / T) against the final exit (detached), with gradient regularization: the
  gradient reaching exit i's logits is scaled by 1 / (L - i), so the shallow exits,
  which have the most layers above them, pull less on the shared backbone.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

SCHEMES = ("joint", "two-stage", "distill", "romebert")
WEIGHT_SCHEMES = ("pabee", "linear", "uniform", "last-heavy")

TaskLoss = Callable[[Tensor, Any], Tensor]
ExitBatch = Callable[[Any, int, int], Any]


def exit_weights(scheme: str | Sequence[float], num_exits: int) -> list[float]:
    """Per-exit loss weights.

    ``pabee``/``linear``: 1, 2, ..., L (deeper exits weigh more, as PABEE).
    ``uniform``: all 1. ``last-heavy``: 0.1 for every exit but the last, which
    gets 1. A list gives the weights explicitly.
    """
    if isinstance(scheme, str):
        if scheme in ("pabee", "linear"):
            return [float(i + 1) for i in range(num_exits)]
        if scheme == "uniform":
            return [1.0] * num_exits
        if scheme == "last-heavy":
            return [0.1] * (num_exits - 1) + [1.0]
        raise ValueError(f"unknown exit weight scheme {scheme!r}; expected one of {WEIGHT_SCHEMES} or a list")
    weights = [float(w) for w in scheme]
    if len(weights) != num_exits:
        raise ValueError(f"exit_weights has {len(weights)} values for {num_exits} exits")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"exit weights must be >= 0 with a positive sum, got {weights}")
    return weights


def weighted_exit_loss(losses: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """sum_i w_i * loss_i / sum_i w_i (exits with weight 0 are skipped)."""
    total = sum(weights)
    return sum(w * loss for w, loss in zip(weights, losses) if w) / total


def distillation_loss(student_logits: Sequence[Tensor], teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over students of KL(teacher || student) at a temperature (teacher detached)."""
    teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    losses = []
    for logits in student_logits:
        student = F.log_softmax(logits / temperature, dim=-1)
        kl = F.kl_div(student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1]), log_target=True, reduction="batchmean")
        losses.append(kl * temperature**2)
    return torch.stack(losses).mean()


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged, with its gradient scaled by ``scale`` on the way back."""
    return _ScaleGradient.apply(x, scale)


def romebert_loss(outputs: Sequence[Tensor], task_loss: Callable[[int, Tensor], Tensor], gamma: float, temperature: float,
                  rescale: bool = True) -> Tensor:
    """RomeBERT's self-distillation with gradient regularization (see the module docstring).

    ``task_loss(k, output)`` scores exit k against the labels. The KL term averages over
    every element of the (batch, classes) table, as the reference code's ``nn.KLDivLoss()``
    does. Regression outputs (one value) distil with squared error to the final exit."""
    num = len(outputs)
    final = outputs[-1]
    teacher = final.detach()
    loss = task_loss(num - 1, final)
    for i, logits in enumerate(outputs[:-1]):
        if rescale:
            logits = scale_gradient(logits, 1.0 / (num - i))
        if final.shape[-1] == 1:
            soft = F.mse_loss(logits, teacher)
        else:
            target = F.log_softmax(teacher / temperature, dim=-1)
            student = F.log_softmax(logits / temperature, dim=-1)
            soft = (target.exp() * (target - student)).mean() * temperature**2  # KLDivLoss(reduction="mean")
        loss = loss + (1.0 - gamma) * task_loss(i, logits) + gamma * soft
    return loss


@runtime_checkable
class HasBackbone(Protocol):
    """A model whose backbone (and final exit) can be frozen while earlier exits train."""

    def backbone_parameters(self) -> Iterable[Tensor]: ...


class MultiExitObjective:
    """Turns every exit's output into one training loss, per scheme and phase.

    ``task_loss(output, batch)`` is the domain's loss for one exit output
    (cross-entropy, MSE, a spectral loss). Phase 1 / 2 only matter for the
    two-stage and distill schemes. ``exit_batch(batch, k, num_exits)`` (optional)
    gives the batch exit k is scored against, for per-exit targets such as the
    intermediate targets of progressive learning; by default every exit shares one.
    """

    def __init__(self, task_loss: TaskLoss, scheme: str = "joint", weights: str | Sequence[float] = "pabee", temperature: float = 1.0,
                 exit_batch: ExitBatch | None = None, distill_weight: float = 0.9, gradient_rescale: bool = True):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown training scheme {scheme!r}; expected one of {SCHEMES}")
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        if not 0 <= distill_weight <= 1:
            raise ValueError(f"distillation weight must be in [0, 1], got {distill_weight}")
        self.task_loss = task_loss
        self.scheme = scheme
        self.weights = weights
        self.temperature = temperature
        self.exit_batch = exit_batch
        self.distill_weight = distill_weight
        self.gradient_rescale = gradient_rescale

    def exit_loss(self, outputs: Sequence[Tensor], batch: Any, k: int) -> Tensor:
        """Task loss of exit k against its own targets."""
        exit_batch = self.exit_batch(batch, k, len(outputs)) if self.exit_batch else batch
        return self.task_loss(outputs[k], exit_batch)

    @property
    def phases(self) -> int:
        return 1 if self.scheme in ("joint", "romebert") else 2

    def phase_at(self, step: int, max_steps: int, first_phase_fraction: float) -> int:
        """The phase of a training step: two-phase schemes train the last exit first."""
        if self.phases == 1:
            return 1
        return 1 if step < round(first_phase_fraction * max_steps) else 2

    def enter_phase(self, phase: int, model: Any) -> None:
        """Phase 2 of a two-phase scheme trains only the earlier exits: the backbone and the
        final exit are frozen."""
        if phase != 2:
            return
        if not isinstance(model, HasBackbone):
            raise ValueError(f"scheme {self.scheme!r} needs model.backbone_parameters() "
                             "(the backbone and final exit, frozen in phase 2)")
        for p in model.backbone_parameters():
            p.requires_grad_(False)

    def __call__(self, outputs: Sequence[Tensor], batch: Any, phase: int = 1) -> Tensor:
        num = len(outputs)
        if self.scheme == "romebert":
            def exit_k_loss(k: int, output: Tensor) -> Tensor:
                exit_batch = self.exit_batch(batch, k, num) if self.exit_batch else batch
                return self.task_loss(output, exit_batch)
            return romebert_loss(outputs, exit_k_loss, self.distill_weight, self.temperature, self.gradient_rescale)
        if self.scheme == "joint":
            weights = exit_weights(self.weights, num)
            return weighted_exit_loss([self.exit_loss(outputs, batch, k) if w else o.new_zeros(()) for k, (o, w) in enumerate(zip(outputs, weights))], weights)
        if phase == 1:
            return self.exit_loss(outputs, batch, num - 1)
        if num < 2:
            raise ValueError("a second training phase needs at least two exits")
        if self.scheme == "two-stage":
            weights = exit_weights(self.weights, num)[:-1]
            return weighted_exit_loss([self.exit_loss(outputs, batch, k) for k in range(num - 1)], weights)
        return distillation_loss(outputs[:-1], outputs[-1], self.temperature)

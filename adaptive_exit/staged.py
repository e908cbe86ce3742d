"""The staged-model contract and the result of an early-exit run.

A model is a sequence of stages. ``begin`` prepares the batch (embeddings, STFT,
encoder), ``run_stage(k)`` advances every row of the state by one stage and
``exit_output(k)`` reads that stage's exit head. ``select`` keeps only some rows
(compaction), so samples that have exited stop costing compute.

Contract details that the runner relies on:

* ``exit_output`` returns a tensor whose first dimension is the batch and whose
  trailing shape does not change when rows are dropped with ``select``.
* Rows are independent: the output of a row never depends on other rows, padding
  included. That is what makes compaction exact.
* Padded positions of an exit output must be neutral for the policies used
  (zeros for spectra, for example), so that they never influence a decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

State = Any


@runtime_checkable
class StagedModel(Protocol):
    """What the runner, traces and training need from a model."""

    num_stages: int

    def begin(self, batch: Any) -> State: ...

    def run_stage(self, k: int, state: State) -> State: ...

    def exit_output(self, k: int, state: State) -> Tensor: ...

    def select(self, state: State, keep: Tensor) -> State: ...

    def stage_cost(self, k: int) -> float: ...


def stage_costs(model: StagedModel) -> list[float]:
    """Cost of every stage, in the model's own unit."""
    costs = [float(model.stage_cost(k)) for k in range(model.num_stages)]
    if any(c < 0 for c in costs):
        raise ValueError(f"stage costs must be non-negative, got {costs}")
    return costs


def all_exit_outputs(model: StagedModel, batch: Any) -> list[Tensor]:
    """Run every stage on the whole batch and return each stage's exit output.

    This is the training forward pass (gradients flow) and the trace recorder's.
    """
    state = model.begin(batch)
    outputs = []
    for k in range(model.num_stages):
        state = model.run_stage(k, state)
        outputs.append(model.exit_output(k, state))
    return outputs


def select_rows(tree: Any, keep: Tensor) -> Any:
    """Index the batch dimension of every tensor in a nested dict/list/tuple.

    Non-tensor leaves (ints, strings, None) are returned unchanged. Useful for
    implementing ``StagedModel.select`` and policy-state selection.
    """
    if isinstance(tree, Tensor):
        return tree.index_select(0, keep.to(tree.device)) if tree.dim() > 0 else tree
    if isinstance(tree, dict):
        return {key: select_rows(value, keep) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(select_rows(value, keep) for value in tree)
    return tree


@dataclass
class ExitResult:
    """Per-sample result of early-exit inference.

    ``exit_stage`` is the 0-based index of the stage whose exit was used, so a
    sample used ``exit_stage + 1`` stages. ``cost`` is the compute actually spent
    on the sample in the model's cost unit (in batch-sync mode, every sample pays
    for the stages the whole batch ran).
    """

    output: Tensor
    exit_stage: Tensor
    cost: Tensor
    num_stages: int
    full_cost: float

    @property
    def stages_used(self) -> Tensor:
        return self.exit_stage + 1

    @property
    def mean_stages(self) -> float:
        return float(self.stages_used.double().mean())

    @property
    def speedup(self) -> float:
        """PABEE's speed-up: num_stages / mean stages used."""
        return self.num_stages / self.mean_stages

    @property
    def cost_fraction(self) -> float:
        """Mean cost as a fraction of the full model's cost."""
        return float(self.cost.double().mean()) / self.full_cost

    @property
    def saved_fraction(self) -> float:
        """Fraction of compute saved (1 - cost fraction); not the speed-up."""
        return 1.0 - self.cost_fraction

    def histogram(self) -> list[int]:
        """Number of samples exiting at each stage."""
        return torch.bincount(self.exit_stage.cpu(), minlength=self.num_stages).tolist()

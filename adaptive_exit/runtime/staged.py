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

Optional capabilities are declared as protocols next to the contract and asked for by
type (``isinstance(model, PerSampleCosts)``), never by probing attributes:

* :class:`PerSampleCosts`: a model whose cost depends on the input's content (token
  reduction). Results, traces and budgets then count those per-row costs, and a
  fraction of the full model is ``cost / reference_cost``.
* :class:`StreamingModel`: a causal model whose stages run on consecutive pieces of a
  stream with a memory carried between pieces (streaming speech enhancement).
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


@runtime_checkable
class PerSampleCosts(Protocol):
    """Per-row costs: ``sample_cost(k, state)`` is each row's cost of stage k (e.g. FLOPs
    from the tokens it kept); ``reference_cost(state)``, called on the state ``begin``
    returns, each row's cost of the full model without any reduction."""

    def sample_cost(self, k: int, state: State) -> Tensor: ...

    def reference_cost(self, state: State) -> Tensor: ...


@runtime_checkable
class StreamingModel(Protocol):
    """A causal staged model that runs on consecutive pieces of a stream.

    ``new_memory()`` is an empty memory (silence before the start); ``stream_begin`` and
    ``stream_stage`` are ``begin``/``run_stage`` on one piece, reading and updating that
    memory; ``skip_stages(first, state, memory)`` tells the memory that this piece stopped
    before stage ``first`` (what later pieces should see in place of the skipped stages).
    Running every piece to full depth must equal running the whole stream at once.
    """

    num_stages: int

    def new_memory(self) -> Any: ...

    def stream_begin(self, batch: Any, memory: Any) -> State: ...

    def stream_stage(self, k: int, state: State, memory: Any) -> State: ...

    def skip_stages(self, first: int, state: State, memory: Any) -> None: ...


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
    return run_all_stages(model, batch)[0]


def run_all_stages(model: StagedModel, batch: Any) -> tuple[list[Tensor], Tensor | None, Tensor | None]:
    """Every stage's exit output, and for models that report them, each row's cumulative
    cost after every stage (B, L) and its full-model reference cost (B,)."""
    state = model.begin(batch)
    counting = isinstance(model, PerSampleCosts)
    reference = model.reference_cost(state).double() if counting else None
    outputs, costs = [], []
    for k in range(model.num_stages):
        state = model.run_stage(k, state)
        outputs.append(model.exit_output(k, state))
        if counting:
            costs.append(model.sample_cost(k, state).double())
    cumulative = torch.stack(costs, 1).cumsum(1) if counting else None
    return outputs, cumulative, reference


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
    reference_cost: Tensor | None = None  # per-sample full-model cost, for models with per-sample costs

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
    def fractions(self) -> Tensor:
        """(N,) each sample's cost as a fraction of its full-model cost."""
        if self.reference_cost is not None:
            return self.cost.double() / self.reference_cost.double().clamp_min(1e-12)
        return self.cost.double() / self.full_cost

    @property
    def cost_fraction(self) -> float:
        """Mean cost as a fraction of the full model's cost."""
        return float(self.fractions.mean())

    @property
    def saved_fraction(self) -> float:
        """Fraction of compute saved (1 - cost fraction); not the speed-up."""
        return 1.0 - self.cost_fraction

    def histogram(self) -> list[int]:
        """Number of samples exiting at each stage."""
        return torch.bincount(self.exit_stage.cpu(), minlength=self.num_stages).tolist()

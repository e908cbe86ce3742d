"""Record every stage's exit output once; replay any policy offline.

Policies are deterministic functions of a sample's sequence of exit outputs, so
one full pass over a dataset is enough to evaluate every policy and threshold:
sweeps, the oracle and budget calibration replay the stored outputs in
milliseconds. Replay uses the same ``policy.step`` calls as the runner and so
agrees with it sample by sample.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from adaptive_exit import io
from adaptive_exit.runtime.distributed import Shard, current_shard
from adaptive_exit.policies import ExitPolicy, build_policy
from adaptive_exit.runtime.runner import pad_cat
from adaptive_exit.runtime.threads import progress_enabled
from adaptive_exit.runtime.staged import ExitResult, StagedModel, run_all_stages, stage_costs

logger = logging.getLogger(__name__)

TRACE_FORMAT = 1


@dataclass
class Trace:
    """Every stage's exit output for a dataset.

    ``outputs``: (N, L, ...) exit outputs; ``targets``: (N, ...) or None;
    ``quality``: metric name -> (N, L) per-sample, per-stage quality (e.g. PESQ),
    computed once and reused by every sweep. For models that report per-sample costs
    (token reduction): ``counted_costs`` (N, L), each sample's cumulative cost after each
    stage, and ``reference_costs`` (N,), its cost in the full unreduced model.
    """

    outputs: Tensor
    stage_costs: list[float]
    targets: Tensor | None = None
    quality: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    counted_costs: Tensor | None = None
    reference_costs: Tensor | None = None

    def __post_init__(self) -> None:
        if self.outputs.dim() < 2:
            raise ValueError(f"trace outputs must be (N, stages, ...), got shape {tuple(self.outputs.shape)}")
        if self.outputs.shape[1] != len(self.stage_costs):
            raise ValueError(f"trace has {self.outputs.shape[1]} stages but {len(self.stage_costs)} stage costs")
        for name, q in self.quality.items():
            if tuple(q.shape) != tuple(self.outputs.shape[:2]):
                raise ValueError(f"quality {name!r} must have shape {tuple(self.outputs.shape[:2])}, got {tuple(q.shape)}")
        if (self.counted_costs is None) != (self.reference_costs is None):
            raise ValueError("a trace holds per-sample costs and their reference costs together, or neither")
        if self.counted_costs is not None and tuple(self.counted_costs.shape) != tuple(self.outputs.shape[:2]):
            raise ValueError(f"counted_costs must have shape {tuple(self.outputs.shape[:2])}, got {tuple(self.counted_costs.shape)}")

    @property
    def num_samples(self) -> int:
        return self.outputs.shape[0]

    @property
    def num_stages(self) -> int:
        return self.outputs.shape[1]

    @property
    def full_cost(self) -> float:
        return float(sum(self.stage_costs))

    def stage_output(self, exit_stage: Tensor) -> Tensor:
        """Each sample's output at its own exit stage."""
        return self.outputs[torch.arange(self.num_samples), exit_stage]

    def result(self, exit_stage: Tensor, with_output: bool = True) -> ExitResult:
        """The result of exiting each sample at ``exit_stage``: its output and its cost
        (per-sample costs when the trace has them, else the stage costs). ``with_output=False``
        leaves the output empty, for callers that need only costs (speech outputs are whole
        spectra: gathering them dominated risk calibration over many splits)."""
        if self.counted_costs is not None:
            cost = self.counted_costs[torch.arange(self.num_samples), exit_stage]
        else:
            cost = torch.tensor(self.stage_costs, dtype=torch.float64).cumsum(0)[exit_stage]
        output = self.stage_output(exit_stage) if with_output else self.outputs.new_empty(0)
        return ExitResult(output, exit_stage, cost, self.num_stages, self.full_cost,
                          reference_cost=self.reference_costs)

    def subset(self, index: Tensor | list[int]) -> "Trace":
        index = torch.as_tensor(index, dtype=torch.long)
        return Trace(
            outputs=self.outputs[index],
            stage_costs=list(self.stage_costs),
            targets=None if self.targets is None else self.targets[index],
            quality={k: v[index] for k, v in self.quality.items()},
            meta=dict(self.meta),
            counted_costs=None if self.counted_costs is None else self.counted_costs[index],
            reference_costs=None if self.reference_costs is None else self.reference_costs[index],
        )

    def save(self, path: str | os.PathLike) -> None:
        io.torch_save(path, {
            "format": TRACE_FORMAT,
            "outputs": self.outputs,
            "stage_costs": list(self.stage_costs),
            "targets": self.targets,
            "quality": dict(self.quality),
            "meta": dict(self.meta),
            "counted_costs": self.counted_costs,
            "reference_costs": self.reference_costs,
        })

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":
        if not os.path.exists(path):
            raise FileNotFoundError(f"trace file not found: {path}")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
            raise ValueError(f"cannot read trace file {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != TRACE_FORMAT:
            raise ValueError(f"{path} is not an adaptive-exit trace (format {TRACE_FORMAT})")
        return cls(data["outputs"], data["stage_costs"], data["targets"], data["quality"], data["meta"],
                   data.get("counted_costs", data.get("sample_costs")), data.get("reference_costs"))  # sample_costs: before 0.2


QualityFn = Callable[[Tensor, Any], dict[str, Tensor]]


@torch.no_grad()
def record_trace(
    model: StagedModel,
    batches: Iterable[Any],
    targets: Callable[[Any], Tensor] | None = None,
    quality: QualityFn | None = None,
    pad_value: float | Tensor = 0.0,
    target_pad_value: float = 0.0,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    shard: Shard | None = None,
) -> Trace:
    """Run every stage on every batch and store the exit outputs.

    ``targets(batch)`` gives the batch's targets; ``quality(outputs, batch)`` gets
    the (B, L, ...) stage outputs and returns name -> (B, L) quality. Outputs of
    different batches are padded with ``pad_value`` to a common shape (a tensor:
    broadcast over the last dims, see ``pad_cat``), targets with ``target_pad_value``.

    Under a multi-process launch, ``batches`` must be a sequence: batch b is run by
    rank ``b % world`` and every rank returns the whole trace, identical to a
    single-process recording.
    """
    shard = shard or current_shard()
    progress = progress and progress_enabled()
    record = lambda batch: _record_batch(model, batch, targets, quality)  # noqa: E731
    if shard.distributed:
        if not isinstance(batches, Sequence):
            raise TypeError("sharded trace recording needs a sequence of batches (len and indexing)")
        mine = [b for b in range(len(batches)) if shard.owns(b)]
        local = {b: record(batches[b]) for b in tqdm(mine, desc=f"recording traces (rank {shard.rank})", disable=not progress, leave=False)}
        parts = shard.gather(local, len(batches))
    else:
        parts = [record(batch) for batch in tqdm(batches, desc="recording traces", disable=not progress, leave=False)]
    if not parts:
        raise ValueError("cannot record a trace over an empty dataset")
    target_list = [p[1] for p in parts if p[1] is not None]
    names = parts[0][2].keys()
    counted = parts[0][3] is not None
    return Trace(
        outputs=pad_cat([p[0] for p in parts], value=pad_value),
        stage_costs=stage_costs(model),
        targets=pad_cat(target_list, value=target_pad_value) if target_list else None,
        quality={name: torch.cat([p[2][name] for p in parts]) for name in names},
        meta=dict(meta or {}),
        counted_costs=torch.cat([p[3] for p in parts]) if counted else None,
        reference_costs=torch.cat([p[4] for p in parts]) if counted else None,
    )


def _record_batch(model: StagedModel, batch: Any, targets: Callable | None, quality: QualityFn | None) -> tuple:
    outputs, costs, reference = run_all_stages(model, batch)
    stacked = torch.stack(outputs, dim=1).float().cpu()
    batch_targets = targets(batch) if targets is not None else None
    batch_targets = torch.as_tensor(batch_targets).cpu() if batch_targets is not None else None
    scores = (quality(stacked, batch) if quality else None) or {}
    return (stacked, batch_targets, {name: torch.as_tensor(v, dtype=torch.float64) for name, v in scores.items()},
            None if costs is None else costs.cpu(), None if reference is None else reference.cpu())


def replay(trace: Trace, policy: ExitPolicy | str | dict) -> ExitResult:
    """Apply a policy to recorded outputs: the runner's decisions without the model."""
    policy = build_policy(policy)
    num, last = trace.num_samples, trace.num_stages - 1
    state = policy.init(num, trace.stage_costs, trace.outputs.device)
    exit_stage = torch.full((num,), last, dtype=torch.long)
    exited = torch.zeros(num, dtype=torch.bool)
    for k in range(trace.num_stages):
        done = policy.step(k, trace.outputs[:, k], state)
        newly = done & ~exited
        exit_stage[newly] = k
        exited |= done
        if bool(exited.all()):
            break
    return trace.result(exit_stage)

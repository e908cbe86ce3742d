"""Sharded inference for processes started by ``torchrun`` or ``accelerate launch``.

Work is split into ordered jobs (batches, files, input chunks); job j runs on
rank ``j % world``. Each job is exactly what a single process would run, so a
sharded evaluation is bit-identical to a single-process one; the results are
gathered back into job order, each job once (no padding duplicates, nothing
lost), and only the main process writes reports or prints.

With one process (no launcher) every helper degrades to plain local calls, and
``map_ordered`` streams: results come out as soon as each job finishes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
R = TypeVar("R")


def launched_world_size() -> int:
    """Number of processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Shard:
    """This process's place among the launched ones."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def owns(self, job: int) -> bool:
        return job % self.world == self.rank

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, local: dict[int, Any], num_jobs: int) -> list[Any]:
        """Every rank's ``{job index: result}`` merged into a list in job order.

        Raises if a job is missing or produced twice, so a sharding bug can never
        silently drop or duplicate samples.
        """
        if self.distributed:
            parts: list[dict[int, Any] | None] = [None] * self.world
            dist.all_gather_object(parts, local)
        else:
            parts = [local]
        merged: dict[int, Any] = {}
        for part in parts:
            for job, value in (part or {}).items():
                if job in merged:
                    raise RuntimeError(f"job {job} was produced by two processes")
                merged[job] = value
        missing = sorted(set(range(num_jobs)) - set(merged))
        if missing:
            raise RuntimeError(f"jobs {missing[:10]} were produced by no process")
        return [merged[j] for j in range(num_jobs)]


def current_shard() -> Shard:
    """The shard of this process, joining the launcher's process group on first use.

    Uses Accelerate's process state (gloo on CPU, NCCL on GPU), the same group the
    training loop uses, so training and evaluation can share one launch.
    """
    world = launched_world_size()
    if world <= 1:
        return Shard()
    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
    return Shard(dist.get_rank(), dist.get_world_size())


def map_ordered(jobs: Iterable[T], fn: Callable[[T], R], shard: Shard | None = None) -> Iterator[R]:
    """``fn`` over ``jobs`` sharded by rank; results in job order on the main process.

    One process: a lazy, streaming map. Several: the jobs are materialised, each
    rank runs its own, and the main process yields all results in order (the
    other ranks yield nothing).
    """
    shard = shard or current_shard()
    if not shard.distributed:
        for job in jobs:
            yield fn(job)
        return
    jobs = list(jobs)
    local = {j: fn(job) for j, job in enumerate(jobs) if shard.owns(j)}
    results = shard.gather(local, len(jobs))
    if shard.is_main:
        yield from results

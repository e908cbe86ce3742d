"""Wall-clock timing shared by evaluation, cost models and the benchmarks."""
from __future__ import annotations

import statistics
import time
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued GPU work, so a clock read after it counts it."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], T], repeats: int, warmup: Callable[[], object] | None = None,
                device: torch.device | str | None = None) -> tuple[float, T]:
    """Median seconds of ``fn()`` over ``repeats`` (at least 1) calls after one untimed
    warm-up call (``warmup``, e.g. the same work on one batch; default ``fn`` itself),
    and the result of the last call. On a CUDA ``device`` each call is synchronised."""
    (warmup or fn)()
    seconds, result = [], None
    for _ in range(max(1, repeats)):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result

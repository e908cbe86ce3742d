"""Wall-clock timing shared by evaluation and the benchmarks."""
from __future__ import annotations

import statistics
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def median_time(fn: Callable[[], T], repeats: int, warmup: Callable[[], object] | None = None) -> tuple[float, T]:
    """Median seconds of ``fn()`` over ``repeats`` (at least 1) calls after one untimed
    warm-up call (``warmup``, e.g. the same work on one batch; default ``fn`` itself),
    and the result of the last call."""
    (warmup or fn)()
    seconds, result = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result

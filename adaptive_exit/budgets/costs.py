"""Cost models for any StagedModel: FLOPs and latency per stage, per input size.

* FLOPs are counted with ``torch.utils.flop_counter`` while running each stage (and
  its exit head) on a one-sample batch of the given size: exact for that size.
* Latency is the median wall-clock of each stage over repeats after a warm-up, on
  the current device and thread count, for a one-sample batch (a request).

Costs depend on the input size (tokens, audio frames), so a :class:`CostModel`
profiles one representative input per size and caches the result (in memory and,
if given, in a JSON file next to the model). FLOPs are profiled for every size
present; latency, which needs repeats, at a few sizes, interpolated linearly in
between (stage latency is close to linear in tokens/frames at these lengths).

:mod:`.units` turns a profile into an (N, L) table: the cumulative cost of sample i
when it exits after stage k, in a unit (``stages``, ``fraction``, ``flops``, ``ms``,
``rtf``).
"""
from __future__ import annotations

import logging
import os
import platform
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from adaptive_exit import io
from adaptive_exit.runtime.staged import StagedModel
from adaptive_exit.runtime.timing import median_time

logger = logging.getLogger(__name__)


def load_per_core() -> float:
    """The 1-minute load average per CPU core (0 where the platform has none)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return 0.0


def _device(model: StagedModel) -> torch.device:
    """Where the model's parameters live (CPU for a parameter-free model)."""
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


@contextmanager
def parameters_frozen(module: Any) -> Iterator[None]:
    """Parameters without requires_grad for a block: FlopCounterMode's module tracker hooks
    the autograd graph of tensors that require grad, which fails under no_grad for some
    models (DeBERTa's relative embeddings)."""
    params = [p for p in module.parameters() if p.requires_grad] if hasattr(module, "parameters") else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def flop_counter() -> FlopCounterMode:
    """``torch.utils.flop_counter.FlopCounterMode`` that also counts attention on CPU
    (scaled_dot_product_attention runs ``_scaled_dot_product_flash_attention_for_cpu``
    there, which the stock counter does not know, so attention would count as 0)."""
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_sdpa_flop
    return FlopCounterMode(display=False, custom_mapping=mapping)


@torch.no_grad()
def count_stage_flops(model: StagedModel, batch: Any) -> list[float]:
    """FLOPs of each stage (including its exit head) per sample of ``batch``."""
    with parameters_frozen(model):
        return _count_stage_flops(model, batch)


def _count_stage_flops(model: StagedModel, batch: Any) -> list[float]:
    size = None
    counts = []
    with flop_counter() as counter:
        state = model.begin(batch)
    begin_flops = counter.get_total_flops()
    for k in range(model.num_stages):
        with flop_counter() as counter:
            state = model.run_stage(k, state)
            out = model.exit_output(k, state)
        size = size or out.shape[0]
        counts.append(float(counter.get_total_flops()))
    counts[0] += float(begin_flops)  # embeddings / front end are paid by the first stage
    return [c / size for c in counts]


@torch.no_grad()
def time_stages(model: StagedModel, batch: Any, repeats: int = 10, warmup: int = 2) -> list[float]:
    """Median milliseconds of each stage (with its exit head) on ``batch``; the
    front end (``begin``) is charged to the first stage. Each stage is timed on the
    state the previous one produced."""
    device = _device(model)
    inputs = [model.begin(batch)]
    for k in range(model.num_stages - 1):
        inputs.append(model.run_stage(k, _copy(inputs[-1])))

    def stage(k: int) -> None:
        state = model.run_stage(k, _copy(inputs[k]))
        model.exit_output(k, state)

    def timed(fn: Callable[[], object]) -> float:
        return 1000.0 * median_time(fn, repeats, warmup=lambda: [fn() for _ in range(max(1, warmup))], device=device)[0]

    begin = timed(lambda: model.begin(batch))
    return [timed(lambda k=k: stage(k)) + (begin if k == 0 else 0.0) for k in range(model.num_stages)]


def _copy(state: Any) -> Any:
    """A shallow copy, so a stage that writes into its state dict leaves the stored input intact."""
    return dict(state) if isinstance(state, dict) else state


class CostModel:
    """Per-stage FLOPs and latency of one model as functions of input size, cached.

    ``make_batch(size)`` returns a one-sample batch whose input size is ``size``.
    ``cache_file`` (optional) persists profiles across runs. Latency entries are keyed
    by device and thread count (they are only valid there) and record the machine's
    load average when they were measured: a profile measured on a busy machine is
    re-measured when the machine is quieter now, and ``remeasure=True`` always
    measures again.
    """

    BUSY = 0.5  # load per core above which a latency profile counts as measured under load

    def __init__(self, model: StagedModel, make_batch: Callable[[int], Any], cache_file: str | os.PathLike | None = None,
                 repeats: int = 10, warmup: int = 2, remeasure: bool = False):
        self.model, self.make_batch = model, make_batch
        self.cache_file, self.repeats, self.warmup = cache_file, repeats, warmup
        self.remeasure = remeasure
        self._fresh: set[str] = set()
        self.cache: dict[str, Any] = {}
        if cache_file and os.path.exists(cache_file):
            try:
                self.cache = io.read_json(cache_file)
            except (ValueError, OSError):
                self.cache = {}  # a corrupt cache is only a cache: profile again
            if not isinstance(self.cache, dict):
                self.cache = {}

    def _device_key(self) -> str:
        device = _device(self.model)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
        return f"{device.type}:{name}:threads={torch.get_num_threads()}"

    def _store(self, key: str, value: Any) -> None:
        self.cache[key] = value
        self._fresh.add(key)
        if self.cache_file:
            with io.locked(self.cache_file):  # several calibrations may share a model folder
                on_disk = {}
                if os.path.exists(self.cache_file):
                    try:
                        on_disk = io.read_json(self.cache_file)
                    except (ValueError, OSError):
                        on_disk = {}
                io.write_json(self.cache_file, {**(on_disk if isinstance(on_disk, dict) else {}), key: value})

    def flops(self, size: int) -> list[float]:
        key = f"flops/size={int(size)}"
        if key not in self.cache:
            self._store(key, count_stage_flops(self.model, self.make_batch(int(size))))
        return self.cache[key]

    def latency_ms(self, size: int) -> list[float]:
        key = f"ms/{self._device_key()}/size={int(size)}"
        entry = self.cache.get(key)
        if key not in self._fresh and self._stale(entry):
            entry = {"ms": time_stages(self.model, self.make_batch(int(size)), self.repeats, self.warmup),
                     "load_per_core": load_per_core(), "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
            if entry["load_per_core"] > self.BUSY:
                logger.warning("latency measured under load (%.2f per core): expect it to be high; "
                               "calibrate again with --remeasure on an idle machine", entry["load_per_core"])
            self._store(key, entry)
        return entry["ms"] if isinstance(entry, dict) else entry

    def _stale(self, entry: Any) -> bool:
        """Measure again: nothing cached, asked to, an old-format entry, or measured
        under load that has since gone."""
        if entry is None or self.remeasure or not isinstance(entry, dict):
            return True
        then, now = entry.get("load_per_core", 0.0), load_per_core()
        return then > self.BUSY and now < then / 2

    def latency_table(self, sizes: Sequence[int], points: int = 4) -> np.ndarray:
        """(len(sizes), L) per-stage latency, measured at ``points`` size quantiles, interpolated."""
        sizes = np.asarray(sizes, dtype=np.float64)
        anchors = sorted({int(q) for q in np.quantile(sizes, np.linspace(0, 1, points), method="nearest")})
        measured = np.array([self.latency_ms(a) for a in anchors])  # (A, L)
        if len(anchors) == 1:
            return np.repeat(measured, len(sizes), axis=0)
        table = np.empty((len(sizes), measured.shape[1]))
        for k in range(measured.shape[1]):
            slope, intercept = np.polyfit(anchors, measured[:, k], 1)
            table[:, k] = np.interp(sizes, anchors, measured[:, k], left=np.nan, right=np.nan)
            outside = np.isnan(table[:, k])
            table[outside, k] = intercept + slope * sizes[outside]
        return np.maximum(table, 0.0)

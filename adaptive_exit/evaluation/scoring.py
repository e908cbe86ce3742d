"""Scoring recorded traces: a policy's quality from each sample's exit stage, and the oracle exit."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from adaptive_exit.evaluation.metrics import Metric, get_metric, is_registered, known_metrics
from adaptive_exit.runtime.traces import Trace


def metric_for(trace: Trace, name: str) -> Metric:
    """The registered metric ``name``; a quality stored in the trace under a name nobody
    registered counts as higher-is-better."""
    if is_registered(name):
        return get_metric(name)
    if name in trace.quality:
        return Metric(name, stored=True)
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(known_metrics())}"
                     + (f" and the trace's stored quality {sorted(trace.quality)}" if trace.quality else ""))


def score(trace: Trace, exit_stage: Tensor, metric: str) -> float:
    """Quality of the outputs chosen by ``exit_stage`` under ``metric``.

    Per-sample quality stored in the trace (PESQ, SI-SDR, ...) is averaged over
    the samples where it is defined (NaN-flagged samples are left out).
    """
    if metric in trace.quality:
        values = trace.quality[metric][torch.arange(trace.num_samples), exit_stage]
        valid = ~torch.isnan(values)
        return float(values[valid].mean()) if bool(valid.any()) else float("nan")
    found = metric_for(trace, metric)
    if found.compute is None:
        raise ValueError(f"metric {metric!r} is stored per sample by its domain, and this trace does not hold it")
    if trace.targets is None:
        raise ValueError(f"metric {metric!r} needs targets, and the trace has none")
    return found.compute(trace.stage_output(exit_stage), trace.targets)


def per_sample_quality(trace: Trace, metric: str) -> Tensor:
    """(N, L) per-sample quality, higher is better; used for the oracle. A metric
    without a per-sample form is refused (an oracle built on a proxy it does not
    declare could score below the full model)."""
    if metric in trace.quality:
        q = trace.quality[metric].double()
        q = q if metric_for(trace, metric).higher_is_better else -q
        return torch.nan_to_num(q, nan=-math.inf)
    found = metric_for(trace, metric)
    if found.per_sample is None:
        raise ValueError(f"metric {metric!r} has no per-sample form, so the oracle cannot pick a stage per sample "
                         "by it; register it with per_sample=... or put another metric first in eval.metrics")
    if trace.targets is None:
        raise ValueError("the oracle needs targets or per-stage quality in the trace")
    return found.per_sample(trace.outputs, trace.targets).double()


def oracle_exit_stage(trace: Trace, metric: str) -> Tensor:
    """Per sample, the earliest stage with the best quality (the upper bound)."""
    quality = per_sample_quality(trace, metric)
    best = quality.amax(dim=1, keepdim=True)
    is_best = quality >= best
    return is_best.double().argmax(dim=1)  # first True


# --------------------------------------------------------------------------- rows

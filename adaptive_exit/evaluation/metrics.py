"""Metrics as objects: each knows its direction and, where it has one, its per-sample form.

A :class:`Metric` scores the outputs a policy chose (``compute(outputs, targets)``,
corpus level), says whether higher is better, and may give a per-sample,
per-stage form (``per_sample(outputs (N, L, ...), targets) -> (N, L)``, higher is
better) that the oracle uses to pick each sample's best stage. A metric without a
per-sample form cannot drive the oracle, and says so.

Metrics that are computed once per utterance and stage and stored in a trace
(PESQ, SI-SDR: ``Trace.quality``) are registered with ``stored=True``: their
values come from the trace, and they are their own per-sample form.

The numbers come from scikit-learn and SciPy, not hand-written code. Domains add
theirs with :func:`register_metric` (e.g. entity F1 for sequence labeling).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from torch import Tensor

CorpusFn = Callable[[Tensor, Tensor], float]
PerSampleFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Metric:
    """A named quality measure with its direction.

    ``compute(outputs (N, ...), targets (N, ...)) -> float``; ``per_sample``
    (optional) ``(outputs (N, L, ...), targets) -> (N, L)``, higher is better
    whatever the metric's own direction; ``stored``: values live in
    ``Trace.quality`` (computed per utterance and stage by the domain).
    """

    name: str
    compute: CorpusFn | None = None
    per_sample: PerSampleFn | None = None
    higher_is_better: bool = True
    stored: bool = False
    description: str = ""
    bounds: tuple[float, float] | None = None  # the per-sample quality's range, for risk-controlled calibration

    def key(self, value: float) -> float:
        """A number where larger always means better (for max() and sorting)."""
        return value if self.higher_is_better else -value

    def better(self, a: float, b: float) -> bool:
        """Is ``a`` strictly better than ``b``? NaN is never better."""
        if math.isnan(a):
            return False
        return math.isnan(b) or self.key(a) > self.key(b)

    def drop(self, reference: float, value: float) -> float:
        """How much worse ``value`` is than ``reference`` (negative: better)."""
        return self.key(reference) - self.key(value)


_REGISTRY: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Make a metric nameable in recipes (``eval.metrics``); a later one of the same
    name replaces the earlier (a domain may refine a core metric)."""
    if not isinstance(metric, Metric):
        raise TypeError(f"register_metric takes a Metric, got {type(metric).__name__}")
    _REGISTRY[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_metric(name: str) -> Metric:
    if name not in _REGISTRY:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def known_metrics() -> list[str]:
    return sorted(_REGISTRY)


def is_registered(name: str) -> bool:
    return name in _REGISTRY


# --------------------------------------------------------------------------- helpers

def _labels(outputs: Tensor) -> np.ndarray:
    return outputs.argmax(-1).reshape(-1).cpu().numpy()


def _values(outputs: Tensor) -> np.ndarray:
    """Regression outputs (N,) or (N, 1) as float64."""
    return outputs.reshape(outputs.shape[0], -1)[:, 0].double().cpu().numpy()


def _targets(targets: Tensor) -> np.ndarray:
    return targets.reshape(-1).cpu().numpy()


def correct_per_sample(outputs: Tensor, targets: Tensor) -> Tensor:
    """(N, L): 1 where stage k's argmax is the target (the share of right positions for
    token outputs). The oracle's per-sample form of every classification metric: a
    sample that is right can only help accuracy, F1 or MCC."""
    right = outputs.argmax(-1) == targets.unsqueeze(1)
    return right.reshape(outputs.shape[0], outputs.shape[1], -1).double().mean(-1)


def negative_squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """(N, L): -(prediction - target)^2, the per-sample form of regression metrics."""
    values = outputs.reshape(outputs.shape[0], outputs.shape[1], -1)[..., 0].double()
    return -(values - targets.double().reshape(-1, 1)).pow(2)


def _nan_if_constant(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], float]:
    """Correlations of a constant series are undefined: NaN, without SciPy's warning."""
    def wrapped(x: np.ndarray, y: np.ndarray) -> float:
        if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
            return math.nan
        return float(fn(x, y))
    return wrapped


def _accuracy(outputs: Tensor, targets: Tensor) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(_targets(targets), _labels(outputs)))


def _f1(average: str) -> CorpusFn:
    def compute(outputs: Tensor, targets: Tensor) -> float:
        from sklearn.metrics import f1_score

        return float(f1_score(_targets(targets), _labels(outputs), average=average, zero_division=0))
    return compute


def _mcc(outputs: Tensor, targets: Tensor) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(_targets(targets), _labels(outputs)))


def _mse(outputs: Tensor, targets: Tensor) -> float:
    from sklearn.metrics import mean_squared_error

    return float(mean_squared_error(_targets(targets).astype(np.float64), _values(outputs)))


def _correlation(kind: str) -> CorpusFn:
    def compute(outputs: Tensor, targets: Tensor) -> float:
        from scipy import stats

        fn = stats.pearsonr if kind == "pearson" else stats.spearmanr
        return _nan_if_constant(lambda x, y: fn(x, y)[0])(_values(outputs), _targets(targets).astype(np.float64))
    return compute


for _metric in (
    Metric("accuracy", _accuracy, correct_per_sample, bounds=(0.0, 1.0), description="share of samples whose argmax is the label"),
    Metric("f1", _f1("binary"), correct_per_sample, description="F1 of class 1 (binary tasks)"),
    Metric("f1_macro", _f1("macro"), correct_per_sample, description="unweighted mean of per-class F1"),
    Metric("mcc", _mcc, correct_per_sample, description="Matthews correlation coefficient"),
    Metric("mse", _mse, negative_squared_error, higher_is_better=False, description="mean squared error (regression)"),
    Metric("pearson", _correlation("pearson"), negative_squared_error, description="Pearson correlation (regression)"),
    Metric("spearman", _correlation("spearman"), negative_squared_error, description="Spearman rank correlation (regression)"),
):
    register_metric(_metric)

"""Sweeps over recorded traces: quality-vs-cost rows for policy families, static truncation,
the oracle, the Pareto front, and the report that holds them."""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch

from adaptive_exit.evaluation.metrics import Metric
from adaptive_exit.policies import Budget, ExitPolicy, build_policy
from adaptive_exit.runtime.staged import ExitResult
from adaptive_exit.runtime.traces import Trace, replay

from .scoring import metric_for, oracle_exit_stage, score

logger = logging.getLogger(__name__)


@dataclass
class Row:
    """One operating point: a policy (or baseline) with its quality and cost."""

    name: str
    family: str
    param: Any
    metrics: dict[str, float]
    mean_stages: float
    speedup: float
    cost_fraction: float
    saved_fraction: float
    histogram: list[int]
    pareto: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("metrics", "histogram", "extra")}
        out.update(self.metrics)
        out["histogram"] = " ".join(str(h) for h in self.histogram)
        return out


def make_row(trace: Trace, result: ExitResult, name: str, family: str, param: Any, metrics: Sequence[str]) -> Row:
    return Row(
        name=name,
        family=family,
        param=param,
        metrics={m: score(trace, result.exit_stage, m) for m in metrics},
        mean_stages=result.mean_stages,
        speedup=result.speedup,
        cost_fraction=result.cost_fraction,
        saved_fraction=result.saved_fraction,
        histogram=result.histogram(),
    )


def evaluate_policy(trace: Trace, policy: ExitPolicy | str | dict, metrics: Sequence[str], family: str = "policy", param: Any = None) -> Row:
    policy = build_policy(policy)
    return make_row(trace, replay(trace, policy), policy.spec(), family, param, metrics)


def expand_family(family: str, values: Iterable[Any] | str | dict, trace: Trace | None = None) -> list[tuple[str, Any]]:
    """``("patience", [1, 2])`` -> specs; a family with ``{}`` is a template. Values may
    also be ``"quantiles:N"`` (or ``{quantiles: N}``): N thresholds at evenly spaced
    quantiles of the measure the policy thresholds (entropy, max probability, distance
    between stages) on ``trace``, so one grid fits models of any confidence."""
    template = family if "{}" in family else family + ":{}"
    count = quantile_count(values)
    if count is not None:
        if trace is None:
            raise ValueError(f"sweep {family!r}: quantile thresholds need the recorded trace")
        values = threshold_quantiles(template, count, trace)
    elif isinstance(values, (str, dict)) or not isinstance(values, Iterable):
        raise ValueError(f"sweep {family!r}: expected a list of values or 'quantiles:N', got {values!r}")
    return [(template.format(v), v) for v in values]


def quantile_count(values: Any) -> int | None:
    """N for ``"quantiles:N"`` / ``{"quantiles": N}``; None for a plain list."""
    raw = None
    if isinstance(values, str) and values.strip().lower().startswith("quantiles"):
        raw = values.partition(":")[2].strip() or "10"
    elif isinstance(values, dict) and set(values) == {"quantiles"}:
        raw = values["quantiles"]
    if raw is None:
        return None
    try:
        count = int(raw)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise ValueError(f"quantile sweeps need a positive count ('quantiles:10'), got {values!r}")
    return count


def threshold_quantiles(template: str, count: int, trace: Trace) -> list[float]:
    """``count`` thresholds at the (i + 0.5) / count quantiles of the policy's measure on
    the trace, at three significant digits, without repeats."""
    try:
        probe = build_policy(template.format(0.5))
        values = probe.threshold_values(trace.outputs.double())
    except ValueError as exc:
        raise ValueError(f"{template}: quantile grids fill in a threshold, and this family's value is not one ({exc})") from None
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        raise ValueError(f"{template}: no finite values of its measure on this trace")
    levels = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    picked = torch.quantile(values, levels).tolist()
    return sorted({float(f"{v:.3g}") for v in picked})


def sweep(trace: Trace, family: str, values: Iterable[Any] | str | dict, metrics: Sequence[str]) -> list[Row]:
    name = family.split(":")[0]
    return [evaluate_policy(trace, spec, metrics, family=name, param=v) for spec, v in expand_family(family, values, trace)]


def static_rows(trace: Trace, metrics: Sequence[str]) -> list[Row]:
    """Baselines that always exit at stage k (static truncation), k = 1..L."""
    rows = []
    for k in range(1, trace.num_stages + 1):
        row = evaluate_policy(trace, Budget(max_stages=k), metrics, family="static", param=k)
        row.name = f"static:{k}"
        rows.append(row)
    return rows


def oracle_row(trace: Trace, metrics: Sequence[str], primary: str) -> Row:
    return make_row(trace, trace.result(oracle_exit_stage(trace, primary)), "oracle", "oracle", None, metrics)


def mark_pareto(rows: list[Row], metric: Metric) -> list[Row]:
    """Mark rows not dominated in (quality, speed-up); returns the front, by speed-up."""
    candidates = [r for r in rows if r.family != "oracle" and not math.isnan(r.metrics[metric.name])]
    front = []
    for row in candidates:
        q = metric.key(row.metrics[metric.name])
        dominated = any(
            (metric.key(o.metrics[metric.name]) >= q and o.speedup >= row.speedup)
            and (metric.key(o.metrics[metric.name]) > q or o.speedup > row.speedup)
            for o in candidates
        )
        row.pareto = not dominated
        if row.pareto:
            front.append(row)
    return sorted(front, key=lambda r: r.speedup)


def build_report(trace: Trace, sweeps: dict[str, Iterable[Any]], metrics: Sequence[str], primary: str | None = None) -> dict[str, Any]:
    """Every sweep, the static baselines, the full model and the oracle, as rows."""
    if not metrics:
        raise ValueError("at least one metric is needed")
    primary = primary or metrics[0]
    rows: list[Row] = []
    for family, values in sweeps.items():
        rows.extend(sweep(trace, family, values, metrics))
    statics = static_rows(trace, metrics)
    rows.extend(statics)
    rows.append(oracle_row(trace, metrics, primary))
    front = mark_pareto(rows, metric_for(trace, primary))
    full = statics[-1]
    return {
        "primary_metric": primary,
        "num_samples": trace.num_samples,
        "num_stages": trace.num_stages,
        "stage_costs": trace.stage_costs,
        "full_model": full.metrics,
        "per_exit": {f"exit_{k + 1}": r.metrics for k, r in enumerate(statics)},
        "rows": [asdict(r) for r in rows],
        "pareto_front": [r.name for r in front],
    }


def rows_from_report(report: dict[str, Any]) -> list[Row]:
    return [Row(**row) for row in report["rows"]]

"""Sweeps over recorded traces: quality-vs-cost rows, oracle, Pareto front, reports."""
from __future__ import annotations

import csv
import io as _stdio
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from adaptive_exit import io
from adaptive_exit.evaluation.metrics import Metric, get_metric, is_registered, known_metrics
from adaptive_exit.policies import Budget, ExitPolicy, build_policy
from adaptive_exit.runtime.staged import ExitResult
from adaptive_exit.runtime.traces import Trace, replay

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- scoring traces

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


# --------------------------------------------------------------------------- report

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


def sweep_csv(rows: list[Row]) -> str:
    flat = [r.flat() for r in rows]
    fields: list[str] = []
    for item in flat:
        fields.extend(k for k in item if k not in fields)
    buffer = _stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def plot_rows(rows: list[Row], primary: str, path: str | Path, title: str = "") -> None:
    """Quality vs speed-up: one line per policy family, static truncation dashed. The axes
    fit the policies and baselines; the oracle (an upper bound, often far above them) is
    drawn inside the frame when it fits and otherwise marked at the edge with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    families: dict[str, list[Row]] = {}
    for row in rows:
        families.setdefault(row.family, []).append(row)
    oracle = families.pop("oracle", [])
    for family, items in families.items():
        items = sorted(items, key=lambda r: r.speedup)
        xs = [r.speedup for r in items]
        ys = [r.metrics[primary] for r in items]
        if family == "static":
            ax.plot(xs, ys, "k--", marker="s", ms=4, label="static truncation")
        else:
            ax.plot(xs, ys, marker="o", ms=4, label=family)
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.speedup)
    if front:
        ax.plot([r.speedup for r in front], [r.metrics[primary] for r in front], color="grey", alpha=0.35, lw=6, zorder=0, label="Pareto front")
    values = [r.metrics[primary] for items in families.values() for r in items if not math.isnan(r.metrics[primary])]
    if values:
        low, high = min(values), max(values)
        pad = 0.08 * (high - low or abs(high) or 1.0)
        ax.set_ylim(low - pad, high + pad)
    for r in oracle:
        q = r.metrics[primary]
        bottom, top = ax.get_ylim()
        if math.isnan(q):
            continue
        if bottom <= q <= top:
            ax.scatter([r.speedup], [q], marker="*", s=140, color="gold", edgecolor="black", zorder=5, label="oracle (upper bound)")
        else:
            edge = top if q > top else bottom
            ax.scatter([r.speedup], [edge], marker="^" if q > top else "v", s=90, color="gold", edgecolor="black", zorder=5,
                       clip_on=False, label="oracle (upper bound, off scale)")
            ax.annotate(f"oracle {q:.4g} at {r.speedup:.2f}x", (r.speedup, edge), xytext=(-8, -14 if q > top else 8),
                        textcoords="offset points", ha="right", fontsize=8)
    ax.set_xlabel("speed-up (stages / mean stages used)")
    ax.set_ylabel(primary)
    ax.set_title(title or f"{primary} vs speed-up")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    io.write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, format=fmt))
    plt.close(fig)


def write_report(report: dict[str, Any], run_dir: str | Path, title: str = "") -> dict[str, Path]:
    """Write results.json, sweep.csv and plot.png into ``run_dir``."""
    run_dir = Path(run_dir)
    rows = rows_from_report(report)
    paths = {"results": run_dir / "results.json", "csv": run_dir / "sweep.csv", "plot": run_dir / "plot.png"}
    io.write_json(paths["results"], report)
    io.write_text(paths["csv"], sweep_csv(rows))
    plot_rows(rows, report["primary_metric"], paths["plot"], title)
    return paths


def format_table(rows: list[Row], metrics: Sequence[str]) -> str:
    """A Markdown table of rows (used by the CLI and the recipe READMEs)."""
    head = "| policy | " + " | ".join(metrics) + " | mean stages | speed-up | compute saved |"
    sep = "|---|" + "---|" * len(metrics) + "---|---|---|"
    lines = [head, sep]
    for r in rows:
        values = " | ".join(f"{r.metrics[m]:.4f}" for m in metrics)
        star = " *" if r.pareto else ""
        lines.append(f"| {r.name}{star} | {values} | {r.mean_stages:.2f} | {r.speedup:.2f}x | {100 * r.saved_fraction:.1f}% |")
    return "\n".join(lines)

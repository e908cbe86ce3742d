"""Budget sweeps across recipes (domains): calibrate each model to a list of budgets
and compare with static truncation at the same cost.

    adaptive-exit budget-sweep recipes/cross_domain/budget_sweep.yaml [key=value ...]

For every recipe named in the sweep file and every budget: calibrate on the
calibration half of the recipe's trace (recorded if missing; the model is trained
first if its run has none), then measure quality and cost on the held-out half.
Static truncation is scored on the same held-out half at every depth, and its
quality at the early-exit point's achieved cost is interpolated linearly between
the two neighbouring depths (and at the budget itself, e.g. half depth at 50%). The calibrated policies are written into each model's
budget table, so a deployed model can switch between these budgets at run time.
Writes ``results.json``, ``table.md`` and ``plot.png`` in ``output_dir``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptive_exit import io
from adaptive_exit.budgets import BudgetSpec, BudgetTable, split_indices
from adaptive_exit.app.config import apply_overrides, from_dict, load_recipe, load_yaml
from adaptive_exit.evaluation import score
from adaptive_exit.app.pipeline import Pipeline
from adaptive_exit.runtime.traces import Trace

logger = logging.getLogger(__name__)


@dataclass
class SweepEntry:
    recipe: str
    overrides: list = field(default_factory=list)


@dataclass
class BudgetSweepConfig:
    domains: dict
    output_dir: str = "runs/budget-sweep"
    budget_kind: str = "mean"
    budgets: list = field(default_factory=lambda: [0.3, 0.5, 0.7, 1.0])


def static_curve(trace: Trace, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Cost fraction and quality of static truncation at every depth."""
    cumulative = np.cumsum(trace.stage_costs) / trace.full_cost
    quality = [score(trace, torch.full((trace.num_samples,), k, dtype=torch.long), metric) for k in range(trace.num_stages)]
    return cumulative, np.asarray(quality, dtype=np.float64)


def sweep_recipe(name: str, entry: SweepEntry, budgets: list[BudgetSpec], base: Path) -> dict[str, Any]:
    recipe_path = Path(entry.recipe)
    recipe_path = recipe_path if recipe_path.is_absolute() or recipe_path.exists() else base / recipe_path
    recipe, _ = load_recipe(recipe_path, list(entry.overrides))
    pipeline = Pipeline(recipe)
    if not (pipeline.model_dir / "config.json").exists():
        logger.warning("%s: no trained model in %s; training it first", name, pipeline.model_dir)
        pipeline.train()
    split = recipe.calibrate.split
    trace = pipeline.load_trace(split)
    metric = recipe.eval.metrics[0]
    _, held_index = split_indices(trace.num_samples, recipe.calibrate.heldout_fraction, seed=recipe.seed)
    heldout = trace.subset(held_index)
    costs, static_quality = static_curve(heldout, metric)
    table = BudgetTable.load(pipeline.model_dir)
    rows = []
    for budget in budgets:
        result = pipeline.calibrate_on(trace, budget)
        table.add(budget, result.policy)
        held = result.heldout
        cost = held["cost_fraction"]
        rows.append({
            "budget": str(budget), "target": budget.value, "policy": result.policy,
            "achieved": held["achieved"], "cost_fraction": cost, "speedup": held["speedup"],
            "quality": held[metric], "static_quality_at_cost": float(np.interp(cost, costs, static_quality)),
            "static_quality_at_budget": float(np.interp(budget.value, costs, static_quality)),
            "calibration_achieved": result.calibration["achieved"],
        })
    table.save(pipeline.model_dir)
    return {"recipe": str(recipe_path), "run_dir": str(pipeline.run_dir), "metric": metric, "split": split,
            "heldout_samples": heldout.num_samples, "full_quality": float(static_quality[-1]),
            "static": {"cost_fraction": costs.tolist(), "quality": static_quality.tolist()}, "rows": rows}


def run_budget_sweep(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    from adaptive_exit.app.recipes import resolve_recipe

    path = resolve_recipe(path)
    data = apply_overrides(load_yaml(path), overrides or [])
    cfg = from_dict(BudgetSweepConfig, data, source=str(path))
    entries = {name: from_dict(SweepEntry, value, f"domains.{name}", str(path)) for name, value in cfg.domains.items()}
    if not entries:
        raise ValueError(f"{path}: 'domains' names no recipes")
    budgets = [BudgetSpec.parse(f"{cfg.budget_kind}:{b}") for b in cfg.budgets]
    base = Path(path).resolve().parent
    report = {"budget_kind": cfg.budget_kind, "budgets": cfg.budgets,
              "domains": {name: sweep_recipe(name, entry, budgets, base) for name, entry in entries.items()}}
    out = Path(cfg.output_dir)
    io.write_json(out / "results.json", report)
    io.write_text(out / "table.md", format_budget_table(report))
    plot_budget_sweep(report, out / "plot.png")
    return report


def format_budget_table(report: dict[str, Any]) -> str:
    lines = ["| domain | budget | policy | achieved cost | speed-up | quality | static at same cost | static at budget | full model |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, dom in report["domains"].items():
        for r in dom["rows"]:
            lines.append(f"| {name} ({dom['metric']}) | {r['budget']} | `{r['policy']}` | {r['cost_fraction']:.3f} | "
                         f"{r['speedup']:.2f}x | {r['quality']:.4f} | {r['static_quality_at_cost']:.4f} | "
                         f"{r['static_quality_at_budget']:.4f} | {dom['full_quality']:.4f} |")
    return "\n".join(lines) + "\n"


def plot_budget_sweep(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = report["domains"]
    fig, axes = plt.subplots(1, len(domains), figsize=(5 * len(domains), 4), squeeze=False)
    for ax, (name, dom) in zip(axes[0], domains.items()):
        ax.plot(dom["static"]["cost_fraction"], dom["static"]["quality"], "s--", color="gray", label="static truncation")
        ax.plot([r["cost_fraction"] for r in dom["rows"]], [r["quality"] for r in dom["rows"]], "o-", label="early exit (calibrated)")
        for r in dom["rows"]:
            ax.axvline(r["target"], color="lightgray", lw=0.8, zorder=0)
        ax.set_xlabel("mean cost (fraction of the full model), held-out half")
        ax.set_ylabel(dom["metric"])
        ax.set_title(name)
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

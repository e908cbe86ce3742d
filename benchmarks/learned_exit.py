"""Learned exits against heuristics at equal cost, and the validity of risk-controlled calibration.

    python benchmarks/learned_exit.py --run runs/sst2-pabee --fit-split train_rest [--save]
    python benchmarks/learned_exit.py --run runs/speech-voicebank --fit-split dev --split test --metric pesq

1. **Equal cost.** The learned exit is fitted on ``--fit-split`` (data no weight saw and
   no evaluation uses; for SST-2 the 27k training rows outside ``train_subset``), then every
   family is set, *without labels*, to its most conservative setting that reaches the target
   speed-up on ``--split`` (cost is a function of the exit outputs alone), and scored there:
   learned, entropy, max-prob, patience and static truncation, with the full model and the
   oracle.
2. **Validity.** Over ``--splits`` random halvings of ``--split``, ``certify`` picks the
   cheapest policy (entropy, patience or learned) whose drop is at most ``--max-drop`` with
   ``--confidence``; the share of splits whose other half drops more than that must stay
   at most 1 - confidence. The mean speed-up chosen is reported.

Prints tables and writes runs/benchmarks/learned_exit_<run name>.json (benchmarks/results/ with --save).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from adaptive_exit.app.config import load_recipe
from adaptive_exit.app.pipeline import Pipeline
from adaptive_exit.budgets import certify, split_indices
from adaptive_exit.evaluation import per_sample_quality
from adaptive_exit.evaluation.scoring import oracle_exit_stage, score
from adaptive_exit.policies import Learned, build_policy
from adaptive_exit.runtime.traces import Trace, replay

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import add_save_flag, print_table, results_path  # noqa: E402

def quantile_grid(template: str, trace: Trace, count: int = 150) -> list[str]:
    """Thresholds at ``count`` quantiles of the policy's measure on ``trace`` (the fit split:
    the grid sees nothing of the evaluation split)."""
    values = build_policy(template.format(0.5)).threshold_values(trace.outputs.double()).double()
    levels = torch.quantile(values, torch.linspace(0, 1, count, dtype=torch.float64)).tolist()
    return [template.format(f"{v:.6g}") for v in sorted(set(levels))]


def families_for(learned: Learned, fit_trace: Trace) -> dict[str, list[str]]:
    """Every family's grid: heuristics for logits (entropy, max-prob, patience) or for
    values and signals (patience on the relative distance), and the learned exit."""
    if learned.kind == "logits":
        grids = {"entropy": quantile_grid("entropy:{}", fit_trace), "max_prob": quantile_grid("max_prob:{}", fit_trace),
                 "patience": [f"patience:{p}" for p in range(1, fit_trace.num_stages)]}
    else:
        grids = {"patience_distance": quantile_grid("patience:1,threshold={},distance=relative", fit_trace)}
    grids["learned"] = quantile_grid(learned.template(), fit_trace)
    return grids


def at_speedup(runs: list[tuple[str, object]], speedup: float) -> tuple[str, object] | None:
    """The most conservative setting reaching ``speedup`` (chosen from costs alone, no labels)."""
    fitting = [(s, r) for s, r in runs if r.speedup >= speedup * (1 - 1e-9)]
    return min(fitting, key=lambda item: item[1].speedup) if fitting else None


def equal_cost_table(trace: Trace, families: dict[str, list[str]], metric: str, speedups: list[float]) -> list[dict]:
    rows = [{"policy": "full model", "speedup": 1.0, metric: score(trace, torch.full((trace.num_samples,),
                                                                                    trace.num_stages - 1), metric)}]
    oracle = trace.result(oracle_exit_stage(trace, metric))
    rows.append({"policy": "oracle", "speedup": oracle.speedup, metric: score(trace, oracle.exit_stage, metric)})
    replays = {family: [(spec, replay(trace, spec)) for spec in specs] for family, specs in families.items()}
    for target in speedups:
        for family in families:
            found = at_speedup(replays[family], target)
            if found is None:
                rows.append({"policy": family, "target": target, "speedup": None, metric: None, "spec": None})
                continue
            spec, result = found
            rows.append({"policy": family, "target": target, "speedup": result.speedup,
                         metric: score(trace, result.exit_stage, metric), "spec": spec if len(spec) < 80 else spec[:60] + "..."})
    return rows


def validity(trace: Trace, families: dict[str, list[str]], metric: str, max_drop: float, confidence: float,
             splits: int) -> dict:
    chains = [[build_policy(spec).spec() for spec in specs] for specs in families.values()]
    whole = {spec: replay(trace, spec).exit_stage for chain in chains for spec in chain}  # policies exit per sample
    drops, speedups, bounds, chosen = [], [], [], {}
    for seed in range(splits):
        cal_index, test_index = split_indices(trace.num_samples, 0.5, seed)
        cal, test = trace.subset(cal_index), trace.subset(test_index)
        result = certify(cal, chains, metric, max_drop, confidence, heldout=test, seed=seed,
                         exits={spec: stages[cal_index] for spec, stages in whole.items()})
        drops.append(result.heldout["drop"])
        speedups.append(result.heldout["speedup"])
        if result.certified:
            bounds.append(result.bound)
        family = result.policy.split(":", 1)[0]
        chosen[family] = chosen.get(family, 0) + 1
    drops = np.array(drops)
    return {"max_drop": max_drop, "confidence": confidence, "splits": splits, "violation_rate": float((drops > max_drop).mean()),
            "allowed_rate": 1 - confidence, "mean_test_drop": float(drops.mean()), "mean_speedup": float(np.mean(speedups)),
            "min_speedup": float(np.min(speedups)), "max_speedup": float(np.max(speedups)),
            "certified_splits": len(bounds), "mean_bound": float(np.mean(bounds)) if bounds else None,
            "chosen_families": chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run directory (its config.yaml and model/)")
    parser.add_argument("--split", default="dev", help="the evaluation split (default dev)")
    parser.add_argument("--fit-split", required=True, help="the split the learned exit is fitted on (kept out of --split)")
    parser.add_argument("--metric", default=None, help="default: the recipe's first eval metric")
    parser.add_argument("--speedups", type=float, nargs="+", default=[1.5, 2.0, 2.5])
    parser.add_argument("--max-drop", type=float, nargs="+", default=[0.01, 0.02])
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--splits", type=int, default=100)
    add_save_flag(parser)
    args = parser.parse_args()

    pipeline = Pipeline(load_recipe(Path(args.run) / "config.yaml")[0])
    metric = args.metric or pipeline.recipe.eval.metrics[0]
    trace, fit_trace = pipeline.load_trace(args.split), pipeline.load_trace(args.fit_split)
    learned = Learned.fit(fit_trace.outputs, per_sample_quality(fit_trace, metric))
    families = families_for(learned, fit_trace)
    static = {"static": [f"budget:max_stages={k}" for k in range(trace.num_stages, 0, -1)]}
    rows = equal_cost_table(trace, {**families, **static}, metric, args.speedups)
    print(f"\n{Path(args.run).name} {args.split} ({trace.num_samples} samples), learned exit fitted on "
          f"{args.fit_split} ({fit_trace.num_samples}); every family at its most conservative setting reaching the speed-up")
    print_table(["policy", "target", "speed-up", metric],
                [[r["policy"], f"{r.get('target', '')}", "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
                  "-" if r[metric] is None else f"{r[metric]:.4f}"] for r in rows])
    checks = [validity(trace, {k: v for k, v in families.items() if k != "max_prob"}, metric, d, args.confidence, args.splits)
              for d in args.max_drop]
    print(f"\nRisk-controlled calibration over {args.splits} random halvings (calibrate on one, test on the other)")
    print_table(["max drop", "confidence", "violations", "allowed", "mean test drop", "mean speed-up",
                 "splits certifying a policy", "their mean bound"],
                [[f"{c['max_drop']:g}", f"{c['confidence']:g}", f"{c['violation_rate']:.3f}", f"{c['allowed_rate']:.2f}",
                  f"{c['mean_test_drop']:+.4f}", f"{c['mean_speedup']:.2f}x", str(c["certified_splits"]),
                  "-" if c["mean_bound"] is None else f"{c['mean_bound']:.4f}"] for c in checks])
    out = results_path(f"learned_exit_{Path(args.run).name}.json", args.save)
    out.write_text(json.dumps({"run": Path(args.run).name, "split": args.split, "fit_split": args.fit_split,
                               "metric": metric, "num_samples": trace.num_samples, "fit_samples": fit_trace.num_samples,
                               "learned_policy": learned.spec(), "equal_cost": rows, "validity": checks}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()

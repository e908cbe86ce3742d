"""Training schemes at equal compute: joint (PABEE), two-stage (DeeBERT), distill
(FastBERT self-distillation) and RomeBERT (gradient-regularised self-distillation).

For each run's recorded dev trace, the entropy and normalized-entropy exits are replayed
on a fine threshold grid (200 quantiles of each measure; replay is exact and needs no
model), and for each compute target (mean layers = L / 1.5, L / 2, L / 3) the best
accuracy among the thresholds whose mean layers stay within the target is reported,
together with the full model and the patience rule at the closest setting.

    adaptive-exit run recipes/text/sst2/pabee.yaml                                     # joint
    adaptive-exit run recipes/text/sst2/romebert.yaml                                  # RomeBERT
    adaptive-exit run recipes/text/sst2/pabee.yaml run_dir=runs/sst2-two-stage train.scheme=two-stage calibrate.budget=null
    adaptive-exit run recipes/text/sst2/pabee.yaml run_dir=runs/sst2-distill train.scheme=distill calibrate.budget=null
    python benchmarks/compare_schemes.py [--save]

Prints a table and writes runs/benchmarks/compare_schemes.json (benchmarks/results/ with --save).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adaptive_exit.app.config import load_recipe
from adaptive_exit.evaluation import evaluate_policy, threshold_quantiles
from adaptive_exit.app.pipeline import Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402

RUNS = {"joint (PABEE)": "runs/sst2-pabee", "two-stage (DeeBERT)": "runs/sst2-two-stage",
        "distill (FastBERT)": "runs/sst2-distill", "RomeBERT": "runs/sst2-romebert"}
SPEEDUPS = (1.5, 2.0, 3.0)


def best_within(rows, layers: float):
    fitting = [r for r in rows if r.mean_stages <= layers + 1e-9]
    return max(fitting, key=lambda r: r.metrics["accuracy"]) if fitting else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, default=200, help="thresholds per policy family (quantiles of its measure)")
    parser.add_argument("--split", default="dev")
    add_save_flag(parser)
    args = parser.parse_args()
    report = {}
    for name, run in RUNS.items():
        if not (Path(run) / "traces" / f"{args.split}.pt").is_file():
            print(f"  skipping {name}: no {run}/traces/{args.split}.pt (run its recipe first)")
            continue
        recipe, _ = load_recipe(Path(run) / "config.yaml", [f"run_dir={run}"])
        trace = Pipeline(recipe).load_trace(args.split)
        layers = trace.num_stages
        rows = []
        for template in ("entropy:{}", "normalized_entropy:{}"):
            rows += [evaluate_policy(trace, template.format(t), ["accuracy"]) for t in threshold_quantiles(template, args.grid, trace)]
        patience = [evaluate_policy(trace, f"patience:{p}", ["accuracy"]) for p in range(1, layers)]
        full = evaluate_policy(trace, "full", ["accuracy"])
        entry = {"run": run, "full": full.metrics["accuracy"], "targets": {}}
        for speedup in SPEEDUPS:
            best = best_within(rows, layers / speedup)
            pat = best_within(patience, layers / speedup)
            entry["targets"][f"{speedup:g}x"] = {
                "max_mean_layers": layers / speedup,
                "best_exit": None if best is None else {"policy": best.name, "accuracy": best.metrics["accuracy"],
                                                        "mean_layers": best.mean_stages},
                "patience": None if pat is None else {"policy": pat.name, "accuracy": pat.metrics["accuracy"],
                                                      "mean_layers": pat.mean_stages}}
        report[name] = entry
    print(f"SST-2 {args.split}: best entropy / normalized-entropy exit within each mean-layer budget "
          f"({args.grid} thresholds per family), accuracy (mean layers)")
    print("| scheme | full model | " + " | ".join(f"{s:g}x (<= {6 / s:.1f} layers)" for s in SPEEDUPS)
          + " | patience at 2x |")
    print("|---|---|" + "---|" * len(SPEEDUPS) + "---|")
    for name, entry in report.items():
        cells = []
        for speedup in SPEEDUPS:
            best = entry["targets"][f"{speedup:g}x"]["best_exit"]
            cells.append("n/a" if best is None else f"{best['accuracy']:.4f} ({best['mean_layers']:.2f})")
        pat = entry["targets"]["2x"]["patience"]
        cells.append("n/a" if pat is None else f"{pat['accuracy']:.4f} ({pat['policy']})")
        print(f"| {name} | {entry['full']:.4f} | " + " | ".join(cells) + " |")
    out = results_path("compare_schemes.json", args.save)
    out.write_text(json.dumps({"split": args.split, "grid": args.grid, "schemes": report}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""CoNLL-2003: entity F1 vs FLOPs for the full model, static truncation, sentence-level
(SENTEE) and token-level (TOKEE) early exit and the oracle; wall-clock at batch 32.

    adaptive-exit run recipes/text/conll2003/minilm.yaml      # once: trains and records the trace
    python benchmarks/conll_token_exit.py [--run runs/conll2003] [--split test]

SENTEE/static/oracle are replayed from the run's trace; TOKEE runs the model for each
(threshold, window). FLOPs are analytic and the same for every row (see
adaptive_exit/text/token_eval.py). Wall-clock compares the full model, the fastest
SENTEE point and the fastest TOKEE point within 1.0 F1 of the full model. Prints a
table and writes benchmarks/results/conll_token_exit.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import platform
from pathlib import Path

import torch

from adaptive_exit.app.config import load_recipe
from adaptive_exit.app.pipeline import Pipeline
from adaptive_exit.text.tagging.token_eval import (best_within, sentee_f1_at, sentence_level_rows, token_level_row,
                                           wall_clock)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/conll2003", help="a CoNLL run folder with config.yaml and model/")
    parser.add_argument("--split", default=None, help="default: the recipe's eval split")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4])
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-drop", type=float, default=0.01, help="F1 loss allowed for the wall-clock points")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="output JSON (default: conll_token_exit.json under runs/benchmarks/, "
                        "or benchmarks/results/ with --save)")
    add_save_flag(parser)
    args = parser.parse_args()

    recipe, _ = load_recipe(Path(args.run) / "config.yaml", [f"run_dir={args.run}"])
    pipeline = Pipeline(recipe)
    model, _ = pipeline.load_model()
    split = args.split or recipe.eval.split
    trace = pipeline.load_trace(split)
    eval_batches = list(pipeline.batches(model, split, recipe.eval.batch_size))
    sizes = torch.cat([b["attention_mask"].sum(1) for b in eval_batches])
    sweeps = {k: v for k, v in recipe.eval.sweeps.items()}
    rows = sentence_level_rows(model, trace, sizes, sweeps)
    batches = list(pipeline.batches(model, split, args.batch_size))
    for window in args.windows:
        for threshold in args.thresholds:
            rows.append(token_level_row(model, batches, threshold, window))
            print(f"  {rows[-1].name}: F1 {100 * rows[-1].f1:.2f}, {rows[-1].flops_speedup:.2f}x FLOPs", flush=True)

    full = next(r for r in rows if r.family == "full")
    table = []
    for r in rows:
        d = r.as_dict()
        if r.family == "tokee":
            at = sentee_f1_at(rows, r.flops_speedup)
            d["sentee_f1_at_same_flops"] = at
        table.append(d)
    sentee = best_within(rows, "sentee", full.f1, args.max_drop)
    tokee = best_within(rows, "tokee", full.f1, args.max_drop)
    timing = wall_clock(model, batches, sentee.param if sentee else None, tokee.param if tokee else None, args.repeats)
    timing.update({"batch_size": args.batch_size, "threads": torch.get_num_threads(), "num_sentences": trace.num_samples,
                   "sentee_point": sentee.name if sentee else None, "tokee_point": tokee.name if tokee else None,
                   "sentee_flops_speedup": sentee.flops_speedup if sentee else None,
                   "tokee_flops_speedup": tokee.flops_speedup if tokee else None})
    for name in ("sentee", "tokee"):
        if f"{name}_s" in timing:
            timing[f"{name}_wall_speedup"] = timing["full_s"] / timing[f"{name}_s"]

    print(f"{args.run}: {trace.num_samples} {split} sentences; full model entity F1 {100 * full.f1:.2f}")
    print("| point | entity F1 | P | R | mean layers / token | FLOPs speed-up | SENTEE F1 at same FLOPs |")
    print("|---|---|---|---|---|---|---|")
    for d in table:
        at = d.get("sentee_f1_at_same_flops")
        at_text = "" if d["family"] != "tokee" else ("beyond SENTEE's range" if at is None else f"{100 * at:.2f}")
        print(f"| {d['name']} | {100 * d['f1']:.2f} | {100 * d['precision']:.2f} | {100 * d['recall']:.2f} | "
              f"{d['mean_layers']:.2f} | {d['flops_speedup']:.2f}x | {at_text} |")
    print(f"wall-clock at batch {args.batch_size}: " + json.dumps({k: v for k, v in timing.items()}, indent=1))
    out = Path(args.out) if args.out else results_path("conll_token_exit.json", args.save)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": args.run, "split": split, "rows": table, "wall_clock": timing,
                               "machine": platform.processor() or platform.machine(), "torch": torch.__version__},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

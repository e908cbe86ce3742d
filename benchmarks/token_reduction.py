"""Token reduction (TR-BERT, LTP) and layer exits (PABEE / entropy) on IMDB, alone and combined.

For each (run, policy): accuracy on the recipe's fixed, seeded IMDB test subset (2,000
reviews), the FLOPs actually executed at batch 32 (``torch.utils.flop_counter`` around the
whole evaluation, attention included: packing padding, selection networks and exit heads
all count) against the full model's, and wall-clock samples/s at batch 32 and batch 1 on
an evenly spaced subset (so long and short reviews both appear), median of repeats.

Runs (train them first; see recipes/text/imdb/README.md):

    adaptive-exit run recipes/text/imdb/pabee.yaml     # the multi-exit base model (layer exits)
    adaptive-exit run recipes/text/imdb/trbert.yaml    # + TR-BERT token selection
    adaptive-exit run recipes/text/imdb/ltp.yaml       # + LTP learned thresholds
    python benchmarks/token_reduction.py [--threads 2] [--save]

Prints a table and writes runs/benchmarks/token_reduction.json (benchmarks/results/ with --save).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from adaptive_exit.app.config import load_recipe
from adaptive_exit.budgets.costs import flop_counter
from adaptive_exit.app.pipeline import Pipeline
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.timing import median_time

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402

RUNS = {"base (layer exits only)": "runs/imdb-pabee", "TR-BERT": "runs/imdb-trbert", "LTP": "runs/imdb-ltp"}
SHORT = {"base": "base (layer exits only)", "trbert": "TR-BERT", "ltp": "LTP"}


def labels_of(batches) -> torch.Tensor:
    return torch.cat([b["labels"] for b in batches])


@torch.no_grad()
def evaluate(model, batches, policy: str) -> dict:
    runner = EarlyExitRunner(model, policy)
    with flop_counter() as counter:
        result = runner.run_batches(batches)
    predicted = torch.as_tensor(result.output).argmax(-1)
    return {"accuracy": float((predicted == labels_of(batches)).double().mean()), "flops": float(counter.get_total_flops()),
            "mean_layers": result.mean_stages}


def throughput(model, batches, policy: str, repeats: int) -> float:
    runner = EarlyExitRunner(model, policy)
    seconds, _ = median_time(lambda: runner.run_batches(batches), repeats, warmup=lambda: runner.run_batches(batches[:1]))
    return sum(len(b["labels"]) for b in batches) / seconds


def spaced(samples, count: int) -> list:
    step = max(1, len(samples) // count)
    return [samples[i] for i in range(0, len(samples), step)][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+", default=["full", "normalized_entropy:0.4", "normalized_entropy:0.6",
                                                          "normalized_entropy:0.8", "patience:3"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-samples", type=int, default=128, help="reviews timed at batch 32 (default 128)")
    parser.add_argument("--timing-samples-b1", type=int, default=32, help="reviews timed at batch 1 (default 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", nargs="+", choices=sorted(SHORT), default=sorted(SHORT),
                        help="which runs to measure (the base is always needed: speed-ups are against it)")
    parser.add_argument("--output", default="token_reduction.json", help="file name of the JSON written")
    add_save_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, run in RUNS.items():
        if name != SHORT["base"] and name not in {SHORT[r] for r in args.runs}:
            continue
        if not (Path(run) / "model").is_dir():
            print(f"  skipping {name}: {run}/model not found (run its recipe first)")
            continue
        recipe, _ = load_recipe(Path(run) / "config.yaml", [f"run_dir={run}"])
        pipeline = Pipeline(recipe)
        model, _ = pipeline.load_model()
        split = recipe.eval.split
        batches = list(pipeline.batches(model, split, 32))
        samples = pipeline.domain.load_split(pipeline.data_cfg, split, recipe.seed)
        timed32 = [pipeline.domain.collate(model, spaced(samples, args.timing_samples)[i:i + 32])
                   for i in range(0, args.timing_samples, 32)]
        timed1 = [pipeline.domain.collate(model, [s]) for s in spaced(samples, args.timing_samples_b1)]
        for policy in args.policies:
            row = {"model": name, "run": run, "policy": policy, **evaluate(model, batches, policy)}
            row["samples_per_s_b32"] = throughput(model, timed32, policy, args.repeats)
            row["samples_per_s_b1"] = throughput(model, timed1, policy, args.repeats)
            rows.append(row)
            print(f"  {name} {policy}: accuracy {row['accuracy']:.4f}, {row['samples_per_s_b32']:.2f}/s at batch 32", flush=True)
    base = next(r for r in rows if r["model"].startswith("base") and r["policy"] == "full")
    for r in rows:
        r["flops_speedup"] = base["flops"] / r["flops"]
        r["wall_speedup_b32"] = r["samples_per_s_b32"] / base["samples_per_s_b32"]
        r["wall_speedup_b1"] = r["samples_per_s_b1"] / base["samples_per_s_b1"]
        r["accuracy_change_points"] = 100 * (r["accuracy"] - base["accuracy"])
    print(f"\nIMDB test subset ({len(labels_of(batches))} reviews, MiniLM-L6, 512 tokens), {args.threads} threads; "
          f"wall-clock on {args.timing_samples} (batch 32) and {args.timing_samples_b1} (batch 1) evenly spaced reviews")
    print("| model | layer-exit policy | accuracy | change (points) | FLOPs speed-up (executed, batch 32) | mean layers | "
          "wall-clock speed-up batch 32 | batch 1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['policy']} | {r['accuracy']:.4f} | {r['accuracy_change_points']:+.2f} | {r['flops_speedup']:.2f}x | "
              f"{r['mean_layers']:.2f} | {r['wall_speedup_b32']:.2f}x | {r['wall_speedup_b1']:.2f}x |")
    out = results_path(args.output, args.save)
    out.write_text(json.dumps({"threads": args.threads, "machine": platform.processor() or platform.machine(),
                               "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

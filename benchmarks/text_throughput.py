"""Text throughput: full model vs. PABEE one sample at a time, batch-sync and compaction.

On the dev split of a trained text run (default: the SST-2 MiniLM recipe), for each
batch size: samples/s of the full model, of the policy in batch-sync mode (how the
published PABEE/DeeBERT code runs a batch: everyone waits for the slowest sample)
and with compaction (exited rows leave the batch). Also PABEE one sample at a time
(how the published code must run to get per-sample exits). Checks that every mode
gives the same exit layers and labels as one-at-a-time inference.

    adaptive-exit train recipes/text/sst2/pabee.yaml      # once, if the run has no model
    python benchmarks/text_throughput.py [--run runs/sst2-pabee] [--policy patience:2] [--batch-sizes 1 8 32 128]

Prints a table and writes runs/benchmarks/text_throughput.json (benchmarks/results/ with --save).
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
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.timing import median_time

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402


def timed(runner: EarlyExitRunner, batches: list, repeats: int):
    return median_time(lambda: runner.run_batches(batches), repeats, warmup=lambda: runner.run_batches(batches[:1]))


@torch.no_grad()
def decision_overhead(model, batches: list, policy: str, repeats: int) -> dict:
    """Upper bound on the per-batch cost of early exit's bookkeeping at this batch size:
    the policy's decisions after every layer, plus one row selection (compaction) per
    layer boundary, against the full model's time for the same batch."""
    from adaptive_exit.policies import build_policy
    from adaptive_exit.runtime.staged import all_exit_outputs, stage_costs

    batch = batches[0]
    outputs = all_exit_outputs(model, batch)
    costs = stage_costs(model)
    policy = build_policy(policy)

    def decide():
        state = policy.init(outputs[0].shape[0], costs, outputs[0].device)
        for k, out in enumerate(outputs):
            policy.step(k, out, state)

    state = model.run_stage(0, model.begin(batch))
    keep = torch.arange(outputs[0].shape[0] // 2)
    timings = {}
    for name, fn in (("decide", decide), ("select", lambda: model.select(state, keep)),
                     ("full", lambda: all_exit_outputs(model, batch))):
        timings[name] = median_time(fn, max(5, repeats))[0]
    per_batch = timings["decide"] + (model.num_stages - 1) * timings["select"]
    return {"decisions_s": timings["decide"], "select_s": timings["select"], "per_batch_s": per_batch,
            "full_batch_s": timings["full"], "fraction_of_full": per_batch / timings["full"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/sst2-pabee", help="a text run folder with config.yaml and model/")
    parser.add_argument("--policy", default="patience:2")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--repeats", type=int, default=3)
    add_save_flag(parser)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe, _ = load_recipe(Path(args.run) / "config.yaml", [f"run_dir={args.run}"])
    pipeline = Pipeline(recipe)
    model, _ = pipeline.load_model()
    split = recipe.eval.split

    one = list(pipeline.batches(model, split, 1))
    one_seconds, reference = timed(EarlyExitRunner(model, args.policy), one, 1)
    num = reference.exit_stage.shape[0]
    ref_labels = reference.output.argmax(-1)
    rows = [{"mode": "pabee one-at-a-time", "batch_size": 1, "seconds": one_seconds, "samples_per_s": num / one_seconds,
             "speedup_layers": reference.speedup}]
    agree = {}
    for bs in args.batch_sizes:
        batches = list(pipeline.batches(model, split, bs))
        for mode, spec, runner_mode in (("full", "full", "compact"), ("pabee batch-sync", args.policy, "batch-sync"),
                                        ("pabee compaction", args.policy, "compact")):
            seconds, result = timed(EarlyExitRunner(model, spec, mode=runner_mode), batches, args.repeats)
            rows.append({"mode": mode, "batch_size": bs, "seconds": seconds, "samples_per_s": num / seconds,
                         "speedup_layers": result.speedup})
            if spec != "full":
                agree[f"{mode}@{bs}"] = {
                    "exit_layers_equal": float((result.exit_stage == reference.exit_stage).double().mean()),
                    "labels_equal": float((result.output.argmax(-1) == ref_labels).double().mean()),
                }
    overhead = decision_overhead(model, list(pipeline.batches(model, split, 32)), args.policy, args.repeats)
    by = {(r["mode"], r["batch_size"]): r for r in rows}
    for bs in args.batch_sizes:
        comp = by[("pabee compaction", bs)]
        comp["vs_batch_sync"] = comp["samples_per_s"] / by[("pabee batch-sync", bs)]["samples_per_s"]
        comp["vs_one_at_a_time"] = comp["samples_per_s"] / rows[0]["samples_per_s"]
        comp["vs_full"] = comp["samples_per_s"] / by[("full", bs)]["samples_per_s"]

    print(f"{args.run}: {num} {split} samples, policy {args.policy}, {torch.get_num_threads()} threads")
    print("| mode | batch | samples/s | layer speed-up | compaction vs batch-sync | vs one-at-a-time | vs full |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        extra = [f"{r[k]:.2f}x" if k in r else "" for k in ("vs_batch_sync", "vs_one_at_a_time", "vs_full")]
        print(f"| {r['mode']} | {r['batch_size']} | {r['samples_per_s']:.1f} | {r['speedup_layers']:.2f}x | " + " | ".join(extra) + " |")
    print(f"policy decisions + compaction at batch 32: {1000 * overhead['per_batch_s']:.2f} ms per batch = "
          f"{100 * overhead['fraction_of_full']:.2f}% of the full model's {1000 * overhead['full_batch_s']:.1f} ms")
    worst = min(min(a.values()) for a in agree.values())
    print(f"agreement with one-at-a-time (exit layer and label), worst mode: {worst:.4f}")
    out = results_path("text_throughput.json", args.save)
    out.write_text(json.dumps({"run": args.run, "policy": args.policy, "split": split, "num_samples": num,
                               "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                               "torch": torch.__version__, "rows": rows, "agreement": agree, "overhead_batch32": overhead}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

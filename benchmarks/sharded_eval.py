"""Throughput of sharded evaluation (trace recording) with 1 vs N processes.

Launches ``torchrun --nproc_per_node N`` on this script's worker mode for each N,
splitting the machine's cores evenly between processes (threads = cores / N), and
times ``Pipeline.record`` (every stage of every batch and the per-sample quality
metrics, gathered in order) on the main process after a barrier. Reports whether
every N gives the identical trace (bit-identical needs equal thread counts; the
2-process test in tests/scaleout checks that) and the largest difference.

    python benchmarks/sharded_eval.py RECIPE [key=value ...] [--procs 1 2] [--cores 2]

RECIPE's run folder must hold a trained model (``adaptive-exit train RECIPE`` first).
Prints a table and writes benchmarks/results/sharded_eval_<domain>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402


def worker(recipe_path: str, overrides: list[str], out: str) -> None:
    from adaptive_exit.app.config import load_recipe
    from adaptive_exit.runtime.distributed import current_shard
    from adaptive_exit.app.pipeline import Pipeline

    recipe, _ = load_recipe(recipe_path, overrides)
    pipeline = Pipeline(recipe)
    shard = current_shard()
    pipeline.trace_path = lambda split: Path(out).with_suffix(".pt")  # leave the run folder's traces alone
    pipeline.record()  # warm-up: tokenizer/model caches, first-call allocations
    shard.barrier()
    start = time.perf_counter()
    trace = pipeline.record()
    seconds = time.perf_counter() - start
    if shard.is_main:
        Path(out).write_text(json.dumps({"seconds": seconds, "num_samples": trace.num_samples, "world": shard.world,
                                         "threads": torch.get_num_threads()}))


def launch(recipe: str, overrides: list[str], procs: int, cores: int, out: Path) -> dict:
    threads = max(1, cores // procs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), ADAPTIVE_EXIT_BENCH_WORKER="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           __file__, recipe, *overrides, "--out", str(out)]
    subprocess.run(cmd, env=env, check=True)
    result = json.loads(out.read_text())
    result["samples_per_s"] = result["num_samples"] / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    add_save_flag(parser)
    args = parser.parse_args()
    if os.environ.get("ADAPTIVE_EXIT_BENCH_WORKER"):
        worker(args.recipe, args.overrides, args.out)
        return

    from adaptive_exit.app.config import load_recipe
    from adaptive_exit.runtime.traces import Trace

    recipe, _ = load_recipe(args.recipe, args.overrides)
    rows, traces = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for procs in args.procs:
            out = Path(tmp) / f"procs{procs}.json"
            row = launch(args.recipe, args.overrides, procs, args.cores, out)
            traces[procs] = Trace.load(out.with_suffix(".pt"))
            rows.append(row)
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["speedup_vs_first"] = row["samples_per_s"] / base
    first = traces[args.procs[0]]
    # Bit-identical only at equal thread counts (tested in tests/scaleout); here the thread
    # count changes with the process count, so float reductions may differ in the last bits.
    identical = all(torch.equal(first.outputs, t.outputs) for t in traces.values())
    max_diff = max(float((first.outputs - t.outputs).abs().max()) for t in traces.values())
    print(f"{recipe.domain} ({recipe.eval.split}, batch {recipe.eval.batch_size}, {args.cores} cores)")
    print("| processes | threads each | seconds | samples/s | vs 1st |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['world']} | {row['threads']} | {row['seconds']:.2f} | {row['samples_per_s']:.1f} | {row['speedup_vs_first']:.2f}x |")
    print(f"identical traces across process counts: {identical} (max abs difference {max_diff:.2e})")
    path = results_path(f"sharded_eval_{recipe.domain}.json", args.save)
    path.write_text(json.dumps({"recipe": args.recipe, "overrides": args.overrides, "domain": recipe.domain,
                                "split": recipe.eval.split, "batch_size": recipe.eval.batch_size, "cores": args.cores,
                                "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                                "rows": rows, "identical_traces": identical,
                                "max_abs_difference": max_diff}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

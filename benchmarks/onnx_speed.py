"""ONNX Runtime vs. PyTorch eager: samples/s of the full model and of early exit.

On the dev split of a trained text run (default: the SST-2 MiniLM recipe) the model is
exported with ``adaptive-exit export`` (fp32, and int8 with ``--int8``) into a scratch
folder, then every combination of {PyTorch, ONNX fp32, ONNX int8} x {full, early exit}
runs the whole split at each batch size through the same runner (compaction on). The
table gives samples/s, the speed-up over PyTorch full at the same batch size, the
accuracy and whether the predictions equal PyTorch's for the same policy (ONNX fp32 must
give the same exit layers and labels; int8 reports its agreement, it is a different model).

    python benchmarks/onnx_speed.py [--run runs/sst2-pabee] [--policy entropy:0.3] [--batch-sizes 1 32] [--threads 1]

Prints a table and writes runs/benchmarks/onnx_speed.json (benchmarks/results/ with --save).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from adaptive_exit.app.config import load_recipe
from adaptive_exit.app.domain import get_domain
from adaptive_exit.app.export_command import run_export
from adaptive_exit.deploy.onnx import OnnxStagedModel
from adaptive_exit.app.pipeline import Pipeline
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.timing import median_time

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import add_save_flag, print_table, results_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/sst2-pabee", help="a text run folder with config.yaml and model/")
    parser.add_argument("--policy", default="entropy:0.3", help="the early-exit policy (default: entropy:0.3)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads (default 1)")
    add_save_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe, _ = load_recipe(Path(args.run) / "config.yaml", [f"run_dir={args.run}"])
    pipeline = Pipeline(recipe)
    model, _ = pipeline.load_model()
    split = recipe.eval.split
    labels = None

    with tempfile.TemporaryDirectory() as scratch:
        engines = {"pytorch": model}
        for name, int8 in (("onnx fp32", False), ("onnx int8", True)):
            folder = Path(scratch) / name.replace(" ", "-")
            print(run_export(Path(args.run) / "model", folder, int8=int8))
            engines[name] = OnnxStagedModel(folder, threads=args.threads)
        rows, reference = [], {}
        for bs in args.batch_sizes:
            batches = list(pipeline.batches(model, split, bs))
            if labels is None:
                labels = torch.cat([b["labels"] for b in batches])
            for engine, staged in engines.items():
                for mode, spec in (("full", "full"), ("early exit", args.policy)):
                    runner = EarlyExitRunner(staged, spec)
                    seconds, result = median_time(lambda: runner.run_batches(batches), args.repeats,
                                                  warmup=lambda: runner.run_batches(batches[:2]))
                    predicted = torch.as_tensor(result.output).argmax(-1)
                    exits = torch.as_tensor(result.exit_stage)
                    key = (mode, bs)
                    if engine == "pytorch":
                        reference[key] = (predicted, exits)
                    same_labels = float((predicted == reference[key][0]).double().mean())
                    same_exits = float((exits == reference[key][1]).double().mean())
                    rows.append({"engine": engine, "mode": mode, "policy": spec, "batch_size": bs,
                                 "samples_per_s": len(labels) / seconds, "seconds": seconds,
                                 "accuracy": float((predicted == labels).double().mean()),
                                 "mean_layers": float(exits.double().mean() + 1), "labels_equal_pytorch": same_labels,
                                 "exits_equal_pytorch": same_exits})
    base = {r["batch_size"]: r["samples_per_s"] for r in rows if r["engine"] == "pytorch" and r["mode"] == "full"}
    for r in rows:
        r["vs_pytorch_full"] = r["samples_per_s"] / base[r["batch_size"]]

    print(f"{args.run}: {len(labels)} {split} samples, early exit = {args.policy}, {args.threads} thread(s)")
    print_table(["engine", "mode", "batch", "samples/s", "vs PyTorch full", "accuracy", "mean layers",
                 "same labels / exits as PyTorch"],
                [[r["engine"], r["mode"], str(r["batch_size"]), f"{r['samples_per_s']:.1f}", f"{r['vs_pytorch_full']:.2f}x",
                  f"{r['accuracy']:.4f}", f"{r['mean_layers']:.2f}",
                  f"{r['labels_equal_pytorch']:.4f} / {r['exits_equal_pytorch']:.4f}"] for r in rows])
    out = results_path("onnx_speed.json", args.save)
    out.write_text(json.dumps({"run": args.run, "policy": args.policy, "split": split, "num_samples": len(labels),
                               "threads": args.threads, "machine": platform.processor() or platform.machine(),
                               "torch": torch.__version__, "onnxruntime": _ort_version(), "rows": rows}, indent=2))
    print(f"wrote {out}")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    get_domain("text")  # fail early, with the install hint, when the text extra is missing
    main()

"""Does quality rise with stages? Per-stage means and paired-bootstrap 95% intervals of
the change between adjacent stages (and first -> last), from a run's recorded trace.

    python benchmarks/stage_curve.py --run runs/speech-voicebank --metrics pesq si_sdr [--split test]

Works for any run whose trace has per-sample quality (speech) or targets the oracle can
score per sample (accuracy, entity_f1, ...). Prints a table and writes
runs/benchmarks/stage_curve_<run name>.json
(benchmarks/results/ with --save).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from adaptive_exit.app.config import load_recipe
from adaptive_exit.evaluation import per_sample_quality
from adaptive_exit.app.pipeline import Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402


def paired_steps(quality: np.ndarray, resamples: int, seed: int) -> list[dict]:
    """Mean change and bootstrap 95% interval for each adjacent pair of stages and first -> last."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, quality.shape[0], (resamples, quality.shape[0]))
    last = quality.shape[1] - 1
    out = []
    for a, b in [(k, k + 1) for k in range(last)] + [(0, last)]:
        diff = quality[:, b] - quality[:, a]
        boot = diff[index].mean(axis=1)
        low, high = np.percentile(boot, [2.5, 97.5])
        out.append({"from": a + 1, "to": b + 1, "mean": float(diff.mean()), "ci95": [float(low), float(high)],
                    "verdict": "rises" if low > 0 else "falls" if high < 0 else "no clear change"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder with config.yaml and a recorded trace")
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--split", default=None, help="default: the recipe's eval split")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    add_save_flag(parser)
    args = parser.parse_args()

    recipe, _ = load_recipe(Path(args.run) / "config.yaml", [f"run_dir={args.run}"])
    pipeline = Pipeline(recipe)
    split = args.split or recipe.eval.split
    trace = pipeline.load_trace(split)
    report = {"run": args.run, "split": split, "num_samples": trace.num_samples, "metrics": {}}
    for metric in args.metrics:
        quality = per_sample_quality(trace, metric).numpy()
        quality = quality[np.isfinite(quality).all(axis=1)]  # unscorable samples are left out, as in the report
        steps = paired_steps(quality, args.resamples, args.seed)
        report["metrics"][metric] = {"per_stage_mean": quality.mean(axis=0).tolist(), "steps": steps,
                                     "num_scored": int(quality.shape[0])}
        print(f"{metric} per stage: " + " / ".join(f"{v:.3f}" for v in quality.mean(axis=0)))
        print("| step | mean change | 95% interval | verdict |\n|---|---|---|---|")
        for s in steps:
            print(f"| {s['from']} -> {s['to']} | {s['mean']:+.3f} | [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}] | {s['verdict']} |")
    out = results_path(f"stage_curve_{Path(args.run).name}.json", args.save)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

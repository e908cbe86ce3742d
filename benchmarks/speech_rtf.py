"""Speech real-time factor per stage count and at calibrated operating points, 1 and 2 threads.

Enhances every utterance of the evaluation split one file at a time (batch 1, as a
device would), timing STFT + network + inverse STFT, and reports RTF = processing
time / audio duration for static truncation at every depth (``budget:K``), the
model's default policy and every policy in its budget table (from
``adaptive-exit calibrate ... --levels`` or ``adaptive-exit budget-sweep``).

    python benchmarks/speech_rtf.py [--run runs/speech-voicebank] [--threads 1 2] [--repeats 3]

Prints a table and writes runs/benchmarks/speech_rtf.json (benchmarks/results/ with --save).
"""
from __future__ import annotations

import argparse
import json
import sys
import platform
import statistics
import time
from pathlib import Path

import torch

from adaptive_exit.budgets import BudgetTable
from adaptive_exit.app.config import load_recipe
from adaptive_exit.app.pipeline import Pipeline
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.speech.enhance import enhance_waveform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402


def enhance_all(runner: EarlyExitRunner, audio: list[torch.Tensor]) -> tuple[float, float]:
    """Seconds to enhance every utterance one by one, and the mean stages used."""
    stages = []
    start = time.perf_counter()
    for wav in audio:
        _, result = enhance_waveform(runner, wav)
        stages.append(int(result.exit_stage[0]) + 1)
    return time.perf_counter() - start, sum(stages) / len(stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/speech-voicebank")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    add_save_flag(parser)
    args = parser.parse_args()
    recipe, _ = load_recipe(Path(args.run) / "config.yaml", [f"run_dir={args.run}"])
    pipeline = Pipeline(recipe)
    model, default_policy = pipeline.load_model()
    samples = pipeline.domain.load_split(pipeline.data_cfg, recipe.eval.split, recipe.seed)
    audio = [torch.as_tensor(samples[i]["noisy"]) for i in range(len(samples))]
    seconds_of_audio = sum(len(a) for a in audio) / 16000
    points = [(f"static {k}/{model.num_stages}", f"budget:{k}") for k in range(1, model.num_stages + 1)]
    points.append(("default policy", default_policy.spec()))
    points += [(f"calibrated {budget}", policy) for budget, policy in BudgetTable.load(pipeline.model_dir).to_dict().items()]

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for label, policy in points:
            runner = EarlyExitRunner(model, policy)
            enhance_all(runner, audio[:2])  # warm-up
            runs = [enhance_all(runner, audio) for _ in range(args.repeats)]
            seconds = statistics.median(r[0] for r in runs)
            rows.append({"threads": threads, "point": label, "policy": policy, "mean_stages": runs[0][1],
                         "seconds": seconds, "rtf": seconds / seconds_of_audio})
    print(f"{args.run}: {len(audio)} utterances, {seconds_of_audio:.1f} s of audio, batch 1")
    print("| threads | operating point | mean stages | RTF |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['point']} | {r['mean_stages']:.2f} | {r['rtf']:.4f} |")
    out = results_path("speech_rtf.json", args.save)
    out.write_text(json.dumps({"run": args.run, "num_utterances": len(audio), "audio_seconds": seconds_of_audio,
                               "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

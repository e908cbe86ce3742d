"""Does compaction show up as wall-clock time? (core runner benchmark)

A toy staged model with equal-cost stages, batch 64, and a policy that exits
half of the remaining batch at each stage (32, 16, 8, ... samples). Reports the
wall-clock of the full model, of compaction and of batch-sync, the achieved
fraction of the ideal speed-up (stages / mean stages used), and the overhead of
policy decisions and compaction per stage as a fraction of one stage's time.

    python benchmarks/core_runner.py [--threads 2] [--repeats 20]

Prints a table and writes runs/benchmarks/core_runner.json (benchmarks/results/ with --save).
"""
from __future__ import annotations

import argparse
import json
import sys
import platform
import time
from pathlib import Path

import torch

from adaptive_exit.runtime import timing
from adaptive_exit.policies import ExitPolicy, Patience
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.app.toy import ToyModelConfig, ToyStagedModel
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402



class HalvingPolicy(ExitPolicy):
    """Half of the remaining samples exit at each stage (the rest at the last)."""

    def __init__(self, batch_size: int, num_stages: int):
        stages, remaining = [], batch_size
        for k in range(num_stages - 1):
            stages += [k] * (remaining // 2)
            remaining -= remaining // 2
        stages += [num_stages - 1] * remaining
        self.planned = torch.tensor(stages)[torch.randperm(batch_size, generator=torch.Generator().manual_seed(0))]

    def _init(self, batch_size, stage_costs, device):
        return {"planned": self.planned.to(device)}

    def step(self, k, output, state):
        return state["planned"] == k

    def spec(self):
        return "halving"


class Timed(ExitPolicy):
    """Wraps a policy and accumulates the time spent in its decisions and selection."""

    def __init__(self, inner: ExitPolicy):
        self.inner, self.seconds = inner, 0.0

    def _init(self, batch_size, stage_costs, device):
        return self.inner.init(batch_size, stage_costs, device)

    def step(self, k, output, state):
        start = time.perf_counter()
        done = self.inner.step(k, output, state)
        self.seconds += time.perf_counter() - start
        return done

    def select(self, state, keep):
        start = time.perf_counter()
        out = self.inner.select(state, keep)
        self.seconds += time.perf_counter() - start
        return out

    def spec(self):
        return self.inner.spec()


class TimedSelect:
    """Wraps a staged model and times its ``select`` (the compaction itself)."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0
        self.num_stages = model.num_stages

    def begin(self, batch):
        return self.model.begin(batch)

    def run_stage(self, k, state):
        return self.model.run_stage(k, state)

    def exit_output(self, k, state):
        return self.model.exit_output(k, state)

    def stage_cost(self, k):
        return self.model.stage_cost(k)

    def select(self, state, keep):
        start = time.perf_counter()
        out = self.model.select(state, keep)
        self.seconds += time.perf_counter() - start
        return out


def median_time(fn, repeats: int) -> float:
    return timing.median_time(fn, repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--stages", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=None, help="output JSON (default: core_runner.json under runs/benchmarks/, "
                        "or benchmarks/results/ with --save)")
    add_save_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = ToyStagedModel(ToyModelConfig(input_dim=16, hidden=args.hidden, num_stages=args.stages)).eval()
    batch = {"x": torch.randn(args.batch, args.tokens, 16), "mask": torch.ones(args.batch, args.tokens, dtype=torch.bool)}
    policy = HalvingPolicy(args.batch, args.stages)

    full = EarlyExitRunner(model, "full")
    compact = EarlyExitRunner(model, policy, mode="compact")
    synced = EarlyExitRunner(model, policy, mode="batch-sync")
    result = compact(batch)
    assert torch.equal(result.exit_stage, synced(batch).exit_stage)
    ideal = result.speedup

    t_full = median_time(lambda: full(batch), args.repeats)
    t_compact = median_time(lambda: compact(batch), args.repeats)
    t_sync = median_time(lambda: synced(batch), args.repeats)

    # Overhead of a real policy's decisions plus compaction, at full batch per stage:
    # patience:1 over stages that keep every row (the largest per-stage cost).
    timed_policy = Timed(Patience(args.stages + 1))
    timed_model = TimedSelect(model)
    runner = EarlyExitRunner(timed_model, timed_policy)
    runner(batch)
    timed_policy.seconds = timed_model.seconds = 0.0
    t_patience = median_time(lambda: runner(batch), args.repeats)
    decisions = timed_policy.seconds / (args.repeats + 1)
    # Compaction cost: select rows of the full-batch state once per stage.
    state = model.run_stage(0, model.begin(batch))
    keep = torch.arange(args.batch // 2)
    t_select = median_time(lambda: model.select(state, keep), args.repeats * 10)
    stage_time = t_full / args.stages
    overhead = (decisions / args.stages + t_select) / stage_time

    report = {
        "device": platform.processor() or platform.machine(),
        "threads": args.threads,
        "batch_size": args.batch,
        "num_stages": args.stages,
        "hidden": args.hidden,
        "tokens_per_sample": args.tokens,
        "exit_histogram": result.histogram(),
        "mean_stages": result.mean_stages,
        "ideal_speedup": ideal,
        "full_ms": 1e3 * t_full,
        "compact_ms": 1e3 * t_compact,
        "batch_sync_ms": 1e3 * t_sync,
        "wall_speedup_compact": t_full / t_compact,
        "fraction_of_ideal": (t_full / t_compact) / ideal,
        "compact_vs_batch_sync": t_sync / t_compact,
        "stage_ms": 1e3 * stage_time,
        "policy_decision_ms_per_stage": 1e3 * decisions / args.stages,
        "select_ms_per_stage": 1e3 * t_select,
        "overhead_fraction_of_stage": overhead,
        "patience_full_depth_ms": 1e3 * t_patience,
    }
    print(f"{'mode':<12} {'ms/batch':>10} {'speed-up':>9}")
    for label, ms in (("full", report["full_ms"]), ("batch-sync", report["batch_sync_ms"]), ("compact", report["compact_ms"])):
        print(f"{label:<12} {ms:>10.2f} {report['full_ms'] / ms:>8.2f}x")
    print(f"ideal speed-up {ideal:.2f}x (mean stages {result.mean_stages:.2f} of {args.stages}); "
          f"compaction reaches {100 * report['fraction_of_ideal']:.1f}% of it")
    print(f"policy + compaction overhead per stage: {100 * overhead:.2f}% of a stage "
          f"({report['policy_decision_ms_per_stage']:.3f} ms decisions + {report['select_ms_per_stage']:.3f} ms select, stage {report['stage_ms']:.2f} ms)")
    out = Path(args.out) if args.out else results_path("core_runner.json", args.save)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()

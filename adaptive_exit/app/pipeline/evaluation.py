"""Recording traces, sweeping policies on them, and timing the default policy."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from adaptive_exit import io
from adaptive_exit.evaluation import build_report, write_report
from adaptive_exit.policies import ExitPolicy, build_policy
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.timing import median_time
from adaptive_exit.runtime.traces import Trace, record_trace, replay

from .context import RunContext, check_split_name

logger = logging.getLogger(__name__)


class Traces:
    """Every stage's outputs and quality on a split, recorded once and reused."""

    def __init__(self, run: RunContext):
        self.run = run

    def record(self, split: str | None = None) -> Trace:
        """Sharded across launched processes; every rank gets the whole trace, the main
        process saves it."""
        run = self.run
        split = check_split_name(split or run.recipe.eval.split)
        model, _ = run.load_model()
        batches = run.batches(model, split, run.recipe.eval.batch_size)
        logger.info("recording every exit on %s/%s (%d batches)", run.domain.name, split, len(batches))
        trace = record_trace(model, batches, targets=run.domain.targets, quality=run.domain.quality,
                             pad_value=run.domain.trace_pad_value(model), target_pad_value=run.domain.target_pad_value(),
                             meta={"split": split, "domain": run.domain.name}, shard=run.shard)
        if run.shard.is_main:
            trace.save(run.trace_path(split))
        run.shard.barrier()
        return trace

    def load(self, split: str | None = None) -> Trace:
        path = self.run.trace_path(split or self.run.recipe.eval.split)
        return Trace.load(path) if path.exists() else self.record(split)


class SweepStep:
    def __init__(self, run: RunContext, traces: Traces):
        self.run, self.traces = run, traces

    def __call__(self, trace: Trace | None = None) -> dict[str, Any] | None:
        run = self.run
        trace = trace or self.traces.load()
        if not run.shard.is_main:
            return None
        ev = run.recipe.eval
        logger.info("sweeping %d policy families on %d samples", len(ev.sweeps), trace.num_samples)
        report = build_report(trace, ev.sweeps, ev.metrics)
        previous = run.run_dir / "results.json"
        if previous.exists():  # keep what other steps measured: timing (evaluate), calibration (run)
            try:
                old = io.read_json(previous)
            except ValueError:
                old = {}
            for key in ("timing", "extras", "calibration", "certified"):
                if key in old:
                    report[key] = old[key]
        write_report(report, run.run_dir, title=f"{run.domain.name}: {Path(run.recipe.run_dir).name}")
        return report


class TimingStep:
    """Wall-clock of the full model, the policy with compaction and in batch-sync mode, at
    ``eval.timing_batch_size``; checks that both modes give the same exits as trace replay."""

    def __init__(self, run: RunContext):
        self.run = run

    def __call__(self, policy: ExitPolicy | str | None = None) -> dict[str, Any]:
        run, ev = self.run, self.run.recipe.eval
        model, default_policy = run.load_model()
        policy = build_policy(policy) if policy is not None else default_policy
        batches = list(run.batches(model, ev.split, ev.timing_batch_size, limit=ev.timing_samples))  # collated outside the clock
        logger.info("timing %s at batch %d (%d threads): full model, compaction, batch-sync",
                    policy.spec(), ev.timing_batch_size, torch.get_num_threads())
        timings: dict[str, Any] = {"batch_size": ev.timing_batch_size, "policy": policy.spec(), "threads": torch.get_num_threads()}
        results = {}
        for label, spec, mode in (("full", "full", "compact"), ("compact", policy, "compact"), ("batch_sync", policy, "batch-sync")):
            runner = EarlyExitRunner(model, spec, mode=mode)
            timings[f"{label}_seconds"], results[label] = median_time(
                lambda: runner.run_batches(batches), ev.timing_repeats, warmup=lambda: runner.run_batches(batches[:1]))
        num = results["full"].exit_stage.shape[0]
        timings["num_samples"] = num
        timings["layer_speedup"] = results["compact"].speedup
        timings["wall_speedup_compact"] = timings["full_seconds"] / timings["compact_seconds"]
        timings["wall_speedup_batch_sync"] = timings["full_seconds"] / timings["batch_sync_seconds"]
        timings["compact_vs_batch_sync"] = timings["batch_sync_seconds"] / timings["compact_seconds"]
        timings["modes_agree"] = bool(torch.equal(results["compact"].exit_stage, results["batch_sync"].exit_stage))
        trace_file = run.trace_path(ev.split)
        if trace_file.exists():
            trace = Trace.load(trace_file)
            if trace.num_samples >= num:
                replayed = replay(trace.subset(list(range(num))), policy).exit_stage
                timings["matches_trace_replay"] = bool(torch.equal(replayed, results["compact"].exit_stage))
        return timings


class EvaluateStep:
    """Record (sharded), then sweep, time and write the report on the main process only;
    other ranks return None."""

    def __init__(self, run: RunContext, traces: Traces, sweep: SweepStep, timing: TimingStep):
        self.run, self.traces, self.sweep, self.timing = run, traces, sweep, timing

    def __call__(self) -> dict[str, Any] | None:
        run = self.run
        trace = self.traces.record()
        if not run.shard.is_main:
            return None
        report = self.sweep(trace)
        extras = run.domain.report_extras(run.samples(run.recipe.eval.split))
        if extras:
            report["extras"] = extras
        report["timing"] = self.timing()
        write_report(report, run.run_dir, title=f"{run.domain.name}: {Path(run.recipe.run_dir).name}")
        return report

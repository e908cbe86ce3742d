"""The recipe pipeline behind the CLI: train -> record traces -> sweep -> time -> calibrate.

Everything a run produces lands in its run directory::

    config.yaml          the resolved recipe
    model/               the trained model (domain format) with its default policy
    checkpoint/last.pt   the training checkpoint (resume)
    train_history.json   loss and evaluation log
    traces/<split>.pt    every stage's exit output on a split
    results.json         per-exit quality, sweeps, static truncation, oracle, Pareto front, timing
    sweep.csv, plot.png  the same rows as a table and a quality-vs-speed-up plot
    calibration.json     the calibrated policy with achieved cost on held-out data
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import Tensor

from adaptive_exit import io
from adaptive_exit.budgets import BudgetSpec
from adaptive_exit.budgets import calibrate as calibrate_trace
from adaptive_exit.budgets import BudgetTable, Calibration, candidate_policies, split_indices
from adaptive_exit.budgets.costs import CostModel, sample_costs
from adaptive_exit.app.config import Recipe, from_dict, save_resolved
from adaptive_exit.runtime.distributed import current_shard
from adaptive_exit.app.domain import Domain, get_domain
from adaptive_exit.policies import ExitPolicy, build_policy
from adaptive_exit.runtime.timing import median_time
from adaptive_exit.evaluation import build_report, format_table, metric_for, rows_from_report, score, write_report
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.traces import Trace, record_trace, replay
from adaptive_exit.training import Trainer, set_seed

logger = logging.getLogger(__name__)

BEST_FILE = "best.json"  # train.keep_best: the best validation score so far


class Pipeline:
    """One recipe's run directory and the steps that fill it."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.domain: Domain = get_domain(recipe.domain)
        self.model_cfg = from_dict(self.domain.model_config, recipe.model, "model")
        self.data_cfg = from_dict(self.domain.data_config, recipe.data, "data")
        self.run_dir = Path(recipe.run_dir)
        self.model_dir = self.run_dir / "model"
        self.shard = current_shard()
        self._cost_tables: dict[tuple[str, str], Tensor] = {}
        try:  # parsed once: the model saves this object's canonical spec
            self.policy: ExitPolicy = build_policy(recipe.eval.policy)
        except ValueError as exc:
            raise ValueError(f"eval.policy: {exc}") from None
        try:
            self.budget = BudgetSpec.parse(recipe.calibrate.budget) if recipe.calibrate.budget else None
            self.levels = [BudgetSpec.parse(b) for b in recipe.calibrate.levels]
        except ValueError as exc:
            raise ValueError(f"calibrate: {exc}") from None
        for where, split in (("eval.split", recipe.eval.split), ("calibrate.split", recipe.calibrate.split),
                             ("train.eval_split", recipe.train.eval_split)):
            try:
                check_split_name(split)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None

    # ------------------------------------------------------------------ helpers

    def batches(self, model, split: str, batch_size: int, limit: int | None = None) -> "Batches":
        """The split (its first ``limit`` samples) in fixed batches, collated on access (a
        shard collates only its own)."""
        samples = self.domain.load_split(self.data_cfg, split, self.recipe.seed)
        if limit is not None:
            samples = _Head(samples, limit)
        if len(samples) == 0:
            raise ValueError(f"split {split!r} of domain {self.domain.name!r} is empty")
        return Batches(samples, batch_size, lambda items: self.domain.collate(model, items))

    def load_model(self):
        return self.domain.load_model(self.model_dir)

    def trace_path(self, split: str) -> Path:
        return self.run_dir / "traces" / f"{check_split_name(split)}.pt"

    # ------------------------------------------------------------------ steps

    def train(self):
        save_resolved(self.recipe, self.run_dir)
        set_seed(self.recipe.seed)
        model = self.domain.build_model(self.model_cfg, self.data_cfg)
        train_data = self.domain.load_split(self.data_cfg, "train", self.recipe.seed)
        trainer = Trainer(
            model,
            train_data,
            lambda samples: self.domain.collate(model, samples),
            self.domain.objective(self.recipe.train, model),
            self.recipe.train,
            self.run_dir,
            eval_fn=self._validation(model),
            lengths=[self.domain.sample_length(s) or 0 for s in train_data] if self.recipe.train.group_by_length else None,
        )
        fresh = not (self.recipe.train.resume and trainer.checkpoint_path.exists())
        if fresh and self.shard.is_main:  # a best score from an earlier run in this folder must not block saving
            (self.run_dir / BEST_FILE).unlink(missing_ok=True)
        self.shard.barrier()
        model = trainer.train()
        if self.recipe.train.keep_best and (self.run_dir / BEST_FILE).exists():
            self.shard.barrier()
            model, _ = self.load_model()
            logger.info("kept the best validated model: %s", (self.run_dir / BEST_FILE).read_text().strip())
            saved = True
        else:
            if self.recipe.train.keep_best:
                logger.warning("train.keep_best: no validation score was a number; saving the last model")
            saved = False
        changed = self.domain.post_train(model, train_data, lambda samples: self.domain.collate(model, samples),
                                         self.model_cfg, self.run_dir)
        if (changed or not saved) and self.shard.is_main:
            self.domain.save_model(model, self.model_dir, self.policy)
            logger.info("model saved to %s", self.model_dir)
        self.shard.barrier()
        return model
        if self.recipe.train.keep_best:
            logger.warning("train.keep_best: no validation score was a number; saving the last model")
        if self.shard.is_main:
            self.domain.save_model(model, self.model_dir, self.policy)
            logger.info("model saved to %s", self.model_dir)
        self.shard.barrier()
        return model

    def _validation(self, model) -> Callable[[Any], dict[str, float]] | None:
        """With ``train.eval_every``: score every exit on ``train.eval_split`` under the
        eval metrics; with ``train.keep_best``, save the model whenever its last exit beats
        the best score so far (kept in best.json, so a resumed run keeps comparing)."""
        cfg = self.recipe.train
        if not cfg.eval_every:
            return None
        metrics = list(self.recipe.eval.metrics)
        if cfg.keep_best and cfg.keep_best not in metrics:
            raise ValueError(f"train.keep_best={cfg.keep_best!r} must be one of eval.metrics {metrics}")
        keep_best_metric = None
        batches = self.batches(model, cfg.eval_split, self.recipe.eval.batch_size)
        best_path = self.run_dir / BEST_FILE

        def validate(raw) -> dict[str, float]:
            trace = record_trace(raw, batches, targets=self.domain.targets, quality=self.domain.quality,
                                 pad_value=self.domain.trace_pad_value(raw), target_pad_value=self.domain.target_pad_value(),
                                 progress=False, shard=self.shard)
            values = {}
            for k in range(trace.num_stages):
                stage = torch.full((trace.num_samples,), k, dtype=torch.long)
                values.update({f"{cfg.eval_split}_{m}_exit_{k + 1}": score(trace, stage, m) for m in metrics})
            if cfg.keep_best:
                nonlocal keep_best_metric
                keep_best_metric = keep_best_metric or metric_for(trace, cfg.keep_best)
                value = values[f"{cfg.eval_split}_{cfg.keep_best}_exit_{trace.num_stages}"]
                best = json.loads(best_path.read_text())["value"] if best_path.exists() else math.nan
                if keep_best_metric.better(value, best):
                    if self.shard.is_main:
                        self.domain.save_model(raw, self.model_dir, self.policy)
                        io.write_text(best_path, json.dumps({"metric": cfg.keep_best, "split": cfg.eval_split, "value": value}))
                    self.shard.barrier()
            return values

        return validate

    def record(self, split: str | None = None) -> Trace:
        """Every stage's outputs and quality on a split, sharded across launched
        processes; every rank gets the whole trace, the main process saves it."""
        split = split or self.recipe.eval.split
        check_split_name(split)
        model, _ = self.load_model()
        batches = self.batches(model, split, self.recipe.eval.batch_size)
        logger.info("recording every exit on %s/%s (%d batches)", self.domain.name, split, len(batches))
        trace = record_trace(
            model, batches, targets=self.domain.targets,
            quality=self.domain.quality, pad_value=self.domain.trace_pad_value(model),
            target_pad_value=self.domain.target_pad_value(),
            meta={"split": split, "domain": self.domain.name}, shard=self.shard,
        )
        if self.shard.is_main:
            trace.save(self.trace_path(split))
        self.shard.barrier()
        return trace

    def load_trace(self, split: str | None = None) -> Trace:
        split = split or self.recipe.eval.split
        path = self.trace_path(split)
        return Trace.load(path) if path.exists() else self.record(split)

    def sweep(self, trace: Trace | None = None) -> dict[str, Any] | None:
        trace = trace or self.load_trace()
        if not self.shard.is_main:
            return None
        ev = self.recipe.eval
        logger.info("sweeping %d policy families on %d samples", len(ev.sweeps), trace.num_samples)
        report = build_report(trace, ev.sweeps, ev.metrics)
        previous = self.run_dir / "results.json"
        if previous.exists():  # keep what other steps measured: timing (evaluate), calibration (run)
            try:
                old = json.loads(previous.read_text(encoding="utf-8"))
            except ValueError:
                old = {}
            for key in ("timing", "extras", "calibration"):
                if key in old:
                    report[key] = old[key]
        write_report(report, self.run_dir, title=f"{self.domain.name}: {Path(self.recipe.run_dir).name}")
        return report

    def time_policy(self, policy: ExitPolicy | str | None = None) -> dict[str, Any]:
        """Wall-clock of the full model, the policy with compaction and in batch-sync
        mode, at ``eval.timing_batch_size``; checks that both modes give the same
        exits as trace replay."""
        ev = self.recipe.eval
        model, default_policy = self.load_model()
        policy = build_policy(policy) if policy is not None else default_policy
        batches = list(self.batches(model, ev.split, ev.timing_batch_size, limit=ev.timing_samples))  # collated outside the clock
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
        trace_file = self.trace_path(ev.split)
        if trace_file.exists():
            trace = Trace.load(trace_file)
            if trace.num_samples >= num:
                replayed = replay(trace.subset(list(range(num))), policy).exit_stage
                timings["matches_trace_replay"] = bool(torch.equal(replayed, results["compact"].exit_stage))
        return timings

    def evaluate(self) -> dict[str, Any] | None:
        """Record (sharded), then sweep, time and write the report on the main
        process only; other ranks return None."""
        trace = self.record()
        if not self.shard.is_main:
            return None
        report = self.sweep(trace)
        extras = self.domain.report_extras(self.domain.load_split(self.data_cfg, self.recipe.eval.split, self.recipe.seed))
        if extras:
            report["extras"] = extras
        report["timing"] = self.time_policy()
        write_report(report, self.run_dir, title=f"{self.domain.name}: {Path(self.recipe.run_dir).name}")
        return report

    def cost_model(self, model, split: str, remeasure: bool = False) -> tuple[CostModel, list[int], list[float] | None]:
        """A cost model of ``model`` with representative inputs from ``split``, and every
        sample's input size (and audio duration). Profiles are cached in the model folder."""
        samples = self.domain.load_split(self.data_cfg, split, self.recipe.seed)
        sizes, durations, example_of_size = [], [], {}
        for i in range(len(samples)):
            batch = self.domain.collate(model, [samples[i]])
            size = self.domain.input_sizes(batch)
            if size is None:
                raise ValueError(f"domain {self.domain.name!r} gives no input sizes: FLOPs/latency budgets are unavailable")
            sizes.append(int(size[0]))
            example_of_size.setdefault(sizes[-1], i)
            seconds = self.domain.durations(batch)
            durations.append(None if seconds is None else float(seconds[0]))
        make_batch = lambda size: self.domain.collate(model, [samples[example_of_size[size]]])  # noqa: E731
        costs = CostModel(model, make_batch, cache_file=self.model_dir / "costs.json", remeasure=remeasure)
        return costs, sizes, (None if durations[0] is None else durations)

    def cost_table(self, split: str, unit: str, remeasure: bool = False) -> Tensor:
        """(N, L): each sample's cumulative cost after each stage in ``unit`` (computed
        once per split and unit: calibrating several budgets reuses it)."""
        key = (split, unit)
        if key not in self._cost_tables:
            self._cost_tables[key] = self._compute_cost_table(split, unit, remeasure)
        return self._cost_tables[key]

    def _compute_cost_table(self, split: str, unit: str, remeasure: bool = False) -> Tensor:
        model, _ = self.load_model()
        if unit in ("stages", "fraction"):
            num = len(self.domain.load_split(self.data_cfg, split, self.recipe.seed))
            return sample_costs(unit, model, sizes=[0] * num)
        logger.info("profiling %s per stage on %s (cached in %s)", unit, split, self.model_dir / "costs.json")
        costs, sizes, durations = self.cost_model(model, split, remeasure)
        return sample_costs(unit, model, sizes, costs, durations)

    def calibrate(self, budget: str | None = None, levels: Sequence[str] = (), remeasure: bool = False) -> dict[str, Any] | None:
        """Choose the best policy within the budget on the calibration split and make it
        the model's default; also calibrate ``levels`` (and ``calibrate.levels``) into the
        model's budget table for switching at run time. The main process writes; other
        ranks return None."""
        cal = self.recipe.calibrate
        budget = BudgetSpec.parse(budget) if budget else self.budget
        if budget is None:
            raise ValueError("no budget given: set calibrate.budget in the recipe or pass --budget (e.g. mean:0.5)")
        levels = [*self.levels, *(BudgetSpec.parse(b) for b in levels)]
        trace = self.load_trace(cal.split)
        if not self.shard.is_main:
            return None
        results = {}
        for b in [*levels, budget]:
            logger.info("calibrating to %s on %s", b, cal.split)
            results[str(b)] = self.calibrate_on(trace, b, remeasure=remeasure)
        main = results[str(budget)]
        BudgetTable.update(self.model_dir, {name: result.policy for name, result in results.items()})
        self.domain.set_default_policy(self.model_dir, main.policy)
        report = main.to_dict()
        if levels:
            report["levels"] = {name: r.to_dict() for name, r in results.items()}
        io.write_json(self.run_dir / "calibration.json", report)
        return report

    def calibrate_on(self, trace: Trace, budget: BudgetSpec, split: str | None = None, remeasure: bool = False) -> Calibration:
        """Calibrate one budget on the calibration half of ``trace``, report on the held-out half."""
        cal = self.recipe.calibrate
        families = cal.candidates or self.recipe.eval.sweeps
        if not families:
            raise ValueError("no candidate policies: set calibrate.candidates or eval.sweeps")
        dev_index, held_index = split_indices(trace.num_samples, cal.heldout_fraction, seed=self.recipe.seed)
        if budget.unit == "flops" and trace.sample_costs is not None:
            costs = trace.sample_costs  # the model counted each sample's FLOPs (token reduction)
        else:
            costs = self.cost_table(split or cal.split, budget.unit, remeasure) if budget.needs_cost_model else None
        calibration = trace.subset(dev_index)
        return calibrate_trace(
            calibration, candidate_policies(families, calibration), budget, self.recipe.eval.metrics[0],
            heldout=trace.subset(held_index),
            costs=None if costs is None else costs[dev_index], heldout_costs=None if costs is None else costs[held_index],
        )

    def run(self) -> dict[str, Any] | None:
        self.train()
        report = self.evaluate()
        calibration = self.calibrate() if self.budget else None
        if report is not None and calibration is not None:
            report["calibration"] = calibration
            io.write_json(self.run_dir / "results.json", report)
        return report


SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_split_name(split: str) -> str:
    """Split names become file names (traces/<split>.pt): letters, digits, '_', '-', '.' only."""
    if not isinstance(split, str) or not SPLIT_NAME.match(split) or ".." in split:
        raise ValueError(f"bad split name {split!r}: use letters, digits, '_', '-' or '.' (it names a file in traces/)")
    return split


class _Head(Sequence):
    """The first ``limit`` items of a dataset (datasets need not support slicing)."""

    def __init__(self, data: Sequence[Any], limit: int):
        self.data, self.size = data, min(limit, len(data))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        if not -self.size <= i < self.size:
            raise IndexError(i)
        return self.data[i % self.size]


class Batches(Sequence):
    """Fixed-size batches of a dataset, collated when indexed."""

    def __init__(self, samples: Sequence[Any], batch_size: int, collate: Callable[[list[Any]], Any]):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.samples, self.batch_size, self.collate = samples, batch_size, collate

    def __len__(self) -> int:
        return (len(self.samples) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, b):
        if isinstance(b, slice):
            return [self[i] for i in range(*b.indices(len(self)))]
        if not -len(self) <= b < len(self):
            raise IndexError(f"batch {b} out of range ({len(self)} batches)")
        start = (b % len(self)) * self.batch_size
        return self.collate([self.samples[j] for j in range(start, min(start + self.batch_size, len(self.samples)))])


def summary_table(report: dict[str, Any]) -> str:
    """The report's rows as a Markdown table (printed by the CLI)."""
    metrics = list(report["full_model"].keys())
    return format_table(rows_from_report(report), metrics)

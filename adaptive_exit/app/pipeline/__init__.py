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

Each step owns one job in its own module (:mod:`.training`, :mod:`.evaluation`,
:mod:`.calibration`; shared state in :mod:`.context`); :class:`Pipeline` wires them, and
``run`` goes through :attr:`Pipeline.STEPS` in order, so adding a step is one place.
"""
from __future__ import annotations

from typing import Any

from adaptive_exit import io
from adaptive_exit.app.config import Recipe
from adaptive_exit.runtime.traces import Trace

from .calibration import CalibrateStep
from .context import BEST_FILE, Batches, RunContext, check_split_name
from .costs import CostTables
from .evaluation import EvaluateStep, SweepStep, TimingStep, Traces
from .training import TrainStep


class Pipeline(RunContext):
    """One recipe's run directory and the steps that fill it."""

    #: what ``run`` does, in order: (step attribute, whether the recipe asks for it)
    STEPS = (("train", lambda p: True), ("evaluate", lambda p: True), ("calibrate", lambda p: p.budget is not None))

    def __init__(self, recipe: Recipe):
        super().__init__(recipe)
        self.traces = Traces(self)
        self.costs = CostTables(self)
        self.train = TrainStep(self)
        self.sweep = SweepStep(self, self.traces)
        self.time_policy = TimingStep(self)
        self.evaluate = EvaluateStep(self, self.traces, self.sweep, self.time_policy)
        self.calibrate = CalibrateStep(self, self.traces, self.costs)

    def record(self, split: str | None = None) -> Trace:
        return self.traces.record(split)

    def load_trace(self, split: str | None = None) -> Trace:
        return self.traces.load(split)

    def cost_table(self, split: str, unit: str, remeasure: bool = False):
        return self.costs.table(split, unit, remeasure)

    def calibrate_on(self, *args, **kwargs):
        return self.calibrate.calibrate_on(*args, **kwargs)

    def run(self) -> dict[str, Any] | None:
        """Every step the recipe asks for; the report gains each later step's results."""
        report = None
        for name, wanted in self.STEPS:
            if not wanted(self):
                continue
            result = getattr(self, name)()
            if name == "evaluate":
                report = result
            elif report is not None and isinstance(result, dict):
                report[name if name != "calibrate" else "calibration"] = result
                io.write_json(self.run_dir / "results.json", report)
        return report


__all__ = ["BEST_FILE", "Batches", "Pipeline", "RunContext", "check_split_name"]

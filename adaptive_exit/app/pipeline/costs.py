"""Per-sample cost tables of a run's model on a split, in any cost unit (profiled once)."""
from __future__ import annotations

import logging

from torch import Tensor

from adaptive_exit.budgets import cost_unit
from adaptive_exit.budgets.costs import CostModel
from adaptive_exit.budgets.units import cost_table

from .context import RunContext

logger = logging.getLogger(__name__)


class CostTables:
    def __init__(self, run: RunContext):
        self.run = run
        self._tables: dict[tuple[str, str], Tensor] = {}

    def cost_model(self, model, split: str, remeasure: bool = False) -> tuple[CostModel, list[int], list[float] | None]:
        """A cost model of ``model`` with representative inputs from ``split``, and every
        sample's input size (and audio duration). Profiles are cached in the model folder."""
        run = self.run
        samples = run.samples(split)
        sizes, durations, example_of_size = [], [], {}
        for i in range(len(samples)):
            batch = run.domain.collate(model, [samples[i]])
            size = run.domain.input_sizes(batch)
            if size is None:
                raise ValueError(f"domain {run.domain.name!r} gives no input sizes: FLOPs/latency budgets are unavailable")
            sizes.append(int(size[0]))
            example_of_size.setdefault(sizes[-1], i)
            seconds = run.domain.durations(batch)
            durations.append(None if seconds is None else float(seconds[0]))
        make_batch = lambda size: run.domain.collate(model, [samples[example_of_size[size]]])  # noqa: E731
        costs = CostModel(model, make_batch, cache_file=run.model_dir / "costs.json", remeasure=remeasure)
        return costs, sizes, (None if durations[0] is None else durations)

    def table(self, split: str, unit: str, remeasure: bool = False) -> Tensor:
        """(N, L): each sample's cumulative cost after each stage in ``unit`` (computed
        once per split and unit: calibrating several budgets reuses it)."""
        key = (split, unit)
        if key not in self._tables:
            model, _ = self.run.load_model()
            if not cost_unit(unit).needs_cost_model:
                self._tables[key] = cost_table(unit, model, sizes=[0] * len(self.run.samples(split)))
            else:
                logger.info("profiling %s per stage on %s (cached in %s)", unit, split, self.run.model_dir / "costs.json")
                costs, sizes, durations = self.cost_model(model, split, remeasure)
                self._tables[key] = cost_table(unit, model, sizes, costs, durations)
        return self._tables[key]

"""What every step of a recipe run shares: the recipe parsed once, the domain, the run
directory, the process shard, and how a split becomes batches."""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from adaptive_exit.app.config import Recipe, blaming, from_dict
from adaptive_exit.app.domain import Domain, get_domain
from adaptive_exit.budgets import BudgetSpec
from adaptive_exit.policies import ExitPolicy, build_policy
from adaptive_exit.runtime.distributed import current_shard

BEST_FILE = "best.json"  # train.keep_best: the best validation score so far
SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_split_name(split: str) -> str:
    """Split names become file names (traces/<split>.pt): letters, digits, '_', '-', '.' only."""
    if not isinstance(split, str) or not SPLIT_NAME.match(split) or ".." in split:
        raise ValueError(f"bad split name {split!r}: use letters, digits, '_', '-' or '.' (it names a file in traces/)")
    return split


class RunContext:
    """One recipe's run directory and what its steps need."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.domain: Domain = get_domain(recipe.domain)
        source = getattr(recipe, "source", "")
        with blaming(recipe):
            self.model_cfg = self.domain.parse_model_config(recipe.model, source)
            self.data_cfg = from_dict(self.domain.data_config, recipe.data, "data", source)
        self.run_dir = Path(recipe.run_dir)
        self.model_dir = self.run_dir / "model"
        self.shard = current_shard()
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

    def samples(self, split: str) -> Sequence[Any]:
        return self.domain.load_split(self.data_cfg, split, self.recipe.seed)

    def batches(self, model, split: str, batch_size: int, limit: int | None = None) -> "Batches":
        """The split (its first ``limit`` samples) in fixed batches, collated on access (a
        shard collates only its own)."""
        samples = self.samples(split)
        if limit is not None:
            samples = _Head(samples, limit)
        if len(samples) == 0:
            raise ValueError(f"split {split!r} of domain {self.domain.name!r} is empty")
        return Batches(samples, batch_size, lambda items: self.domain.collate(model, items))

    def load_model(self):
        return self.domain.load_model(self.model_dir)

    def trace_path(self, split: str) -> Path:
        return self.run_dir / "traces" / f"{check_split_name(split)}.pt"


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

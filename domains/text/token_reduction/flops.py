"""FLOPs of each stage as a function of a row's token count, fitted exactly from counted FLOPs."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class FlopModel:
    """Per-row FLOPs of each stage as a function of the row's token count n:
    c + a n + b n^2 (the layer and its exit), fitted exactly from FLOP counts
    (``torch.utils.flop_counter``) of the model's own modules at three lengths, and the
    same for the token selection at each selection point."""

    def __init__(self, stages: list[tuple[float, float, float]], selection: dict[int, tuple[float, float, float]]):
        self.stages, self.selection_coefficients = stages, selection

    @staticmethod
    def _poly(coefficients: tuple[float, float, float], n: Tensor) -> Tensor:
        c, a, b = coefficients
        return c + a * n + b * n * n

    def stage(self, k: int, n: Tensor) -> Tensor:
        return self._poly(self.stages[k], n)

    def selection(self, k: int, n: Tensor) -> Tensor:
        return self._poly(self.selection_coefficients.get(k, (0.0, 0.0, 0.0)), n)

    @classmethod
    @torch.no_grad()
    def measure(cls, model: Any) -> "FlopModel":
        from adaptive_exit.budgets.costs import flop_counter, parameters_frozen

        with parameters_frozen(model):
            return cls._measure(model, flop_counter)

    @classmethod
    def _measure(cls, model: Any, flop_counter) -> "FlopModel":
        lengths = (8, 16, 32)
        stage_counts = [[] for _ in range(model.num_stages)]
        selection_counts: dict[int, list[float]] = {}
        was_training, mode = model.training, model.reducer.mode if model.reducer is not None else None
        model.eval()
        if model.reducer is not None:
            model.reducer.mode = "off"
        try:
            for n in lengths:
                vocab = int(getattr(model.backbone.config, "vocab_size", 100))
                batch = {"input_ids": torch.randint(5, max(6, vocab), (1, n)), "attention_mask": torch.ones(1, n, dtype=torch.long)}
                state = model.begin(batch)
                for k in range(model.num_stages):
                    if model.reducer is not None and k in model.reducer.layers:
                        with flop_counter() as counter:
                            previous = model.adapter.layer(k - 1) if model.reducer.cfg.method == "ltp" else None
                            model.reducer.keep_probability(k, state["hidden"], state, previous)
                        selection_counts.setdefault(k, []).append(float(counter.get_total_flops()))
                    with flop_counter() as counter:
                        state = model.run_stage(k, state)
                        model.exit_output(k, state)
                    stage_counts[k].append(float(counter.get_total_flops()))
        finally:
            model.train(was_training)
            if model.reducer is not None:
                model.reducer.mode = mode
        n = torch.tensor(lengths, dtype=torch.float64)
        design = torch.stack([torch.ones_like(n), n, n * n], 1)

        def fit(values: list[float]) -> tuple[float, float, float]:
            solution = torch.linalg.solve(design, torch.tensor(values, dtype=torch.float64))
            return tuple(float(v) for v in solution)

        return cls([fit(v) for v in stage_counts], {k: fit(v) for k, v in selection_counts.items()})

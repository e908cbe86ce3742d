"""What token reduction adds to a sequence classifier: the reducer, the per-row state it
carries between layers, selection at the selection points, and per-row FLOP costs."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .flops import FlopModel
from .reducer import TokenReducer, TokenReductionConfig, attention_modules
from .selection import select_tokens, verify_packing


class TokenReduction:
    """Mixed into the sequence classifier (``TokenReducingClassifier``); the model then
    has per-sample costs (:class:`~adaptive_exit.runtime.staged.PerSampleCosts`)."""

    row_state = {"positions": "columns", "original_counts": "rows", "select_nll": "rows", "kept_fractions": "rows",
                 "soft_masks": "rows", "soft_mask": "columns", "importance": "columns", "layer_query": "columns", "layer_key": "columns",
                 "counts_before_selection": "rows", "imitate": "rows", "guide_positions": "columns"}

    def _attach_reducer(self, config, hidden: int) -> None:
        self.reducer = TokenReducer(TokenReductionConfig(**config.token_reduction), hidden, self.num_stages)

    def begin(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        state = super().begin(batch)
        mask2d = batch["attention_mask"]
        positions = batch.get("position_ids")
        if positions is None:
            positions = torch.arange(mask2d.shape[1], device=mask2d.device)[None, :].expand_as(mask2d)
        state.update(positions=positions, original_counts=mask2d.sum(1), kept_fractions=[],
                     select_nll=torch.zeros(mask2d.shape[0], device=mask2d.device), soft_masks=[])
        return state

    def run_stage(self, k: int, state: dict[str, Any]) -> dict[str, Any]:
        if self.reducer.mode != "off" and k in self.reducer.layers:
            state = select_tokens(self, k, state)
        if self.reducer.cfg.method == "ltp" and k + 1 in self.reducer.layers:
            state = self._run_capturing_query_key(k, state)  # LTP scores tokens by the attention they get here
        else:
            state = super().run_stage(k, state)
        if state.get("soft_mask") is not None:
            state["hidden"] = state["hidden"] * state["soft_mask"].unsqueeze(-1)
        return state

    def _run_capturing_query_key(self, k: int, state: dict[str, Any]) -> dict[str, Any]:
        """Layer k, keeping its own query and key projections for the next selection point."""
        _, query, key = attention_modules(self.adapter.layer(k))
        captured: dict[str, Tensor] = {}
        hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
                 for name, module in (("layer_query", query), ("layer_key", key))]
        try:
            state = super().run_stage(k, state)
        finally:
            for hook in hooks:
                hook.remove()
        return {**state, **captured}

    # -- per-sample costs
    def sample_cost(self, k: int, state: dict[str, Any]) -> Tensor:
        """Each row's FLOPs for stage k: the layer and its exit on the tokens the row has
        now, plus choosing them at a selection point (counted once per layer, exactly)."""
        counts = state["mask2d"].sum(1).double()
        cost = self.flop_model.stage(k, counts)
        if k in self.reducer.layers and self.reducer.mode != "off":
            cost = cost + self.flop_model.selection(k, state["counts_before_selection"].double())
        return cost

    def reference_cost(self, state: dict[str, Any]) -> Tensor:
        """Each row's FLOPs in the full model without token reduction."""
        if not getattr(self, "_packing_verified", False):
            verify_packing(self)
        counts = state["mask2d"].sum(1).double()
        return sum(self.flop_model.stage(k, counts) for k in range(self.num_stages))

    @property
    def flop_model(self) -> FlopModel:
        if getattr(self, "_flop_model", None) is None:
            self._flop_model = FlopModel.measure(self)
        return self._flop_model

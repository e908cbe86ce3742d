"""Early exit on a stream: each piece runs as its own batch through the runner, with the
stream's memory carried between pieces (for any :class:`StreamingModel`)."""
from __future__ import annotations

from typing import Any

from torch import Tensor

from adaptive_exit.runtime.staged import StreamingModel


class StreamPiece:
    """A StagedModel over one piece of a stream: the stream's memory goes in and comes out.

    After the runner is done with a piece, :meth:`finish` tells the model which stages the
    piece skipped (so their memory stays sensible for later pieces)."""

    def __init__(self, model: StreamingModel, memory: Any = None):
        if not isinstance(model, StreamingModel):
            raise ValueError(f"{type(model).__name__} cannot stream: it does not carry a memory between pieces")
        self.model = model
        self.memory = model.new_memory() if memory is None else memory
        self.num_stages = model.num_stages
        self.last_state: Any = None
        self.stages_run = 0

    def stage_cost(self, k: int) -> float:
        return self.model.stage_cost(k)

    def begin(self, batch: Any) -> Any:
        self.stages_run, self.last_state = 0, None
        return self.model.stream_begin(batch, self.memory)

    def run_stage(self, k: int, state: Any) -> Any:
        state = self.model.stream_stage(k, state, self.memory)
        self.last_state, self.stages_run = state, k + 1
        return state

    def exit_output(self, k: int, state: Any) -> Tensor:
        return self.model.exit_output(k, state)

    def select(self, state: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        return {name: value[keep] for name, value in state.items()}

    def finish(self) -> None:
        if self.last_state is not None and self.stages_run < self.num_stages:
            self.model.skip_stages(self.stages_run, self.last_state, self.memory)

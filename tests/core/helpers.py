"""Small staged models for core tests."""
import torch
from torch import Tensor

from adaptive_exit.runtime.staged import select_rows
from adaptive_exit.app.toy import ToyModelConfig, ToyStagedModel, collate_toy


def toy_model(seed: int = 0, num_stages: int = 5, hidden: int = 16, num_classes: int = 3, input_dim: int = 6) -> ToyStagedModel:
    torch.manual_seed(seed)
    model = ToyStagedModel(ToyModelConfig(input_dim=input_dim, hidden=hidden, num_stages=num_stages, num_classes=num_classes))
    return model.double().eval()


def random_samples(n: int, seed: int, input_dim: int = 6, num_classes: int = 3, max_len: int = 9):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, max_len + 1, (1,), generator=gen))
        out.append({"x": torch.randn(length, input_dim, generator=gen, dtype=torch.float64),
                    "label": int(torch.randint(0, num_classes, (1,), generator=gen))})
    return out


class ScriptedModel:
    """Exit outputs are given in advance: outputs[k] is (B, ...) for stage k.
    Counts the rows each stage processes, to check that compaction saves work."""

    def __init__(self, outputs: list[Tensor], costs: list[float] | None = None):
        self.outputs = outputs
        self.num_stages = len(outputs)
        self.costs = costs or [1.0] * self.num_stages
        self.rows_per_stage = [0] * self.num_stages

    def begin(self, batch):
        return {"rows": torch.arange(self.outputs[0].shape[0])}

    def run_stage(self, k, state):
        self.rows_per_stage[k] += state["rows"].shape[0]
        return state

    def exit_output(self, k, state):
        return self.outputs[k][state["rows"]]

    def select(self, state, keep):
        return select_rows(state, keep)

    def stage_cost(self, k):
        return self.costs[k]


__all__ = ["toy_model", "random_samples", "collate_toy", "ScriptedModel"]

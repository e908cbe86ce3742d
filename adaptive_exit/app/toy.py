"""A small, real staged model on a synthetic task: the core's demo domain.

Each sample is a variable-length set of vectors; the label comes from a fixed
random nonlinear "teacher" of the (masked) mean vector, so some samples are easy
(far from a decision boundary) and some hard. The model is a stack of residual
MLP stages over the tokens with a masked-mean exit head per stage. Padding never
reaches the output, so a padded batch gives each sample exactly its own result.

It is used by the demo recipe, the tests and ``benchmarks/core_runner.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adaptive_exit.app.domain import Domain
from adaptive_exit.fields import bounded
from adaptive_exit.runtime.staged import select_rows


@dataclass
class ToyModelConfig:
    """The ``model:`` section. Ranges sit next to each field (checked on load)."""

    input_dim: int = bounded(16, ge=1)
    hidden: int = bounded(64, ge=1)
    num_stages: int = bounded(6, ge=1)
    num_classes: int = bounded(4, ge=2)
    dropout: float = bounded(0.0, ge=0, lt=1)


@dataclass
class ToyDataConfig:
    """The ``data:`` section: sizes of the synthetic splits and of each sample's token set."""

    train_size: int = bounded(8000, ge=1)
    dev_size: int = bounded(1000, ge=1)
    test_size: int = bounded(1000, ge=1)
    min_len: int = bounded(3, ge=1)
    max_len: int = bounded(12, ge=1)
    input_dim: int = bounded(16, ge=1)
    num_classes: int = bounded(4, ge=2)
    task_seed: int = bounded(1234, ge=0)
    depth_weights: list | None = None  # how often a sample's label needs 1, 2, ... 6 maps (marked in the input); None: always 6

    def __post_init__(self) -> None:
        if self.depth_weights is not None and (not 1 <= len(self.depth_weights) <= 6 or any(
                not isinstance(w, (int, float)) or w < 0 for w in self.depth_weights) or not sum(self.depth_weights) > 0):
            raise ValueError(f"data.depth_weights must be 1 to 6 non-negative weights with a positive sum, got {self.depth_weights}")
        if self.min_len > self.max_len:
            raise ValueError(f"data.min_len ({self.min_len}) must be <= data.max_len ({self.max_len})")


class ToyStagedModel(nn.Module):
    """Residual MLP stages over padded token sets; one linear exit per stage."""

    def __init__(self, config: ToyModelConfig):
        super().__init__()
        self.config = config
        self.num_stages = config.num_stages
        h = config.hidden
        self.embed = nn.Linear(config.input_dim, h)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(h), nn.Linear(h, 2 * h), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(2 * h, h))
            for _ in range(config.num_stages)
        )
        self.mix = nn.ModuleList(nn.Linear(h, h) for _ in range(config.num_stages))
        self.heads = nn.ModuleList(nn.Linear(h, config.num_classes) for _ in range(config.num_stages))

    @staticmethod
    def _pool(h: Tensor, mask: Tensor) -> Tensor:
        weights = mask.to(h.dtype).unsqueeze(-1)
        return (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def begin(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mask = batch["mask"]
        return {"h": self.embed(batch["x"]) * mask.unsqueeze(-1).to(batch["x"].dtype), "mask": mask}

    def run_stage(self, k: int, state: dict[str, Tensor]) -> dict[str, Tensor]:
        h, mask = state["h"], state["mask"]
        h = h + self.blocks[k](h)
        h = h + self.mix[k](self._pool(h, mask)).unsqueeze(1)  # tokens see the set
        return {"h": h * mask.unsqueeze(-1).to(h.dtype), "mask": mask}

    def exit_output(self, k: int, state: dict[str, Tensor]) -> Tensor:
        return self.heads[k](self._pool(state["h"], state["mask"]))

    def select(self, state: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        return select_rows(state, keep)

    def stage_cost(self, k: int) -> float:
        return 1.0

    def backbone_parameters(self):
        """Trained in phase 1 and frozen in phase 2: everything but the early exits."""
        yield from self.embed.parameters()
        yield from self.blocks.parameters()
        yield from self.mix.parameters()
        yield from self.heads[-1].parameters()


def make_toy_samples(cfg: ToyDataConfig, size: int, seed: int) -> list[dict[str, Any]]:
    """Synthetic labelled token sets.

    A latent vector z is observed through 3-12 noisy tokens; the label is the
    argmax of a fixed random readout after six random ``tanh`` maps of z. The
    composition of maps is what makes deeper stages better; the noise and the
    distance to a decision boundary make samples easy or hard. With
    ``depth_weights``, a sample's label needs only its own number of maps (drawn with
    those weights and shown in the input): inputs that vary in difficulty, where
    exiting per sample beats cutting every sample at the same depth. The teacher
    depends on ``task_seed`` only, the samples on ``seed``.
    """
    teacher = torch.Generator().manual_seed(cfg.task_seed)
    dim = cfg.input_dim
    maps = [torch.randn(dim, dim, generator=teacher) * (1.5 / dim**0.5) for _ in range(6)]
    readout = torch.randn(dim, cfg.num_classes, generator=teacher)
    gen = torch.Generator().manual_seed(seed)
    weights = None if cfg.depth_weights is None else torch.tensor(cfg.depth_weights, dtype=torch.float64)
    samples = []
    for _ in range(size):
        length = int(torch.randint(cfg.min_len, cfg.max_len + 1, (1,), generator=gen))
        z = torch.randn(dim, generator=gen)
        x = z + 0.2 * torch.randn(length, dim, generator=gen)
        depth = len(maps) if weights is None else int(torch.multinomial(weights, 1, generator=gen)) + 1
        for m in maps[:depth]:
            z = torch.tanh(z @ m)
        if weights is not None:
            x[:, -1] = depth / len(maps)  # the input shows how hard it is (as length or plainness do in real data)
        samples.append({"x": x, "label": int((z @ readout).argmax()), "depth": depth})
    return samples


def collate_toy(samples: list[dict[str, Any]]) -> dict[str, Tensor]:
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    longest = max(s["x"].shape[0] for s in samples)
    dim = samples[0]["x"].shape[1]
    x = torch.zeros(len(samples), longest, dim, dtype=samples[0]["x"].dtype)
    mask = torch.zeros(len(samples), longest, dtype=torch.bool)
    for i, s in enumerate(samples):
        x[i, : s["x"].shape[0]] = s["x"]
        mask[i, : s["x"].shape[0]] = True
    return {"x": x, "mask": mask, "labels": torch.tensor([s["label"] for s in samples])}


class ToyDomain(Domain):
    """The smallest complete domain; copy this class to add one (see README "Extending").

    Saving and loading come from :class:`~adaptive_exit.app.domain.Domain` because the
    model is built as ``ToyStagedModel(model_cfg)`` and keeps it as ``model.config``.
    """

    name = "toy"
    model_config = ToyModelConfig
    data_config = ToyDataConfig
    model_class = ToyStagedModel
    SPLIT_SEEDS = {"train": 1, "dev": 2, "test": 3}

    def build_model(self, model_cfg: ToyModelConfig, data_cfg: ToyDataConfig | None) -> nn.Module:
        if data_cfg is not None and (model_cfg.input_dim != data_cfg.input_dim or model_cfg.num_classes != data_cfg.num_classes):
            raise ValueError("model.input_dim / model.num_classes must match data.input_dim / data.num_classes")
        return ToyStagedModel(model_cfg)

    def load_split(self, data_cfg: ToyDataConfig, split: str, seed: int) -> Sequence[Any]:
        sizes = {"train": data_cfg.train_size, "dev": data_cfg.dev_size, "test": data_cfg.test_size}
        if split not in sizes:
            raise ValueError(f"unknown toy split {split!r}; expected one of {sorted(sizes)}")
        return make_toy_samples(data_cfg, sizes[split], seed=1000 * seed + self.SPLIT_SEEDS[split])

    def input_sizes(self, batch: Any) -> Tensor:
        return batch["mask"].sum(1)

    def collate(self, model: nn.Module, samples: list[Any]) -> Any:
        return collate_toy(samples)

    def task_loss(self, output: Tensor, batch: Any) -> Tensor:
        return F.cross_entropy(output, batch["labels"])

    def targets(self, batch: Any) -> Tensor:
        return batch["labels"]


DOMAIN = ToyDomain()

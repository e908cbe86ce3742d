"""What a domain (text, speech, the toy demo) provides to the core pipeline and CLI.

Domains are found through the ``adaptive_exit.domains`` entry-point group (or
registered in-process with :func:`register_domain`), so the core never imports
a domain. Extra domain commands (``predict``, ``enhance``) come through the
``adaptive_exit.commands`` group.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import Tensor, nn

from .losses import MultiExitObjective
from .training import TrainConfig


class Domain:
    """Base class for a domain. Subclasses fill in the model, data and loss."""

    name: str = "domain"
    model_config: type = dict  # a dataclass validating the recipe's ``model:`` section
    data_config: type = dict  # a dataclass validating the recipe's ``data:`` section

    # -- model
    def build_model(self, model_cfg: Any, data_cfg: Any) -> nn.Module:
        raise NotImplementedError

    def save_model(self, model: nn.Module, path: str | Path, default_policy: str) -> None:
        raise NotImplementedError

    def load_model(self, path: str | Path) -> tuple[nn.Module, str]:
        """Return (model, default policy spec)."""
        raise NotImplementedError

    def set_default_policy(self, path: str | Path, policy: str) -> None:
        model, _ = self.load_model(path)
        self.save_model(model, path, policy)

    # -- data
    def load_split(self, data_cfg: Any, split: str, seed: int) -> Sequence[Any]:
        raise NotImplementedError

    def collate(self, model: nn.Module, samples: list[Any]) -> Any:
        raise NotImplementedError

    # -- training and evaluation
    def task_loss(self, output: Tensor, batch: Any) -> Tensor:
        raise NotImplementedError

    def objective(self, train_cfg: TrainConfig, model: nn.Module | None = None) -> MultiExitObjective:
        return MultiExitObjective(self.task_loss, train_cfg.scheme, train_cfg.exit_weights, train_cfg.distill_temperature)

    def targets(self, batch: Any) -> Tensor | None:
        return None

    def quality(self, outputs: Tensor, batch: Any) -> dict[str, Tensor] | None:
        """Per-sample, per-stage quality from (B, L, ...) stage outputs, if the
        domain's metric is per sample (PESQ); None for corpus metrics."""
        return None

    def report_extras(self, samples: Sequence[Any]) -> dict[str, Any]:
        """Domain-specific figures for the report (e.g. the noisy input's PESQ)."""
        return {}

    def input_sizes(self, batch: Any) -> Tensor | None:
        """(B,) input size of each sample (tokens, frames): what its cost scales with.
        None if the domain has no notion of size (then FLOPs/latency budgets are unavailable)."""
        return None

    def durations(self, batch: Any) -> Tensor | None:
        """(B,) seconds of audio per sample, for real-time-factor budgets (None: not audio)."""
        return None

    def trace_pad_value(self, model: nn.Module | None = None) -> float | Tensor:
        """Fills the outputs of shorter batches in a trace (sequence outputs differ in
        length): a number, or a vector over the output's last dim."""
        return 0.0

    def target_pad_value(self) -> float:
        """Fills the targets of shorter batches in a trace (e.g. an ignore index)."""
        return 0.0

    def batch_size_of(self, batch: Any) -> int:
        raise NotImplementedError


_REGISTRY: dict[str, Domain] = {}


def register_domain(domain: Domain) -> Domain:
    _REGISTRY[domain.name] = domain
    return domain


def get_domain(name: str) -> Domain:
    if name in _REGISTRY:
        return _REGISTRY[name]
    found = {ep.name: ep for ep in entry_points(group="adaptive_exit.domains")}
    if name not in found:
        known = sorted(set(found) | set(_REGISTRY))
        raise ValueError(f"unknown domain {name!r}; installed domains: {', '.join(known) or 'none'}")
    try:
        domain = found[name].load()
    except ImportError as exc:
        raise ValueError(f"domain {name!r} is installed but cannot be imported ({exc}); install its extra: pip install 'adaptive-exit[{name}]'") from exc
    return register_domain(domain)


def domain_commands() -> dict[str, Callable[[], Any]]:
    """Extra CLI commands: name -> loader of a ``register(subparsers)`` function."""
    return {ep.name: ep.load for ep in entry_points(group="adaptive_exit.commands")}

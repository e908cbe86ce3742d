"""What a domain (text, speech, the toy demo) provides to the core pipeline and CLI.

Domains are found through the ``adaptive_exit.domains`` entry-point group (or
registered in-process with :func:`register_domain`), so the core never imports
a domain. Extra domain commands (``predict``, ``enhance``) come through the
``adaptive_exit.commands`` group.
"""
from __future__ import annotations

import dataclasses
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import Tensor, nn

from adaptive_exit import io
from adaptive_exit.app.config import from_dict
from adaptive_exit.training.losses import MultiExitObjective
from adaptive_exit.policies import ExitPolicy, build_policy
from adaptive_exit.training import TrainConfig


class Domain:
    """Base class for a domain. Subclasses fill in the model, data and loss.

    ``adaptive_exit/app/toy.py`` is the template: a config dataclass for the recipe's
    ``model:`` and ``data:`` sections, an ``nn.Module`` StagedModel built as
    ``model_class(model_cfg)`` that keeps its config as ``model.config``, and the
    data/loss methods below. With that, saving and loading (safetensors weights +
    ``config.json`` holding the model config and the default policy) come for free;
    a domain with its own format (text: Hugging Face ``save_pretrained``) overrides
    :meth:`save_model` / :meth:`load_model` / :meth:`set_default_policy`.
    """

    name: str = "domain"
    model_config: type = dict  # a dataclass validating the recipe's ``model:`` section
    data_config: type = dict  # a dataclass validating the recipe's ``data:`` section
    model_class: type | None = None  # built as model_class(model_cfg); keeps it as model.config

    # -- model
    def build_model(self, model_cfg: Any, data_cfg: Any) -> nn.Module:
        if self.model_class is None:
            raise NotImplementedError(f"domain {self.name!r} sets no model_class and does not override build_model")
        return self.model_class(model_cfg)

    def save_model(self, model: nn.Module, path: str | Path, policy: ExitPolicy | str) -> None:
        """Weights and config (with the default policy's canonical spec), each written atomically."""
        io.save_model_folder(path, model, {"domain": self.name, "model": dataclasses.asdict(model.config),
                                           "default_policy": build_policy(policy).spec()})

    def load_model(self, path: str | Path) -> tuple[nn.Module, ExitPolicy]:
        """Return (model in eval mode, its default policy); ValueError naming the folder
        for anything unreadable."""
        meta, weights = io.read_model_folder(path)
        source = str(Path(path) / "config.json")
        if meta.get("domain", self.name) != self.name:
            raise ValueError(f"{path} holds a {meta.get('domain')!r} model, not a {self.name!r} one")
        cfg = self.parse_model_config(self.upgrade_config(dict(meta.get("model") or {})), source)
        io.check_weights_fit(lambda: self.build_model(cfg, None), {k: tuple(v.shape) for k, v in weights.items()}, source)
        try:
            model = self.build_model(cfg, None)
            model.load_state_dict(weights)
        except Exception as exc:  # noqa: BLE001 - shape mismatches, missing keys, ...
            raise ValueError(f"cannot load {self.name} model from {path}: {exc}") from exc
        return model.eval(), saved_policy(meta.get("default_policy", "full"), source)

    def parse_model_config(self, raw: dict, source: str = "") -> Any:
        """The ``model:`` section as this domain's config object (unknown keys are errors)."""
        return from_dict(self.model_config, raw, "model", source)

    def upgrade_config(self, saved: dict) -> dict:
        """Fill keys that older saved configs lack (override when a field's default changed)."""
        return saved

    def set_default_policy(self, path: str | Path, policy: ExitPolicy | str) -> None:
        io.update_json(Path(path) / "config.json", default_policy=build_policy(policy).spec())

    def export_onnx(self, model: nn.Module, folder: Path, policy: ExitPolicy, source: Path | None = None) -> Any:
        """Write per-stage ONNX graphs and a manifest (see :mod:`adaptive_exit.deploy.onnx`)."""
        raise ValueError(f"domain {self.name!r} cannot be exported to ONNX yet")

    def serve_adapter(self, model: Any) -> Any:
        """What ``adaptive-exit serve`` needs to turn requests into batches (a
        :class:`~adaptive_exit.deploy.serving.ServeAdapter`)."""
        raise ValueError(f"domain {self.name!r} has no HTTP endpoint to serve")

    def probe_batch(self, model: nn.Module) -> Any:
        """A small batch to check an export against the PyTorch model (None: no check)."""
        return None

    def load_exported(self, folder: Path) -> tuple[Any, ExitPolicy]:
        """An exported folder as a StagedModel on onnxruntime, and its default policy."""
        from adaptive_exit.deploy.onnx import OnnxStagedModel

        model = OnnxStagedModel(folder)
        return model, saved_policy(model.manifest.default_policy, str(Path(folder) / "manifest.json"))

    def post_train(self, model: nn.Module, train_data: Sequence[Any], collate: Callable[[list[Any]], Any],
                   model_cfg: Any, run_dir: Path) -> bool:
        """Training a domain runs after the multi-exit training (e.g. learning which tokens
        to drop); returns whether it changed the model (then it is saved again)."""
        return False

    # -- data
    def load_split(self, data_cfg: Any, split: str, seed: int) -> Sequence[Any]:
        raise NotImplementedError

    def collate(self, model: nn.Module, samples: list[Any]) -> Any:
        raise NotImplementedError

    def sample_length(self, sample: Any) -> int | None:
        """A sample's input length, for ``train.group_by_length`` (None: unknown)."""
        return None

    # -- training and evaluation
    def task_loss(self, output: Tensor, batch: Any) -> Tensor:
        raise NotImplementedError

    def objective(self, train_cfg: TrainConfig, model: nn.Module | None = None) -> MultiExitObjective:
        return objective_for(train_cfg, self.task_loss)

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


def objective_for(train_cfg: TrainConfig, task_loss: Callable, **kwargs: Any) -> MultiExitObjective:
    """The recipe's training objective (scheme, exit weights, distillation settings) around a task loss."""
    return MultiExitObjective(task_loss, train_cfg.scheme, train_cfg.exit_weights, train_cfg.distill_temperature,
                              distill_weight=train_cfg.distill_weight, gradient_rescale=train_cfg.gradient_rescale, **kwargs)


def saved_policy(spec: Any, source: str) -> ExitPolicy:
    """The default policy stored in a model folder, parsed once; errors name the file."""
    try:
        return build_policy(spec)
    except ValueError as exc:
        raise ValueError(f"{source}: default_policy: {exc}") from None


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


def recipe_hint(folder: Path) -> str:
    """'; `adaptive-exit run NAME` makes it' when a shipped recipe writes that folder."""
    from adaptive_exit.app.config import load_yaml
    from adaptive_exit.app.recipes import shipped_recipes

    if folder.name != "model":
        return ""
    for name, path in shipped_recipes().items():
        try:
            run_dir = load_yaml(path).get("run_dir")
        except ValueError:
            continue
        if run_dir and Path(run_dir) == folder.parent or (run_dir and Path(run_dir).name == folder.parent.name):
            return f" (`adaptive-exit run {name}` makes it)"
    return ""


def model_domain(folder: str | Path) -> str:
    """Which domain a saved (or exported) model folder belongs to: its config.json or
    manifest.json says; older folders are named by the run's config.yaml beside them."""
    folder = Path(folder)
    for name in ("manifest.json", "config.json"):
        path = folder / name
        if path.is_file():
            data = io.read_json(path)  # bounded: size, depth, duplicate keys
            domain = data.get("domain") if isinstance(data, dict) else None
            if domain:
                return str(domain)
    recipe = folder.parent / "config.yaml"
    if recipe.is_file():
        from adaptive_exit.app.config import load_yaml

        data = load_yaml(recipe)
        if data.get("domain"):
            return str(data["domain"])
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}{recipe_hint(folder)}")
    raise ValueError(f"cannot tell which domain the model in {folder} belongs to (no 'domain' in its config.json)")


def load_any_model(folder: str | Path) -> tuple[Any, ExitPolicy, Domain]:
    """A saved model folder (PyTorch) or an exported one (onnxruntime), with its default
    policy and domain: the commands that run models accept either."""
    domain = get_domain(model_domain(folder))
    if (Path(folder) / "manifest.json").is_file():
        model, policy = domain.load_exported(Path(folder))
    else:
        model, policy = domain.load_model(folder)
    return model, policy, domain

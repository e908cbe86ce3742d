"""Early-exit token classification (sequence labeling) around any supported HF encoder.

One linear tag classifier per layer over every token's hidden state. As a core
``StagedModel`` a stage is a layer and a *sentence* is a sample, so the core
policies give the sentence-level exits of Li et al. (ACL 2021, SENTEE):
``normalized_entropy:T`` stops a sentence when its least certain token is certain
enough, ``patience:P`` when the whole tag sequence is unchanged for P layers.

Padding never keeps a sentence alive: ``exit_output`` gives every position that
is not scored (padding, and when the batch says which tokens carry labels, special
tokens and continuation word pieces, whose heads are never trained) a one-hot
(fully certain, constant) distribution, so they neither raise a sentence's maximum
uncertainty nor change between layers.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel

from adaptive_exit.training.losses import exit_weights, weighted_exit_loss
from adaptive_exit.policies import build_policy
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.staged import all_exit_outputs

from ..hub import load_backbone
from ..modeling import EarlyExitConfig, EarlyExitOutput, EncoderStages
from .conll import IGNORE

CERTAIN_LOGIT = 30.0  # softmax([30, 0, ...]) has normalised entropy < 1e-11


def scored_positions(batch: dict[str, Tensor]) -> Tensor:
    """(B, T) bool: the tokens whose tags count — first sub-tokens when the batch has
    ``word_index`` (from ``TokenCollator``), else every real token."""
    if "word_index" in batch:
        return batch["word_index"] >= 0
    return batch["attention_mask"].bool()


def certain_logits(num_labels: int, like: Tensor) -> Tensor:
    """A (num_labels,) logit vector whose softmax is one-hot on tag 0 (normalised
    entropy < 1e-11): what unscored positions output."""
    certain = torch.zeros(num_labels, dtype=like.dtype, device=like.device)
    certain[0] = CERTAIN_LOGIT
    return certain


class EarlyExitForTokenClassification(EncoderStages, PreTrainedModel):
    """An encoder with a token-tagging exit after every layer (sentence-level exits)."""

    row_state = {"scored": "rows"}  # which positions carry a tag (kept at full width: no trimming)

    def __init__(self, config: EarlyExitConfig, backbone: nn.Module | None = None):
        super().__init__(config)
        if config.task != "token-classification":
            raise ValueError(f"EarlyExitForTokenClassification needs task='token-classification', got {config.task!r}")
        hidden = self._attach_backbone(config, backbone)
        self.adapter.take_pooler()  # sentence poolers are unused here
        self._attach_exits(config, hidden)
        self.post_init()

    @classmethod
    def from_backbone(cls, name_or_path: str, label_names: list[str], **kwargs) -> "EarlyExitForTokenClassification":
        backbone = load_backbone(name_or_path)
        config = EarlyExitConfig(backbone=backbone.config.to_dict(), num_labels=len(label_names), task="token-classification",
                                 label_names=list(label_names), **kwargs)
        return cls(config, backbone=backbone)

    # ------------------------------------------------------------------ StagedModel

    def begin(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        state = super().begin(batch)
        state["scored"] = scored_positions(batch)
        return state

    def exit_output(self, k: int, state: dict[str, Any]) -> Tensor:
        logits = self.classifiers[k](self.dropout(self.exit_hidden(state)))
        return torch.where(state["scored"].unsqueeze(-1), logits, certain_logits(logits.shape[-1], logits))

    def select(self, state: dict[str, Any], keep: Tensor) -> dict[str, Any]:
        # Unlike sentence classification, padding columns are kept: every exit output of
        # a batch must have the same number of token positions.
        return self.select_rows(state, keep, trim=False)

    def exit_parameters(self):
        yield from self.classifiers.parameters()

    def backbone_parameters(self):
        yield from self.backbone.parameters()
        yield from self.classifiers[-1].parameters()

    # ------------------------------------------------------------------ forward

    @staticmethod
    def task_loss(logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy over labelled positions (first sub-tokens); others are IGNORE."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                labels: Tensor | None = None, policy: str | dict | None = None, word_index: Tensor | None = None,
                **unused) -> EarlyExitOutput:
        """Training mode: every exit, joint weighted loss. Eval mode: sentence-level early
        exit under the policy (compaction); ``exit_layer`` per sentence. ``word_index``
        (from ``TokenCollator``) marks the scored first sub-tokens."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        if word_index is not None:
            batch["word_index"] = word_index
        if self.training:
            outputs = all_exit_outputs(self, batch)
            loss = None
            if labels is not None:
                weights = exit_weights(self.config.exit_weights, self.num_stages)
                loss = weighted_exit_loss([self.task_loss(o, labels) for o in outputs], weights)
            return EarlyExitOutput(loss=loss, logits=outputs[-1],
                                   exit_layer=torch.full((input_ids.shape[0],), self.num_stages, device=input_ids.device))
        result = EarlyExitRunner(self, build_policy(policy) if policy is not None else self._policy)(batch)
        loss = self.task_loss(result.output, labels) if labels is not None else None
        return EarlyExitOutput(loss=loss, logits=result.output, exit_layer=result.exit_stage + 1)

"""Early-exit token classification (sequence labeling) around any supported HF encoder.

One linear tag classifier per layer over every token's hidden state. As a core
``StagedModel`` a stage is a layer and a *sentence* is a sample, so the core
policies give the sentence-level exits of Li et al. (ACL 2021, SENTEE):
``normalized_entropy:T`` stops a sentence when its least certain token is certain
enough, ``patience:P`` when the whole tag sequence is unchanged for P layers.

Padding never keeps a sentence alive: ``exit_output`` gives padded positions a
one-hot (fully certain, constant) distribution, so they neither raise a sentence's
maximum uncertainty nor change between layers.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from adaptive_exit.losses import exit_weights, weighted_exit_loss
from adaptive_exit.policies import build_policy
from adaptive_exit.runner import EarlyExitRunner
from adaptive_exit.staged import all_exit_outputs, select_rows

from .architectures import EncoderAdapter
from .conll import IGNORE
from .modeling import EarlyExitConfig, EarlyExitOutput

CERTAIN_LOGIT = 30.0  # softmax([30, 0, ...]) has normalised entropy < 1e-11


class EarlyExitForTokenClassification(PreTrainedModel):
    """An encoder with a token-tagging exit after every layer (sentence-level exits)."""

    config_class = EarlyExitConfig
    base_model_prefix = "early_exit"
    _supports_sdpa = True

    def __init__(self, config: EarlyExitConfig, backbone: nn.Module | None = None):
        super().__init__(config)
        if config.task != "token-classification":
            raise ValueError(f"EarlyExitForTokenClassification needs task='token-classification', got {config.task!r}")
        if backbone is None:
            if not config.backbone:
                raise ValueError("EarlyExitConfig.backbone is empty: build the model with from_backbone(name_or_path)")
            backbone = AutoModel.from_config(AutoConfig.for_model(**config.backbone))
        self.backbone = backbone
        self.adapter = EncoderAdapter(backbone)
        self.adapter.take_pooler()  # sentence poolers are unused here
        self.num_stages = self.adapter.num_layers
        hidden = backbone.config.hidden_size if hasattr(backbone.config, "hidden_size") else backbone.config.dim
        self.dropout = nn.Dropout(config.exit_dropout)
        self.classifiers = nn.ModuleList(nn.Linear(hidden, config.num_labels) for _ in range(self.num_stages))
        for classifier in self.classifiers:
            nn.init.normal_(classifier.weight, std=0.02)
            nn.init.zeros_(classifier.bias)
        self._policy = build_policy(config.default_policy)
        self.post_init()

    @classmethod
    def from_backbone(cls, name_or_path: str, label_names: list[str], **kwargs) -> "EarlyExitForTokenClassification":
        backbone = AutoModel.from_pretrained(name_or_path)
        config = EarlyExitConfig(backbone=backbone.config.to_dict(), num_labels=len(label_names), task="token-classification",
                                 label_names=list(label_names), **kwargs)
        return cls(config, backbone=backbone)

    def _init_weights(self, module: nn.Module) -> None:
        return  # exits are set in __init__, the backbone is loaded

    @property
    def policy(self):
        return self._policy

    def set_policy(self, policy: str | dict) -> None:
        self._policy = build_policy(policy)
        self.config.default_policy = self._policy.spec()

    # ------------------------------------------------------------------ StagedModel

    def begin(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        input_ids, mask2d = batch["input_ids"], batch["attention_mask"]
        hidden = self.adapter.embed(input_ids, batch.get("token_type_ids"))
        return {"hidden": hidden, "mask2d": mask2d, "mask": self.adapter.attention_mask(hidden, mask2d)}

    def run_stage(self, k: int, state: dict[str, Any]) -> dict[str, Any]:
        state["hidden"] = self.adapter.layer(k)(state["hidden"], state["mask"])
        return state

    def exit_output(self, k: int, state: dict[str, Any]) -> Tensor:
        logits = self.classifiers[k](self.dropout(state["hidden"]))
        certain = torch.zeros_like(logits)
        certain[..., 0] = CERTAIN_LOGIT
        return torch.where(state["mask2d"].bool().unsqueeze(-1), logits, certain)

    def select(self, state: dict[str, Any], keep: Tensor) -> dict[str, Any]:
        # Unlike sentence classification, padding columns are kept: every exit output of
        # a batch must have the same number of token positions.
        hidden, mask2d = select_rows(state["hidden"], keep), select_rows(state["mask2d"], keep)
        return {"hidden": hidden, "mask2d": mask2d, "mask": self.adapter.attention_mask(hidden, mask2d)}

    def stage_cost(self, k: int) -> float:
        return 1.0

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
                labels: Tensor | None = None, policy: str | dict | None = None, **unused) -> EarlyExitOutput:
        """Training mode: every exit, joint weighted loss. Eval mode: sentence-level early
        exit under the policy (compaction); ``exit_layer`` per sentence."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
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

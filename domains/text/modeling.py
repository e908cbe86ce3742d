"""Early-exit sequence classification / regression around any supported HF encoder.

Follows the transformers conventions: :class:`EarlyExitConfig`, a
``PreTrainedModel`` subclass, a ``ModelOutput`` dataclass, ``save_pretrained`` /
``from_pretrained`` (safetensors). The model is also a core ``StagedModel`` (one
stage per transformer layer), so the core runner, traces and trainer drive it.

Exit heads:

* ``pabee``: one pooler shared by every layer (initialised from the backbone's
  pooler) and one linear classifier per layer (PABEE, Zhou et al. 2020);
* ``deebert``: a pooler and a classifier per layer, every pooler initialised from
  the final pooler (DeeBERT, Xin et al. 2020).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from adaptive_exit.training.losses import exit_weights, weighted_exit_loss
from adaptive_exit.policies import build_policy
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.staged import all_exit_outputs, select_rows
from adaptive_exit.runtime.traces import Trace, replay

from .encoder import ENCODER_INPUTS, Captured, LayerwiseEncoder
from .hub import build_from_config_dict, load_backbone, load_sequence_classifier
from .token_reduction.mixin import TokenReduction
from .token_reduction.reducer import TokenReductionConfig

HEAD_STYLES = ("pabee", "deebert")
TASKS = ("classification", "regression", "token-classification")  # token: see token_model.py
POOLINGS = ("cls", "mean", "last", "auto")  # mean: sentence-transformers encoders (all-MiniLM); last: decoders; auto: last for decoders, else cls


class EarlyExitConfig(PretrainedConfig):
    """Configuration of an early-exit encoder: the backbone's config plus exit settings."""

    model_type = "adaptive-exit-encoder"

    def __init__(
        self,
        backbone: dict | None = None,
        num_labels: int | None = None,
        task: str = "classification",
        head_style: str = "pabee",
        exit_dropout: float = 0.1,
        exit_weights: Any = "pabee",
        pooling: str = "auto",
        default_policy: str = "patience:2",
        max_seq_length: int = 128,
        label_names: list | None = None,
        classifier: dict | None = None,
        token_reduction: dict | None = None,
        **kwargs,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if head_style not in HEAD_STYLES:
            raise ValueError(f"head_style must be one of {HEAD_STYLES}, got {head_style!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if task == "regression":
            num_labels = 1
        if label_names and task != "regression" and not kwargs.get("id2label"):
            kwargs["id2label"] = {i: str(name) for i, name in enumerate(label_names)}
        id2label = kwargs.get("id2label")
        if num_labels is None:
            num_labels = len(id2label) if id2label else 2
        elif id2label and len(id2label) != num_labels:
            kwargs.pop("id2label")
        super().__init__(num_labels=num_labels, **kwargs)
        self.backbone = backbone or {}
        self.task = task
        self.head_style = head_style
        self.exit_dropout = exit_dropout
        self.exit_weights = exit_weights
        self.pooling = pooling
        self.default_policy = default_policy
        self.max_seq_length = max_seq_length
        self.label_names = label_names
        self.classifier = classifier  # a converted fine-tuned classifier's own config: its head is the last exit
        self.token_reduction = token_reduction  # TokenReductionConfig as a dict (TR-BERT policies or LTP thresholds)
        self.domain = "text"  # which adaptive-exit domain loads this folder
        if token_reduction is not None:
            TokenReductionConfig(**token_reduction)  # validate
            if task == "token-classification":
                raise ValueError("token reduction drops tokens, so it cannot serve token classification")


try:  # lets AutoConfig / AutoTokenizer read a saved model folder without warnings
    AutoConfig.register(EarlyExitConfig.model_type, EarlyExitConfig)
except ValueError:  # already registered
    pass


@dataclass
class EarlyExitOutput(ModelOutput):
    """``logits``: output of the exit each sample used; ``exit_layer``: layers used
    (1..L) per sample; ``all_logits``: (B, L, num_labels) every exit, when asked."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    exit_layer: Tensor | None = None
    all_logits: Tensor | None = None


def last_real(mask2d: Tensor) -> Tensor:
    """Each row's last real (attended) position: right padding and left padding alike."""
    positions = torch.arange(mask2d.shape[1], device=mask2d.device)
    return (positions * mask2d.to(positions.dtype)).argmax(-1)


class ExitPooler(nn.Module):
    """tanh(W h + b) of the [CLS] state (BERT's pooler), of the mean over real tokens, or of
    the last real token (``last``: what a decoder's sequence-classification head reads; it
    works with left and right padding)."""

    def __init__(self, hidden: int, init_from: nn.Linear | None = None, pooling: str = "cls"):
        super().__init__()
        self.pooling = pooling
        self.dense = nn.Linear(hidden, hidden)
        if init_from is not None:
            self.dense.load_state_dict(init_from.state_dict())

    def forward(self, hidden_states: Tensor, mask2d: Tensor) -> Tensor:
        if self.pooling == "mean":
            weights = mask2d.unsqueeze(-1).to(hidden_states.dtype)
            summary = (hidden_states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        elif self.pooling == "last":
            summary = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last_real(mask2d)]
        else:
            summary = hidden_states[:, 0]
        return torch.tanh(self.dense(summary))


class EncoderStages:
    """StagedModel plumbing shared by the early-exit encoders: the embeddings start, each
    layer is a stage of cost 1, and the inference policy (saved as the config's default).
    Subclasses set ``adapter``, ``_policy`` and ``config`` and add exits and ``select``."""

    config_class = EarlyExitConfig
    base_model_prefix = "early_exit"
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        return  # exits are initialised in __init__ and the backbone is loaded: nothing to redo

    @property
    def policy(self):
        return self._policy

    def set_policy(self, policy: str | dict) -> None:
        """Set the exit policy used at inference; it is saved as the config's default."""
        self._policy = build_policy(policy)
        self.config.default_policy = self._policy.spec()

    #: per-row state a subclass adds (key -> "rows", or "columns": rows, then trimmed to the
    #: kept width like the tokens); ``select_rows`` selects exactly these and refuses any
    #: other tensor it finds, so a feature cannot add state that compaction forgets
    row_state: dict[str, str] = {}
    _BASE_STATE = ("hidden", "mask2d", "captured", "embeddings")

    def begin(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """The backbone's own forward prepares the embeddings and each layer's arguments."""
        captured = self.adapter.capture({k: batch[k] for k in ENCODER_INPUTS if k in batch})
        return {"hidden": captured.hidden, "mask2d": batch["attention_mask"], "captured": captured,
                "embeddings": captured.hidden}

    def run_stage(self, k: int, state: dict[str, Any]) -> dict[str, Any]:
        state["hidden"] = self.adapter.run_layer(k, state["hidden"], state["captured"], state)
        return state

    def exit_hidden(self, state: dict[str, Any]) -> Tensor:
        """What an exit reads: the hidden states after whatever the encoder applies after
        its last layer (a pre-LN model's final LayerNorm; nothing for BERT-style models)."""
        return self.adapter.post(state["hidden"])

    def select_rows(self, state: dict[str, Any], keep: Tensor, trim: bool) -> dict[str, Any]:
        """Keep rows ``keep``. With ``trim``, drop trailing columns that are padding for every
        kept row (the longest inputs may have exited), so later layers run on shorter
        sequences. When the width shrinks or the kept rows have no padding left, the
        layers' arguments are prepared again for the kept inputs (sdpa then needs no mask);
        otherwise their batch rows are selected."""
        mask2d = state["mask2d"].index_select(0, keep)
        hidden = state["hidden"].index_select(0, keep)
        width = mask2d.shape[1]
        if trim:
            real = mask2d.any(dim=0).nonzero()
            width = int(real[-1]) + 1 if len(real) else 1
        padding_gone = not bool(state["mask2d"].all()) and bool(mask2d[:, :width].all())
        captured = state["captured"]
        if width < mask2d.shape[1] or padding_gone:
            inputs = {name: value.index_select(0, keep.to(value.device))[:, :width] for name, value in captured.inputs.items()}
            fresh = self.adapter.capture(inputs)
            hidden, mask2d = hidden[:, :width], mask2d[:, :width]
            captured = Captured(hidden, fresh.calls, fresh.inputs)
        else:
            captured = self.adapter.select(captured, keep)
        reduced = {}
        for name, value in state.items():
            if name in self._BASE_STATE or value is None:
                continue
            how = self.row_state.get(name)
            if how is None:
                if isinstance(value, (Tensor, list, tuple)):
                    raise TypeError(f"{type(self).__name__}: state {name!r} is not declared in row_state, so compaction "
                                    "would not select its rows")
                continue
            reduced[name] = select_rows(value, keep)
            if how == "columns":
                reduced[name] = reduced[name][:, :width]
        return {**state, **reduced, "hidden": hidden, "mask2d": mask2d, "captured": captured, "embeddings": None}

    def stage_cost(self, k: int) -> float:
        return 1.0

    def _attach_backbone(self, config: EarlyExitConfig, backbone: nn.Module | None, register: bool = True) -> int:
        """Take the given backbone (or build one from ``config.backbone``); return its hidden
        size. ``register=False``: it is already a submodule elsewhere (a converted
        classifier's), so it is referenced, not registered twice."""
        if backbone is None:
            if not config.backbone:
                raise ValueError("EarlyExitConfig.backbone is empty: build the model with from_backbone(name_or_path)")
            backbone = build_from_config_dict("AutoModel", config.backbone, "config.json backbone")
        if register:
            self.backbone = backbone
        else:
            self.__dict__["backbone"] = backbone
        self.adapter = LayerwiseEncoder(backbone)
        self.num_stages = self.adapter.num_layers
        self.reducer = None  # a TokenReducer when the config asks for token reduction (sequence classification)
        return backbone.config.hidden_size if hasattr(backbone.config, "hidden_size") else backbone.config.dim

    def _attach_exits(self, config: EarlyExitConfig, hidden: int, count: int | None = None) -> None:
        """One linear exit per layer (``count``: the first so many; small normal init), exit
        dropout, the default policy."""
        self.dropout = nn.Dropout(config.exit_dropout)
        count = self.num_stages if count is None else count
        self.classifiers = nn.ModuleList(nn.Linear(hidden, config.num_labels) for _ in range(count))
        for classifier in self.classifiers:
            nn.init.normal_(classifier.weight, std=0.02)
            nn.init.zeros_(classifier.bias)
        self._policy = build_policy(config.default_policy)


class EarlyExitForSequenceClassification(EncoderStages, PreTrainedModel):
    """An encoder with an exit classifier (or regressor) after every layer.

    Converted from a fine-tuned classifier (:meth:`from_classifier`), the last exit is
    that classifier's own head, run by its own code, so its predictions are unchanged;
    the earlier layers get new exits.
    """

    def __new__(cls, config: EarlyExitConfig, *args, **kwargs):
        # a config with token reduction always builds the token-reducing class (direct calls,
        # from_pretrained of a saved folder, from_backbone/from_classifier alike)
        return super().__new__(classifier_class(config, cls))

    def __init__(self, config: EarlyExitConfig, backbone: nn.Module | None = None, classifier: nn.Module | None = None):
        super().__init__(config)
        converted = bool(config.classifier)
        if converted:
            if classifier is None:
                classifier = build_from_config_dict("AutoModelForSequenceClassification", config.classifier,
                                                    "config.json classifier")
            self.original = classifier
            backbone = classifier.base_model
        hidden = self._attach_backbone(config, backbone, register=not converted)
        if config.pooling == "auto":  # decoders are read at their last real token, encoders at [CLS]
            config.pooling = "last" if self.adapter.causal else "cls"
        dense = self.adapter.pooler_dense() if converted else self.adapter.take_pooler()  # a converted head keeps its pooler
        num_new = self.num_stages - 1 if converted else self.num_stages
        if config.head_style == "pabee":
            self.pooler = ExitPooler(hidden, dense, config.pooling)
            self.poolers = None
        else:
            self.pooler = None
            final = ExitPooler(hidden, dense, config.pooling)
            self.poolers = nn.ModuleList(copy.deepcopy(final) for _ in range(num_new))
        self._attach_exits(config, hidden, num_new)
        self._attach_reducer(config, hidden)
        self.post_init()

    def _attach_reducer(self, config: EarlyExitConfig, hidden: int) -> None:
        """Token reduction's modules (see :class:`TokenReducingClassifier`); none here."""

    @property
    def converted(self) -> bool:
        return bool(self.config.classifier)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_backbone(cls, name_or_path: str, num_labels: int = 2, task: str = "classification", **kwargs) -> "EarlyExitForSequenceClassification":
        """Wrap a pretrained encoder (a hub name or a local path) with fresh exits."""
        backbone = load_backbone(name_or_path)
        config = EarlyExitConfig(backbone=backbone.config.to_dict(), num_labels=num_labels, task=task, **kwargs)
        return classifier_class(config, cls)(config, backbone=backbone)

    @classmethod
    def from_classifier(cls, name_or_path: str, **kwargs) -> "EarlyExitForSequenceClassification":
        """Convert a fine-tuned ``AutoModelForSequenceClassification`` (a hub name or a local
        path): its own head becomes the last exit (predictions unchanged), new exits go after
        every earlier layer. Labels and the task (regression when it has one output) come
        from the checkpoint."""
        classifier = load_sequence_classifier(name_or_path)
        cfg = classifier.config
        task = "regression" if cfg.num_labels == 1 or cfg.problem_type == "regression" else "classification"
        if getattr(cfg, "problem_type", None) == "multi_label_classification":
            raise ValueError(f"{name_or_path} is a multi-label classifier; only single-label classification and "
                             "regression can be converted")
        labels = None if task == "regression" else [str(cfg.id2label[i]) for i in range(cfg.num_labels)]
        kwargs.setdefault("label_names", labels)
        config = EarlyExitConfig(backbone=classifier.base_model.config.to_dict(), num_labels=cfg.num_labels, task=task,
                                 classifier=cfg.to_dict(), **kwargs)
        return classifier_class(config, cls)(config, classifier=classifier)

    # ------------------------------------------------------------------ StagedModel

    def exit_output(self, k: int, state: dict[str, Any]) -> Tensor:
        if self.converted and k == self.num_stages - 1:
            return self.adapter.through_head(self.original, state["hidden"], state["captured"].inputs).logits
        pooler = self.pooler if self.poolers is None else self.poolers[k]
        return self.classifiers[k](self.dropout(pooler(self.exit_hidden(state), state["mask2d"])))

    def select(self, state: dict[str, Any], keep: Tensor) -> dict[str, Any]:
        return self.select_rows(state, keep, trim=True)

    def exit_parameters(self):
        """The exit heads (poolers and classifiers): new weights, trained at ``train.head_lr``."""
        yield from (self.pooler.parameters() if self.poolers is None else self.poolers.parameters())
        yield from self.classifiers.parameters()

    def backbone_parameters(self):
        """Trained in phase 1 of two-stage/distill schemes and frozen in phase 2: the
        encoder and the final exit (a converted classifier: all of it, head included)."""
        if self.converted:
            yield from self.original.parameters()
            return
        yield from self.backbone.parameters()
        if self.poolers is None:
            yield from self.pooler.parameters()
        else:
            yield from self.poolers[-1].parameters()
        yield from self.classifiers[-1].parameters()

    # ------------------------------------------------------------------ forward

    def task_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.config.task == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_all_exits: bool = False,
        policy: str | dict | None = None,
        **unused,
    ) -> EarlyExitOutput:
        """Training mode: every exit runs and the loss is PABEE's weighted sum.
        Eval mode: batched early exit under the policy (compaction)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        policy = build_policy(policy) if policy is not None else self._policy
        if self.training or output_all_exits:
            outputs = all_exit_outputs(self, batch)
            stacked = torch.stack(outputs, dim=1)
            if self.training:
                logits, exit_layer = outputs[-1], torch.full((input_ids.shape[0],), self.num_stages, device=input_ids.device)
            else:
                chosen = replay(Trace(stacked.detach(), [1.0] * self.num_stages), policy)
                logits, exit_layer = chosen.output.to(stacked.dtype), chosen.exit_stage.to(input_ids.device) + 1
            loss = None
            if labels is not None:
                weights = exit_weights(self.config.exit_weights, self.num_stages)
                loss = weighted_exit_loss([self.task_loss(o, labels) for o in outputs], weights)
            return EarlyExitOutput(loss=loss, logits=logits, exit_layer=exit_layer, all_logits=stacked if output_all_exits else None)
        result = EarlyExitRunner(self, policy)(batch)
        loss = self.task_loss(result.output, labels) if labels is not None else None
        return EarlyExitOutput(loss=loss, logits=result.output, exit_layer=result.exit_stage + 1)


class TokenReducingClassifier(TokenReduction, EarlyExitForSequenceClassification):
    """A sequence classifier with token reduction (TR-BERT, LTP): rows drop tokens at the
    selection points, and its costs follow the tokens each row kept (per-sample costs)."""


def classifier_class(config: EarlyExitConfig, base: type = EarlyExitForSequenceClassification) -> type:
    """The class a sequence-classification config needs: with ``token_reduction``, the
    token-reducing variant (``from_pretrained`` of a saved folder must use it too)."""
    if config.token_reduction is not None and not issubclass(base, TokenReduction):
        return TokenReducingClassifier
    return base

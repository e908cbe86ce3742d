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
from adaptive_exit.runtime.staged import all_exit_outputs
from adaptive_exit.runtime.traces import Trace, replay

from adaptive_exit.runtime.staged import select_rows

from .hub import build_from_config_dict, load_backbone, load_sequence_classifier
from .encoder import ENCODER_INPUTS, Captured, LayerwiseEncoder
from .token_reduction import TokenReducer, TokenReductionConfig, gather_rows, pack

HEAD_STYLES = ("pabee", "deebert")
TASKS = ("classification", "regression", "token-classification")  # token: see token_model.py
POOLINGS = ("cls", "mean")  # mean: for sentence-transformers encoders (all-MiniLM), trained with mean pooling


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
        pooling: str = "cls",
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


class ExitPooler(nn.Module):
    """tanh(W h + b) of the [CLS] state (BERT's pooler) or of the mean over real tokens."""

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

    def begin(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """The backbone's own forward prepares the embeddings and each layer's arguments."""
        captured = self.adapter.capture({k: batch[k] for k in ENCODER_INPUTS if k in batch})
        state = {"hidden": captured.hidden, "mask2d": batch["attention_mask"], "captured": captured,
                 "embeddings": captured.hidden}
        if self.reducer is not None:
            mask2d = batch["attention_mask"]
            positions = batch.get("position_ids")
            if positions is None:
                positions = torch.arange(mask2d.shape[1], device=mask2d.device)[None, :].expand_as(mask2d)
            state.update(positions=positions, original_counts=mask2d.sum(1), kept_fractions=[],
                         select_nll=torch.zeros(mask2d.shape[0], device=mask2d.device), soft_masks=[])
        return state

    def run_stage(self, k: int, state: dict[str, Any]) -> dict[str, Any]:
        if self.reducer is not None and self.reducer.mode != "off" and k in self.reducer.layers:
            state = select_tokens(self, k, state)
        if self.reducer is not None and self.reducer.cfg.method == "ltp" and k + 1 in self.reducer.layers:
            state["layer_input"] = state["hidden"]  # LTP scores tokens by the attention they get in this layer
        state["hidden"] = self.adapter.run_layer(k, state["hidden"], state["captured"], state)
        if state.get("soft_mask") is not None:
            state["hidden"] = state["hidden"] * state["soft_mask"].unsqueeze(-1)
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
        reduced = {name: select_rows(state[name], keep) for name in ("positions", "original_counts", "select_nll",
                                                                      "kept_fractions", "soft_masks", "soft_mask", "importance")
                   if state.get(name) is not None}
        if "positions" in reduced:
            reduced["positions"] = reduced["positions"][:, :width]
        if state.get("layer_input") is not None:  # LTP scores the next selection on the previous layer's input
            reduced["layer_input"] = state["layer_input"].index_select(0, keep)[:, :width]
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
        if config.token_reduction is not None:
            self.reducer = TokenReducer(TokenReductionConfig(**config.token_reduction), hidden, self.num_stages)
            self.sample_cost, self.reference_cost = self._sample_cost, self._reference_cost  # costs follow kept tokens
        self.post_init()

    # ------------------------------------------------------------------ token reduction costs

    def _sample_cost(self, k: int, state: dict[str, Any]) -> Tensor:
        """Each row's FLOPs for stage k: the layer and its exit on the tokens the row has
        now, plus choosing them at a selection point (counted once per layer, exactly)."""
        counts = state["mask2d"].sum(1).double()
        cost = self.flop_model.stage(k, counts)
        if self.reducer is not None and k in self.reducer.layers and self.reducer.mode != "off":
            cost = cost + self.flop_model.selection(k, state["counts_before_selection"].double())
        return cost

    def _reference_cost(self, state: dict[str, Any]) -> Tensor:
        """Each row's FLOPs in the full model without token reduction."""
        if not getattr(self, "_packing_verified", False):
            verify_packing(self)
        counts = state["mask2d"].sum(1).double()
        return sum(self.flop_model.stage(k, counts) for k in range(self.num_stages))

    @property
    def flop_model(self) -> "FlopModel":
        if getattr(self, "_flop_model", None) is None:
            self._flop_model = FlopModel.measure(self)
        return self._flop_model

    @property
    def converted(self) -> bool:
        return bool(self.config.classifier)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_backbone(cls, name_or_path: str, num_labels: int = 2, task: str = "classification", **kwargs) -> "EarlyExitForSequenceClassification":
        """Wrap a pretrained encoder (a hub name or a local path) with fresh exits."""
        backbone = load_backbone(name_or_path)
        config = EarlyExitConfig(backbone=backbone.config.to_dict(), num_labels=num_labels, task=task, **kwargs)
        return cls(config, backbone=backbone)

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
        return cls(config, classifier=classifier)

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


def select_tokens(model: EncoderStages, k: int, state: dict[str, Any]) -> dict[str, Any]:
    """Token selection before layer k: each row keeps some tokens (``[CLS]`` always), which
    are packed to the front; the layers' arguments are prepared again for the packed rows
    with their original positions. Modes of ``model.reducer``: ``hard`` (inference),
    ``sample`` (REINFORCE: Bernoulli draws, their negative log-likelihood accumulated per
    row; rows with ``imitate`` follow the guide scores' top-k), ``soft`` (LTP training:
    tokens are scaled by their keep probability, none dropped)."""
    reducer = model.reducer
    if not getattr(model, "_packing_verified", False):
        verify_packing(model)
    hidden, mask2d = state["hidden"], state["mask2d"]
    real = mask2d.bool()
    previous = model.adapter.layer(k - 1) if reducer.cfg.method == "ltp" else None
    prob = reducer.keep_probability(k, hidden, state, previous)
    state["counts_before_selection"] = mask2d.sum(1)
    if state.get("forced_keep") is not None:  # verify_packing: drop exactly the given tokens
        keep = state.pop("forced_keep") & real
        return _packed(model, state, keep)
    if reducer.mode == "soft":
        soft = torch.where(real, prob, torch.zeros_like(prob))
        soft = torch.cat([real[:, :1].to(soft.dtype), soft[:, 1:]], 1)  # [CLS] stays whole
        state["soft_mask"] = soft if state.get("soft_mask") is None else state["soft_mask"] * soft
        state["soft_masks"].append((soft * real).sum(1) / real.sum(1).clamp_min(1))
        state["kept_fractions"].append(state["soft_mask"].sum(1).detach() / state["original_counts"])
        return state
    if reducer.mode == "sample":
        draw = prob.detach().clone()
        guide = state.get("guide")
        if guide is not None and state.get("imitate") is not None and bool(state["imitate"].any()):
            draw = imitation_draw(draw, guide[reducer.layers.index(k)], state, real)
        draw[:, 0] = 1.0
        selected = torch.bernoulli(draw.clamp(0, 1)) * real
        selected[:, 0] = real[:, 0].to(selected.dtype)
        nll = -(selected * torch.log(prob + 1e-6) + (1 - selected) * torch.log(1 - prob + 1e-6)) * real
        state["select_nll"] = state["select_nll"] + nll.sum(1) / real.sum(1).clamp_min(1)
        keep = selected.bool()
    else:
        keep = (prob >= reducer.cfg.keep_threshold) & real
        keep[:, 0] = real[:, 0]
    return _packed(model, state, keep)


def _packed(model: EncoderStages, state: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    """The state with only the ``keep`` tokens of each row, packed to the front."""
    hidden, mask2d = state["hidden"], state["mask2d"]
    state["kept_fractions"].append(keep.sum(1) / state["original_counts"])
    index, valid = pack(keep)
    hidden = gather_rows(hidden, index) * valid.unsqueeze(-1).to(hidden.dtype)
    positions = gather_rows(state["positions"], index)
    captured = state["captured"]
    inputs = {name: gather_rows(value, index) for name, value in captured.inputs.items() if name != "position_ids"}
    inputs["attention_mask"] = valid.to(mask2d.dtype)
    inputs["input_ids"] = inputs["input_ids"] * valid
    if "position_ids" in model.adapter.accepted_inputs:
        inputs["position_ids"] = positions * valid
    fresh = model.adapter.capture(inputs)
    for name in ("guide_positions",):
        if state.get(name) is not None:
            state[name] = gather_rows(state[name], index)
    return {**state, "hidden": hidden, "mask2d": inputs["attention_mask"], "positions": positions,
            "captured": Captured(hidden, fresh.calls, fresh.inputs), "importance": None}


@torch.no_grad()
def verify_packing(model: EncoderStages) -> None:
    """Token reduction is exact only if a layer sees token positions through the embeddings
    or ``position_ids``: then dropping a token nobody attends to (masked out) and packing the
    rest changes no hidden state. Checked once per model on a probe with such a token."""
    model._packing_verified = True
    length, hole = 10, 4
    vocab = int(getattr(model.backbone.config, "vocab_size", 100))
    ids = torch.randint(5, max(6, vocab), (2, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length - 2:] = 0  # padding, so both layouts have masks
    mask[:, hole] = 0  # masked out: no token attends to it
    device = next(model.parameters()).device
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if "position_ids" in model.adapter.accepted_inputs:  # as the packed layout will pass them
        batch["position_ids"] = torch.arange(length, device=device)[None, :].expand(2, length)
    was_training, mode = model.training, model.reducer.mode
    model.eval()
    try:
        model.reducer.mode = "off"
        state = model.begin(batch)
        for k in range(model.num_stages):
            state = model.run_stage(k, state)
        expected = [state["hidden"][r, mask[r].bool()] for r in range(2)]
        model.reducer.mode = "hard"
        state = model.begin(batch)
        for k in range(model.num_stages):
            if k == model.reducer.layers[0]:
                state["forced_keep"] = mask.bool().to(device)
            state = model.run_stage(k, state)
            if k == model.reducer.layers[0]:
                model.reducer.mode = "off"  # one packing is what is checked; later selection points stay out
                packed_args = state["captured"]
        got = [state["hidden"][r, : int(mask[r].sum())] for r in range(2)]
        model.reducer.mode = "off"
        unpacked_args = model.begin(batch)["captured"]
    except Exception:
        model._packing_verified = False
        raise
    finally:
        model.reducer.mode = mode
        model.train(was_training)
    same_args = _arguments_match_without(unpacked_args, packed_args, dropped=hole, length=length,
                                         counts=[int(c) for c in mask.sum(1)])
    same_hidden = all(g.shape == e.shape and torch.allclose(g, e, atol=1e-5, rtol=1e-5) for g, e in zip(got, expected))
    if not (same_args and same_hidden):
        model._packing_verified = False
        raise ValueError(f"token reduction cannot run on {type(model.backbone).__name__}: dropping tokens and packing the rest "
                         "changes what its layers compute (its layers see token positions other than through the embeddings "
                         "or position_ids, e.g. relative positions)")


def _arguments_match_without(unpacked: Captured, packed: Captured, dropped: int, length: int,
                             counts: list[int]) -> bool:
    """Do the layers' arguments for the packed batch equal the unpacked ones with token
    ``dropped`` removed, over each row's real tokens (``counts``), along every dimension
    of the sequence's length? This catches positions computed from slots (relative
    positions, sliding windows) whatever the weights, where comparing hidden states of a
    random model might not."""
    from .encoder import _leaves

    keep = [i for i in range(length) if i != dropped]

    def trimmed(x: Tensor, width: int, full: int) -> Tensor:
        for dim in range(x.dim()):
            if x.shape[dim] == full:
                x = x.narrow(dim, 0, min(width, full))
        return x

    for a, b in zip(unpacked.calls, packed.calls):
        for (_, x), (_, y) in zip(_leaves((a.args[1:], a.kwargs)), _leaves((b.args[1:], b.kwargs))):
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                if isinstance(x, Tensor) != isinstance(y, Tensor):
                    return False
                continue
            index = torch.tensor(keep, device=x.device)
            for dim in range(x.dim()):
                if x.shape[dim] == length:
                    x = x.index_select(dim, index)
            batched = x.dim() > 0 and x.shape[0] == len(counts) == y.shape[0]
            pairs = ([(trimmed(x[r], n, length - 1), trimmed(y[r], n, y.shape[-1] if y.dim() else 0)) for r, n in enumerate(counts)]
                     if batched else [(trimmed(x, max(counts), length - 1), trimmed(y, max(counts), length - 1))])
            for u, v in pairs:
                if u.shape != v.shape:
                    return False
                same = torch.equal(u, v) if (u.dtype == torch.bool or not u.is_floating_point()) else \
                    torch.allclose(u, v, atol=1e-6, rtol=1e-5)
                if not same:
                    return False
    return True


def imitation_draw(draw: Tensor, guide: Tensor, state: dict[str, Any], real: Tensor) -> Tensor:
    """TR-BERT's imitation: rows marked ``imitate`` keep the top-k tokens by the residual
    guide score, k being the number of tokens the policy expects to keep (round(sum p))."""
    scores = gather_rows(guide, state["positions"])  # guides are in original token positions
    scores = torch.where(real, scores, torch.full_like(scores, -1.0))
    k = (draw * real).sum(1).add(0.5).long().clamp_min(1)
    order = scores.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    top = (ranks < k[:, None]).to(draw.dtype) * real
    imitate = state["imitate"][:, None]
    return torch.where(imitate, top, draw)


class FlopModel:
    """Per-row FLOPs of each stage as a function of the row's token count n:
    c + a n + b n^2 (the layer and its exit), fitted exactly from FLOP counts
    (``torch.utils.flop_counter``) of the model's own modules at three lengths, and the
    same for the token selection at each selection point."""

    def __init__(self, stages: list[tuple[float, float, float]], selection: dict[int, tuple[float, float, float]]):
        self.stages, self.selection_coefficients = stages, selection

    @staticmethod
    def _poly(coefficients: tuple[float, float, float], n: Tensor) -> Tensor:
        c, a, b = coefficients
        return c + a * n + b * n * n

    def stage(self, k: int, n: Tensor) -> Tensor:
        return self._poly(self.stages[k], n)

    def selection(self, k: int, n: Tensor) -> Tensor:
        return self._poly(self.selection_coefficients.get(k, (0.0, 0.0, 0.0)), n)

    @classmethod
    @torch.no_grad()
    def measure(cls, model: EncoderStages) -> "FlopModel":
        from adaptive_exit.budgets.costs import flop_counter, parameters_frozen

        with parameters_frozen(model):
            return cls._measure(model, flop_counter)

    @classmethod
    def _measure(cls, model: EncoderStages, flop_counter) -> "FlopModel":
        lengths = (8, 16, 32)
        stage_counts = [[] for _ in range(model.num_stages)]
        selection_counts: dict[int, list[float]] = {}
        was_training, mode = model.training, model.reducer.mode if model.reducer is not None else None
        model.eval()
        if model.reducer is not None:
            model.reducer.mode = "off"
        try:
            for n in lengths:
                vocab = int(getattr(model.backbone.config, "vocab_size", 100))
                batch = {"input_ids": torch.randint(5, max(6, vocab), (1, n)), "attention_mask": torch.ones(1, n, dtype=torch.long)}
                state = model.begin(batch)
                for k in range(model.num_stages):
                    if model.reducer is not None and k in model.reducer.layers:
                        with flop_counter() as counter:
                            previous = model.adapter.layer(k - 1) if model.reducer.cfg.method == "ltp" else None
                            if previous is not None:
                                state["layer_input"] = state["hidden"]
                            model.reducer.keep_probability(k, state["hidden"], state, previous)
                        selection_counts.setdefault(k, []).append(float(counter.get_total_flops()))
                    with flop_counter() as counter:
                        state = model.run_stage(k, state)
                        model.exit_output(k, state)
                    stage_counts[k].append(float(counter.get_total_flops()))
        finally:
            model.train(was_training)
            if model.reducer is not None:
                model.reducer.mode = mode
        n = torch.tensor(lengths, dtype=torch.float64)
        design = torch.stack([torch.ones_like(n), n, n * n], 1)

        def fit(values: list[float]) -> tuple[float, float, float]:
            solution = torch.linalg.solve(design, torch.tensor(values, dtype=torch.float64))
            return tuple(float(v) for v in solution)

        return cls([fit(v) for v in stage_counts], {k: fit(v) for k, v in selection_counts.items()})

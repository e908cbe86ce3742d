"""Run any Hugging Face encoder layer by layer with exactly the arguments its own forward
builds for each layer.

How: for each batch the backbone's own ``forward`` runs once with its layers replaced by
recorders that return their input unchanged (:meth:`LayerwiseEncoder.capture`). That pass
computes the embeddings and everything the model prepares for its layers (attention masks,
rotary cos/sin, relative-position tables, position bias, per-layer sliding-window masks)
and records, call by call, the arguments each layer receives. Stage k then calls the k-th
recorded layer on the current hidden states with its recorded arguments. Whatever the
encoder applies after its last layer (a final LayerNorm in pre-LN models) is found once
and applied where an exit reads the hidden states, so the last exit sees exactly the
model's ``last_hidden_state``.

Nothing is copied from the model files, so a new family needs no code. On construction a
probe checks, on a small batch, that every layer's output equals the model's own
``output_hidden_states`` bit for bit; a family whose structure cannot be reproduced (its
sequence length changes between layers, something runs between layers that no override
covers, a decoder) is refused with a clear error instead of giving wrong answers.
Families that need help get it from :mod:`.architectures` (overrides only).
"""
from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn


from .architectures import UNSUPPORTED, override_for


@dataclass
class LayerCall:
    """One recorded layer call: the module, where the hidden states go, the other arguments."""

    module: nn.Module
    args: tuple
    kwargs: dict
    hidden_at: int | str  # a positional index or a keyword name


@dataclass
class Captured:
    """A batch's embeddings and the recorded arguments of every layer call."""

    hidden: Tensor
    calls: list[LayerCall]
    inputs: dict[str, Tensor] = field(default_factory=dict)
    marks: dict[str, Any] = field(default_factory=dict)  # probing only: where the layer calls fell among other modules' calls


_CAPTURE_LOCK = threading.RLock()
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def _num_layers(config) -> int:
    for name in ("num_hidden_layers", "n_layers", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"{type(config).__name__} does not say how many layers the model has")


class LayerwiseEncoder:
    """Layer-by-layer execution of a transformers encoder (see the module docstring)."""

    def __init__(self, backbone: nn.Module):
        config = backbone.config
        model_type = getattr(config, "model_type", type(backbone).__name__)
        if model_type in UNSUPPORTED:
            raise ValueError(f"{type(backbone).__name__} ({model_type}) cannot run with per-layer exits: {UNSUPPORTED[model_type]}")
        if getattr(config, "is_encoder_decoder", False):
            raise ValueError(f"{type(backbone).__name__} ({model_type}) is an encoder-decoder model: its decoder layers "
                             "attend to an encoder's output, so a layer is not a stage of one stack; use an encoder or a "
                             "decoder-only model")
        # decoder-only language models run as classifiers: causal attention, pooled at the last real token
        self.causal = bool(getattr(config, "is_decoder", False) or _is_decoder_only(model_type))
        self.backbone = backbone
        self.model_type = model_type
        self.override = override_for(model_type)
        self.num_layers = _num_layers(config)
        self._forward_params = set(inspect.signature(backbone.forward).parameters)
        self.accepted_inputs = {name for name in ENCODER_INPUTS if name in self._forward_params}
        if self.causal:  # decoder classifiers take no token types (GPT-2 would add them to its embeddings)
            self.accepted_inputs.discard("token_type_ids")
        self._layers: nn.ModuleList | None = None  # found on first use: from_pretrained builds models on the meta device
        self._returns_tuple: int | None = None  # what a layer returns: a Tensor (None) or a tuple of this length

    @property
    def layers(self) -> nn.ModuleList:
        self._ensure_ready()
        return self._layers

    def _ensure_ready(self) -> None:
        if self._layers is None:
            self._layers = self._find_layers()
            try:
                self._probe()
            except BaseException:
                self._layers = None
                raise

    # ------------------------------------------------------------------ discovery

    def _probe_inputs(self, batch: int, length: int = 8) -> dict[str, Tensor]:
        vocab = int(getattr(self.backbone.config, "vocab_size", 100) or 100)
        gen = torch.Generator().manual_seed(batch)
        ids = torch.randint(min(5, vocab - 1), vocab, (batch, length), generator=gen)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length - 3:] = 0  # padding, so masks are built
        device = next(self.backbone.parameters()).device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def _find_layers(self) -> nn.ModuleList:
        """The ModuleList whose elements are called ``num_layers`` times in one forward
        (the outermost, for nested groups such as ALBERT's)."""
        counts: dict[int, int] = {}
        lists = [(name, m) for name, m in self.backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
        hooks = []
        for _, modules in lists:
            for child in modules:
                hooks.append(child.register_forward_pre_hook(lambda mod, args: counts.__setitem__(id(mod), counts.get(id(mod), 0) + 1)))
        try:
            with torch.no_grad(), _eval(self.backbone):
                self.backbone(**self._filter(self._probe_inputs(2)))
        except Exception as exc:  # noqa: BLE001 - a model that cannot run on a plain probe batch
            raise ValueError(f"{type(self.backbone).__name__} does not run on a plain (input_ids, attention_mask) "
                             f"batch ({type(exc).__name__}: {exc})") from exc
        finally:
            for hook in hooks:
                hook.remove()
        found = [(name, modules) for name, modules in lists if sum(counts.get(id(c), 0) for c in modules) == self.num_layers]
        if not found:
            raise ValueError(f"cannot find the layer list of {type(self.backbone).__name__}: no ModuleList is called "
                             f"{self.num_layers} times (config layers) in one forward")
        return min(found, key=lambda item: item[0].count("."))[1]

    def _probe(self) -> None:
        """Learn what each layer returns and what follows the last one, then check on a
        probe batch that layer-by-layer equals the model's own hidden states."""
        inputs = self._probe_inputs(3)
        outputs: list[Any] = []
        hooks = [layer.register_forward_hook(lambda mod, args, out: outputs.append(out)) for layer in self._layers]
        try:
            with torch.no_grad(), _eval(self.backbone):
                reference = self.backbone(**self._filter(inputs), output_hidden_states=True)
        finally:
            for hook in hooks:
                hook.remove()
        first = outputs[0]
        self._returns_tuple = None if isinstance(first, Tensor) else len(first)
        self._post = self._find_post(inputs)
        self._batched = self._batched_paths()
        with torch.no_grad(), _eval(self.backbone):
            captured = self.capture(inputs)
            if len(captured.calls) != self.num_layers:
                raise ValueError(f"{type(self.backbone).__name__}: recorded {len(captured.calls)} layer calls, expected {self.num_layers}")
            hidden, state = captured.hidden, {"embeddings": captured.hidden, "mask2d": inputs["attention_mask"]}
            expected = reference.hidden_states
            real = inputs["attention_mask"].bool()
            for k in range(self.num_layers):
                hidden = self.run_layer(k, hidden, captured, state)
                mine = self._post(hidden) if k == self.num_layers - 1 else hidden
                if mine.shape != expected[k + 1].shape or not torch.equal(mine[real], expected[k + 1][real]):
                    diff = (mine - expected[k + 1]).abs().max().item() if mine.shape == expected[k + 1].shape else "shape"
                    raise ValueError(f"{type(self.backbone).__name__} ({self.model_type}): running layer {k + 1} on its own does not "
                                     f"reproduce the model's hidden states (max difference {diff}); this family needs an "
                                     "override in adaptive_exit.text.architectures")

    def _find_post(self, inputs: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        """The modules applied to the last layer's output before ``last_hidden_state``
        (e.g. a final LayerNorm), found by following that tensor through the forward."""
        layer_ids = {id(m) for layer in self._layers for m in layer.modules()}
        events: list[tuple[nn.Module, Any, Any]] = []
        hooks = [m.register_forward_hook(lambda mod, args, out: events.append((mod, args, out)))
                 for m in self.backbone.modules() if id(m) not in layer_ids and m is not self.backbone]
        try:
            with torch.no_grad(), _eval(self.backbone):
                captured = self.capture(inputs, keep_events=events)
        finally:
            for hook in hooks:
                hook.remove()
        first, last = captured.marks["first"], captured.marks["last"]
        chain, current = [], captured.marks["last_output"]
        for module, args, out in events[last:]:
            if args and args[0] is current and isinstance(out, Tensor) and out.shape == current.shape:
                chain.append(module)
                current = out
        between = [m for m, _, _ in events[first:last]
                   if not any(m is c.module for c in captured.calls) and not self.override.handles_between(self.backbone, m)
                   and _is_leafish(m)]
        if between:
            names = {id(m): n for n, m in self.backbone.named_modules()}
            outermost = min((names.get(id(m), type(m).__name__) for m in between), key=lambda n: n.count("."))
            raise ValueError(f"{type(self.backbone).__name__} ({self.model_type}) runs {outermost} between its layers; "
                             "that needs an override in adaptive_exit.text.architectures")
        if not chain:
            return _identity
        return _Sequence(chain)

    def _batched_paths(self) -> set[tuple]:
        """Which recorded arguments carry the batch in dim 0: those whose dim 0 follows
        the batch size between two probe batches."""
        with torch.no_grad(), _eval(self.backbone):
            small, large = self.capture(self._probe_inputs(2)), self.capture(self._probe_inputs(3))
        paths = set()
        for k, (a, b) in enumerate(zip(small.calls, large.calls)):
            for path, ta in _leaves((a.args, a.kwargs)):
                tb = _get(b.args, b.kwargs, path)
                if isinstance(ta, Tensor) and isinstance(tb, Tensor) and ta.dim() and ta.shape[0] == 2 and tb.shape[0] == 3:
                    paths.add((k, path))
        return paths

    # ------------------------------------------------------------------ running

    def _filter(self, inputs: dict[str, Tensor]) -> dict[str, Any]:
        """The forward's own keyword arguments for ``inputs``. Decoders run without a KV cache
        (classification needs none; a cache object in the recorded arguments would carry
        state from one call to the next) and with positions counted over each row's real
        tokens, so left and right padding give the same answers."""
        filtered: dict[str, Any] = {k: v for k, v in inputs.items() if k in self._forward_params and v is not None
                                    and not (self.causal and k == "token_type_ids")}
        if "use_cache" in self._forward_params:
            filtered["use_cache"] = False
        if self.causal and "position_ids" in self._forward_params and "position_ids" not in filtered:
            mask = filtered.get("attention_mask")
            if mask is not None:
                filtered["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_min(0)
        return filtered

    def capture(self, inputs: dict[str, Tensor], keep_events: list | None = None) -> Captured:
        """Embeddings and every layer's arguments for ``inputs`` (input_ids, attention_mask,
        token_type_ids, ...); the layers themselves do not run."""
        if self._layers is None:
            self._ensure_ready()
        calls: list[LayerCall] = []
        marks: dict[str, Any] = {}
        tuple_len = self._returns_tuple

        def recorder_for(module: nn.Module, original_signature: inspect.Signature):
            first = next(iter(original_signature.parameters))

            def record(*args, **kwargs):
                hidden_at: int | str = 0 if args else first
                hidden = args[0] if args else kwargs[first]
                calls.append(LayerCall(module, args, kwargs, hidden_at))
                if keep_events is not None:
                    marks.setdefault("first", len(keep_events))
                    marks["last"] = len(keep_events)
                    marks["last_output"] = hidden
                return hidden if tuple_len is None else (hidden,) + (None,) * (tuple_len - 1)
            return record

        layers = self._layers
        filtered = self._filter(inputs)
        with _CAPTURE_LOCK:  # the recorders are installed on shared modules for the duration of one pass
            for layer in layers:
                layer.forward = recorder_for(layer, inspect.signature(type(layer).forward.__get__(layer)))
            try:
                self.backbone(**filtered)
            finally:
                for layer in layers:
                    del layer.forward
        if not calls:
            raise ValueError(f"{type(self.backbone).__name__} called none of its layers")
        first = calls[0]
        hidden = first.args[0] if isinstance(first.hidden_at, int) else first.kwargs[first.hidden_at]
        kept = {k: v for k, v in filtered.items() if isinstance(v, Tensor)}  # with derived positions, as the layers saw them
        return Captured(hidden, calls, {**{k: v for k, v in inputs.items() if isinstance(v, Tensor)}, **kept}, marks)

    def through_head(self, model: nn.Module, hidden: Tensor, inputs: dict[str, Tensor]) -> Any:
        """``model(**inputs)`` (a model built on this backbone, e.g. its fine-tuned
        sequence classifier) with ``hidden`` as its last layer's output: earlier layers pass
        their input through and the last returns ``hidden``, so everything the model does
        after its layers (final norm, pooler, classification head) is its own code."""
        self._ensure_ready()
        layers, count = self._layers, [0]
        tuple_len = self._returns_tuple

        def passthrough(module: nn.Module):
            first = next(iter(inspect.signature(type(module).forward.__get__(module)).parameters))

            def call(*args, **kwargs):
                count[0] += 1
                out = hidden if count[0] == self.num_layers else (args[0] if args else kwargs[first])
                return out if tuple_len is None else (out,) + (None,) * (tuple_len - 1)
            return call

        with _CAPTURE_LOCK:
            for layer in layers:
                layer.forward = passthrough(layer)
            try:
                return model(**{k: v for k, v in inputs.items() if k in inspect.signature(model.forward).parameters})
            finally:
                for layer in layers:
                    del layer.forward

    def post(self, hidden: Tensor) -> Tensor:
        """What the encoder applies after its last layer (identity for post-LN models)."""
        self._ensure_ready()
        return self._post(hidden)

    def run_layer(self, k: int, hidden: Tensor, captured: Captured, state: dict[str, Any] | None = None) -> Tensor:
        """Layer k (0-based) on ``hidden`` with the arguments recorded for it."""
        call = captured.calls[k]
        if isinstance(call.hidden_at, int):
            out = call.module(hidden, *call.args[1:], **call.kwargs)
        else:
            out = call.module(*call.args, **{**call.kwargs, call.hidden_at: hidden})
        out = out if isinstance(out, Tensor) else out[0]
        return self.override.after_layer(self.backbone, k, out, state or {})

    def layer(self, k: int) -> nn.Module:
        """The module that runs as layer k (ALBERT: the shared group it uses)."""
        return self._modules_by_stage()[k]

    def _modules_by_stage(self) -> list[nn.Module]:
        if not hasattr(self, "_stage_modules"):
            with torch.no_grad(), _eval(self.backbone):
                self._stage_modules = [c.module for c in self.capture(self._probe_inputs(2)).calls]
        return self._stage_modules

    def select(self, captured: Captured, keep: Tensor) -> Captured:
        """Keep rows ``keep`` of every recorded argument that carries the batch."""
        calls = []
        for k, call in enumerate(captured.calls):
            args, kwargs = _select_paths((call.args, call.kwargs), keep, {p for kk, p in self._batched if kk == k})
            calls.append(LayerCall(call.module, args, kwargs, call.hidden_at))
        inputs = {name: value.index_select(0, keep.to(value.device)) for name, value in captured.inputs.items()}
        return Captured(captured.hidden.index_select(0, keep.to(captured.hidden.device)), calls, inputs)

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None, attention_mask: Tensor | None = None) -> Tensor:
        """The first layer's input (embeddings and any projection) for these ids."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask if attention_mask is not None else torch.ones_like(input_ids)}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.capture(inputs).hidden

    def pooler_dense(self) -> nn.Linear | None:
        """The backbone's pooler dense layer, left in place."""
        pooler = getattr(self.backbone, "pooler", None)
        dense = pooler if isinstance(pooler, nn.Linear) else getattr(pooler, "dense", None)
        return dense if isinstance(dense, nn.Linear) else None

    def take_pooler(self) -> nn.Linear | None:
        """Detach the backbone's pooler dense layer (so no parameter goes unused); the
        exit heads are initialised from it."""
        pooler = getattr(self.backbone, "pooler", None)
        dense = pooler if isinstance(pooler, nn.Linear) else getattr(pooler, "dense", None)
        if pooler is not None:
            self.backbone.pooler = None
            if hasattr(self.backbone, "pooler_activation"):
                self.backbone.pooler_activation = None
        return dense if isinstance(dense, nn.Linear) else None


# --------------------------------------------------------------------------- helpers

class _Sequence:
    """Modules applied in order (not an nn.Module: they stay owned by the backbone)."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules

    def __call__(self, hidden: Tensor) -> Tensor:
        for module in self.modules:
            hidden = module(hidden)
        return hidden


def _identity(hidden: Tensor) -> Tensor:
    return hidden


def _is_leafish(module: nn.Module) -> bool:
    """A module doing work of its own (not a container of layers)."""
    return not isinstance(module, (nn.ModuleList, nn.ModuleDict))


class _eval:
    """Eval mode for a block (dropout off), restoring the previous mode."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.was_training = self.module.training
        self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.was_training)
        return False


def _is_decoder_only(model_type: str) -> bool:
    """A model type transformers maps to causal LM but not to masked LM or sequence
    classification with bidirectional attention (GPT-2, Llama, ...)."""
    try:
        from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                            MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    except ImportError:
        return False
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _leaves(tree: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(tree, dict):
        return [leaf for key, value in tree.items() for leaf in _leaves(value, path + (key,))]
    if isinstance(tree, (list, tuple)):
        return [leaf for i, value in enumerate(tree) for leaf in _leaves(value, path + (i,))]
    return [(path, tree)]


def _get(args: tuple, kwargs: dict, path: tuple) -> Any:
    node: Any = (args, kwargs)
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _select_paths(tree: Any, keep: Tensor, paths: set[tuple], path: tuple = ()) -> Any:
    if path in paths and isinstance(tree, Tensor):
        return tree.index_select(0, keep.to(tree.device))
    if isinstance(tree, dict):
        return {key: _select_paths(value, keep, paths, path + (key,)) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_select_paths(value, keep, paths, path + (i,)) for i, value in enumerate(tree))
    return tree

"""ONNX export of early-exit text models: the begin graph is the model's own forward
recording each layer's arguments (as the encoder runner does), one graph per layer called
with exactly those arguments, one graph per exit head. See :mod:`adaptive_exit.deploy.onnx`."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adaptive_exit.deploy.onnx import GraphSpec, Manifest, all_axes_dynamic, export_graph

from .encoder import Captured, LayerCall, _leaves

BATCH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
JSON_LEAVES = (type(None), bool, int, float, str)


def _replace(tree: Any, path: tuple, value: Any) -> Any:
    """A copy of ``tree`` (nested tuples/lists/dicts) with the leaf at ``path`` replaced."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, head: _replace(tree[head], rest, value)}
    items = list(tree)
    items[head] = _replace(items[head], rest, value)
    return type(tree)(items)


class _Begin(nn.Module):
    def __init__(self, model: nn.Module, names: list[str], order: list[int]):
        super().__init__()
        self.model, self.names, self.order = model, names, order

    def forward(self, *inputs: Tensor):
        captured = self.model.adapter.capture(dict(zip(self.names, inputs)))
        tensors = _unique_tensors(captured)
        return (captured.hidden, *[tensors[i] for i in self.order])


class _Stage(nn.Module):
    def __init__(self, model: nn.Module, k: int, call: LayerCall, paths: list[tuple], extra: bool):
        super().__init__()
        self.model, self.k, self.call, self.paths, self.extra = model, k, call, paths, extra

    def forward(self, hidden: Tensor, *tensors: Tensor):
        if self.extra:
            embeddings, mask2d, tensors = tensors[0], tensors[1], tensors[2:]
        tree = (self.call.args, self.call.kwargs)
        for path, tensor in zip(self.paths, tensors):
            tree = _replace(tree, path, tensor)
        call = LayerCall(self.call.module, tree[0], tree[1], self.call.hidden_at)
        calls = [call if i == self.k else None for i in range(self.k + 1)]
        state = {"embeddings": embeddings, "mask2d": mask2d} if self.extra else {}
        return self.model.adapter.run_layer(self.k, hidden, Captured(hidden, calls), state)


class _Exit(nn.Module):
    def __init__(self, model: nn.Module, k: int, input_names: list[str]):
        super().__init__()
        self.model, self.k, self.input_names = model, k, input_names

    def forward(self, hidden: Tensor, mask2d: Tensor, *inputs: Tensor):
        captured = Captured(hidden, [], dict(zip(self.input_names, inputs)))
        return self.model.exit_output(self.k, {"hidden": hidden, "mask2d": mask2d, "captured": captured})


def _unique_tensors(captured: Captured) -> list[Tensor]:
    """Every distinct tensor among the layers' arguments (the hidden states excluded), in call order."""
    seen: dict[int, Tensor] = {}
    for call in captured.calls:
        for path, leaf in _leaves((call.args, call.kwargs)):
            if isinstance(leaf, Tensor) and path != _hidden_path(call) and id(leaf) not in seen:
                seen[id(leaf)] = leaf
    return list(seen.values())


def _hidden_path(call: LayerCall) -> tuple:
    return (0, 0) if isinstance(call.hidden_at, int) else (1, call.hidden_at)


def export_text(model: nn.Module, folder: Path, policy: str, source: Path | None = None) -> Manifest:
    model = model.eval()
    if getattr(model, "reducer", None) is not None:
        raise ValueError("export does not support token reduction yet (which tokens survive is decided per input, "
                         "and the packing is host-side control flow); export a model without model.token_reduction")
    if model.config.task == "token-classification":
        raise ValueError("export covers sequence classification and regression; token classification is not exported yet")
    texts = ["a short example", "a longer example sentence, so that the batch has padding"]
    encoded = model.tokenizer(texts, padding=True, return_tensors="pt")
    names = [n for n in BATCH_INPUTS if n in encoded and n in model.adapter.accepted_inputs]
    inputs = [encoded[n] for n in names]
    with torch.no_grad():
        captured = model.adapter.capture(dict(zip(names, inputs)))
    tensors = _unique_tensors(captured)
    arg_names = {id(t): f"arg_{i}" for i, t in enumerate(tensors)}
    batched_ids = {id(leaf) for k, c in enumerate(captured.calls) for path, leaf in _leaves((c.args, c.kwargs))
                   if isinstance(leaf, Tensor) and (k, path) in model.adapter._batched}
    for call in captured.calls:
        for path, leaf in _leaves((call.args, call.kwargs)):
            if not isinstance(leaf, Tensor) and not isinstance(leaf, JSON_LEAVES):
                raise ValueError(f"a layer argument of type {type(leaf).__name__} cannot be exported")
    folder.mkdir(parents=True, exist_ok=True)
    begin_outputs = ["hidden", *[arg_names[id(t)] for t in tensors]]
    export_graph(_Begin(model, names, list(range(len(tensors)))), inputs, folder / "begin.onnx", names, begin_outputs,
                 all_axes_dynamic(names + begin_outputs, inputs + [captured.hidden] + tensors))
    extra = type(model.adapter.override).__name__ != "Override"
    stages = []
    hidden = captured.hidden
    for k, call in enumerate(captured.calls):
        leaves = [(p, leaf) for p, leaf in _leaves((call.args, call.kwargs)) if isinstance(leaf, Tensor) and p != _hidden_path(call)]
        stage_inputs = ["hidden", *(["embeddings", "mask2d"] if extra and k == 0 else []), *[arg_names[id(t)] for _, t in leaves]]
        args = [hidden, *([captured.hidden, encoded["attention_mask"]] if extra and k == 0 else []), *[t for _, t in leaves]]
        module = _Stage(model, k, call, [p for p, _ in leaves], extra and k == 0)
        export_graph(module, args, folder / f"stage_{k}.onnx", stage_inputs, ["hidden_next"],
                     all_axes_dynamic(stage_inputs + ["hidden_next"], args + [hidden]))
        with torch.no_grad():
            hidden = module(*args)
        stages.append(GraphSpec(f"stage_{k}.onnx", stage_inputs, ["hidden"], ["hidden_next"]))
    exits = []
    converted = bool(getattr(model.config, "classifier", None))
    for k in range(model.num_stages):
        needs_inputs = converted and k == model.num_stages - 1  # the classifier's own head runs from its inputs
        exit_inputs = ["hidden", "mask2d", *(names if needs_inputs else [])]
        args = [hidden, encoded["attention_mask"], *(inputs if needs_inputs else [])]
        export_graph(_Exit(model, k, names if needs_inputs else []), args, folder / f"exit_{k}.onnx", exit_inputs,
                     ["logits"], all_axes_dynamic(exit_inputs, args))
        exits.append(GraphSpec(f"exit_{k}.onnx", exit_inputs, ["logits"]))
    batched = ["hidden", "mask2d", "embeddings", *names, *[arg_names[i] for i in batched_ids if i in arg_names]]
    begin = GraphSpec("begin.onnx", names, begin_outputs)
    manifest = Manifest("text", model.num_stages, [float(model.stage_cost(k)) for k in range(model.num_stages)], names,
                        begin, stages, exits, sorted(set(batched)), policy,
                        {"task": model.config.task, "label_names": model.config.label_names,
                         "max_seq_length": model.config.max_seq_length, "backbone": model.backbone.config.model_type},
                        aliases={"mask2d": "attention_mask", "embeddings": "hidden"},
                        input_defaults={"token_type_ids": "input_ids"} if "token_type_ids" in names else {})
    manifest.save(folder)
    model.tokenizer.save_pretrained(folder)
    if source is not None:
        for name in ("config.json", "budget_policies.json"):
            if (Path(source) / name).is_file():
                shutil.copyfile(Path(source) / name, folder / name)
    return manifest

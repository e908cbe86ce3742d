"""Per-stage ONNX graphs and a StagedModel that runs them on onnxruntime.

An exported model is a folder::

    manifest.json    stages, graph files, state names, which state entries carry the batch
    begin.onnx       batch inputs -> the initial state (embeddings, masks, ... / spectra)
    stage_<k>.onnx   state entries -> updated state entries, for stage k
    exit_<k>.onnx    state entries -> stage k's exit output (or the manifest names a state entry)
    config.json, budget_policies.json, tokenizer files ...   copied from the model folder

The exit policy, compaction and the budget table stay on the host: :class:`OnnxStagedModel`
implements the StagedModel contract, so the same runner, policies, traces and budgets run
unchanged; compaction selects the batch rows of every state entry marked as batched.
Domains decide what their state is (:meth:`Domain.export_onnx`); this module writes graphs,
manifests and runs them. Graphs have dynamic batch and length axes.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from adaptive_exit import io

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1


@dataclass
class GraphSpec:
    """One graph: its file, the state (or batch) entries it reads and the state entries its
    outputs become (the graph's own output names may differ: ``graph_outputs``)."""

    file: str
    inputs: list[str]
    outputs: list[str]
    graph_outputs: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "inputs": self.inputs, "outputs": self.outputs,
                "graph_outputs": self.graph_outputs or self.outputs}


@dataclass
class Manifest:
    domain: str
    num_stages: int
    stage_costs: list[float]
    batch_inputs: list[str]
    begin: GraphSpec
    stages: list[GraphSpec]
    exits: list[GraphSpec | str]  # a graph, or the name of the state entry that is the exit output
    batched: list[str]  # state entries whose dim 0 is the batch (compaction selects their rows)
    default_policy: str = "full"
    extra: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # state entries that are copies of batch inputs or begin outputs
    input_defaults: dict[str, str] = field(default_factory=dict)  # optional batch input -> the input it is zeros like

    def save(self, folder: Path) -> None:
        io.write_json(folder / MANIFEST, {
            "format": FORMAT, "domain": self.domain, "num_stages": self.num_stages, "stage_costs": self.stage_costs,
            "batch_inputs": self.batch_inputs, "begin": self.begin.to_dict(), "stages": [s.to_dict() for s in self.stages],
            "exits": [e if isinstance(e, str) else e.to_dict() for e in self.exits], "batched": self.batched,
            "default_policy": self.default_policy, "extra": self.extra, "aliases": self.aliases,
            "input_defaults": self.input_defaults})

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"not an exported model folder: {path} is missing (run adaptive-exit export)")
        try:
            data = io.read_json(path)
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            graph = lambda d: GraphSpec(confined_name(d["file"]), list(d["inputs"]), list(d["outputs"]),  # noqa: E731
                                        list(d.get("graph_outputs") or d["outputs"]))
            return cls(data["domain"], int(data["num_stages"]), [float(c) for c in data["stage_costs"]],
                       list(data["batch_inputs"]), graph(data["begin"]), [graph(s) for s in data["stages"]],
                       [e if isinstance(e, str) else graph(e) for e in data["exits"]], list(data["batched"]),
                       str(data.get("default_policy", "full")), dict(data.get("extra", {})), dict(data.get("aliases", {})),
                       dict(data.get("input_defaults", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid export manifest ({exc})") from None


def confined_name(file: object) -> str:
    """A graph file named by a manifest: a plain file name inside the exported folder (no
    absolute path, no folder, no ``..``), so a crafted manifest cannot reach other files."""
    if not isinstance(file, str) or not file or Path(file).name != file or file in (".", "..") or "\\" in file:
        raise ValueError(f"graph file {str(file)[:100]!r} is not a file name inside the exported folder")
    return file


def export_graph(module: nn.Module, args: Sequence[Tensor], path: Path, input_names: list[str], output_names: list[str],
                 dynamic: dict[str, dict[int, str]] | None = None, opset: int = 17) -> None:
    """Export ``module(*args)`` to ``path`` (TorchScript-based exporter: it traces through
    Python-level dispatch such as the encoder runner's recorders), atomically, with every
    listed axis dynamic."""
    module = module.eval()
    modes = {m: m.training for m in module.modules()}
    try:
        with torch.no_grad():
            io.write_with(path, lambda tmp: torch.onnx.export(
                module, tuple(args), str(tmp), input_names=input_names, output_names=output_names,
                dynamic_axes=dynamic or {}, opset_version=opset, dynamo=False, do_constant_folding=True))
    finally:
        for m, training in modes.items():
            m.training = training


def all_axes_dynamic(names: Sequence[str], tensors: Sequence[Tensor]) -> dict[str, dict[int, str]]:
    """Every axis of every named tensor dynamic (batch, length, ...), named per tensor."""
    return {name: {d: f"{name}_{d}" for d in range(t.dim())} for name, t in zip(names, tensors)}


def quantize_folder(folder: Path, graphs: Sequence[str]) -> None:
    """Dynamic int8 quantization (onnxruntime) of the named graphs, in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's advice to pre-process goes to the root logger at WARNING
    try:
        for name in graphs:
            path = Path(folder) / name
            io.write_with(path, lambda tmp: quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8))
    finally:
        root.setLevel(level)


class OnnxStagedModel:
    """A StagedModel over onnxruntime sessions of an exported folder (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        self.num_stages = self.manifest.num_stages
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self._providers = list(providers or ["CPUExecutionProvider"])
        self._options = options
        self._sessions: dict[str, Any] = {}
        self._batched = set(self.manifest.batched)

    def _session(self, file: str):
        if file not in self._sessions:
            import onnxruntime as ort

            path = self.folder / file
            if not path.is_file():
                raise FileNotFoundError(f"exported graph missing: {path}")
            self._sessions[file] = ort.InferenceSession(str(path), self._options, providers=self._providers)
        return self._sessions[file]

    def _run(self, spec: GraphSpec, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session(spec.file)
        wanted = {i.name for i in session.get_inputs()}  # the exporter drops inputs a graph does not use
        feed = {name: values[name] for name in spec.inputs if name in wanted}
        return dict(zip(spec.outputs, session.run(spec.graph_outputs or spec.outputs, feed)))

    # ------------------------------------------------------------------ StagedModel

    def begin(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        for name, like in self.manifest.input_defaults.items():  # e.g. token_type_ids: zeros like input_ids
            if name not in batch and like in batch:
                batch[name] = np.zeros_like(_numpy(batch[like]))
        missing = [name for name in self.manifest.begin.inputs if name not in batch]
        if missing:
            raise ValueError(f"the exported model needs batch inputs {missing}")
        values = {name: _numpy(batch[name]) for name in self.manifest.begin.inputs}
        state = {**values, **self._run(self.manifest.begin, values)}  # batch inputs stay in the state
        for alias, source in self.manifest.aliases.items():
            state[alias] = state[source]
        return state

    def run_stage(self, k: int, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**state, **self._run(self.manifest.stages[k], state)}

    def exit_output(self, k: int, state: dict[str, np.ndarray]) -> Tensor:
        spec = self.manifest.exits[k]
        if isinstance(spec, str):
            return torch.from_numpy(state[spec])
        return torch.from_numpy(next(iter(self._run(spec, state).values())))

    def select(self, state: dict[str, np.ndarray], keep: Tensor) -> dict[str, np.ndarray]:
        rows = keep.cpu().numpy()
        return {name: (value[rows] if name in self._batched else value) for name, value in state.items()}

    def stage_cost(self, k: int) -> float:
        return self.manifest.stage_costs[k]


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)

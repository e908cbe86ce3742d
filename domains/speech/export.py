"""ONNX export of progressive enhancers: the begin graph (the state from the noisy
spectrum), one graph per stage; the exit output is the estimate in the state. Each model
class names its state (``state_names``) and what a stage updates (``stage_updates``).
STFT and inverse STFT stay on the host (:func:`enhance_waveform`)."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from torch import Tensor, nn

from adaptive_exit.deploy.onnx import GraphSpec, Manifest, all_axes_dynamic, export_graph

from .data import synthetic_speech

class _Begin(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, noisy_spec: Tensor, frames: Tensor):
        state = self.model.begin({"noisy_spec": noisy_spec, "frames": frames})
        return tuple(state[name] for name in self.model.state_names)


class _Stage(nn.Module):
    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, *values: Tensor):
        state = self.model.run_stage(self.k, dict(zip(self.model.state_names, values)))
        return tuple(state[name] for name in self.model.stage_updates)


def export_speech(model: nn.Module, folder: Path, policy: str, source: Path | None = None) -> Manifest:
    model = model.eval()
    import numpy as np

    state_names, updates = list(model.state_names), list(model.stage_updates)
    wavs = [torch.from_numpy(synthetic_speech(seconds, np.random.default_rng(i))) for i, seconds in enumerate((0.6, 0.4))]
    spec, frames = model.stft.batch(wavs)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        state = model.begin({"noisy_spec": spec, "frames": frames})
    begin_inputs = ["noisy_spec", "frames"]
    export_graph(_Begin(model), [spec, frames], folder / "begin.onnx", begin_inputs, state_names,
                 all_axes_dynamic(begin_inputs + state_names, [spec, frames] + [state[n] for n in state_names]))
    stages = []
    for k in range(model.num_stages):
        args = [state[n] for n in state_names]
        outputs = [f"{name}_next" for name in updates]
        export_graph(_Stage(model, k), args, folder / f"stage_{k}.onnx", state_names, outputs,
                     all_axes_dynamic(state_names + outputs, args + [state[n] for n in updates]))
        with torch.no_grad():
            state = model.run_stage(k, state)
        stages.append(GraphSpec(f"stage_{k}.onnx", state_names, updates, outputs))
    manifest = Manifest("speech", model.num_stages, [float(model.stage_cost(k)) for k in range(model.num_stages)],
                        begin_inputs, GraphSpec("begin.onnx", begin_inputs, state_names), stages, ["estimate"] * model.num_stages,
                        state_names, policy, {"config": dataclasses.asdict(model.config), "sample_rate": model.sample_rate})
    manifest.save(folder)
    if source is not None:
        for name in ("config.json", "budget_policies.json"):
            if (Path(source) / name).is_file():
                shutil.copyfile(Path(source) / name, folder / name)
    return manifest

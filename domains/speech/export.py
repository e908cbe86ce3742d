"""ONNX export of progressive enhancers: the begin graph (frame mask, initial estimate and
memory from the noisy spectrum), one graph per stage; the exit output is the estimate in
the state. STFT and inverse STFT stay on the host (:func:`enhance_waveform`)."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from torch import Tensor, nn

from adaptive_exit.onnx_export import GraphSpec, Manifest, all_axes_dynamic, export_graph

from .data import synthetic_speech

STATE = ["noisy", "estimate", "h", "mask"]


class _Begin(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, noisy_spec: Tensor, frames: Tensor):
        state = self.model.begin({"noisy_spec": noisy_spec, "frames": frames})
        return tuple(state[name] for name in STATE)


class _Stage(nn.Module):
    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, noisy: Tensor, estimate: Tensor, h: Tensor, mask: Tensor):
        state = self.model.run_stage(self.k, dict(zip(STATE, (noisy, estimate, h, mask))))
        return state["estimate"], state["h"]


def export_speech(model: nn.Module, folder: Path, policy: str, source: Path | None = None) -> Manifest:
    model = model.eval()
    gen = torch.Generator().manual_seed(0)
    import numpy as np

    wavs = [torch.from_numpy(synthetic_speech(seconds, np.random.default_rng(i))) for i, seconds in enumerate((0.6, 0.4))]
    spec, frames = model.stft.batch(wavs)
    del gen
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        state = model.begin({"noisy_spec": spec, "frames": frames})
    begin_inputs = ["noisy_spec", "frames"]
    export_graph(_Begin(model), [spec, frames], folder / "begin.onnx", begin_inputs, STATE,
                 all_axes_dynamic(begin_inputs + STATE, [spec, frames] + [state[n] for n in STATE]))
    stages = []
    for k in range(model.num_stages):
        args = [state[n] for n in STATE]
        outputs = ["estimate_next", "h_next"]
        export_graph(_Stage(model, k), args, folder / f"stage_{k}.onnx", STATE, outputs,
                     all_axes_dynamic(STATE + outputs, args + args[1:3]))
        with torch.no_grad():
            state = model.run_stage(k, state)
        stages.append(GraphSpec(f"stage_{k}.onnx", STATE, ["estimate", "h"], outputs))
    manifest = Manifest("speech", model.num_stages, [float(model.stage_cost(k)) for k in range(model.num_stages)],
                        begin_inputs, GraphSpec("begin.onnx", begin_inputs, STATE), stages, ["estimate"] * model.num_stages,
                        list(STATE), policy, {"config": dataclasses.asdict(model.config), "sample_rate": model.sample_rate})
    manifest.save(folder)
    if source is not None:
        for name in ("config.json", "budget_policies.json"):
            if (Path(source) / name).is_file():
                shutil.copyfile(Path(source) / name, folder / name)
    return manifest

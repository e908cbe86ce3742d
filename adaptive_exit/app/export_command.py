"""``adaptive-exit export``: a saved model folder to per-stage ONNX graphs, checked on a probe."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from adaptive_exit.app.domain import get_domain, model_domain
from adaptive_exit.deploy.onnx import Manifest, quantize_folder

logger = logging.getLogger(__name__)


def run_export(model_dir: Path, output: Path, int8: bool = False) -> str:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"--output {output} exists and is not an empty folder; nothing was written")
    domain = get_domain(model_domain(model_dir))
    model, policy = domain.load_model(model_dir)
    staging = output.with_name(f".{output.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        manifest: Manifest = domain.export_onnx(model, staging, policy, source=model_dir)
        if int8:
            quantize_folder(staging, [s.file for s in manifest.stages])
        if output.exists():
            output.rmdir()
        staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    exported, _ = domain.load_exported(output)
    check = parity_on_probe(model, exported, domain)
    size = sum(f.stat().st_size for f in output.glob("*.onnx")) / 2**20
    return (f"exported {manifest.num_stages} stages of {model_dir} to {output} ({size:.1f} MB of ONNX"
            f"{', stage graphs int8' if int8 else ''}); on a probe batch the exported model's exit outputs differ from "
            f"PyTorch's by at most {check:.2g}")


@torch.no_grad()
def parity_on_probe(model, exported, domain) -> float:
    """Largest difference between the PyTorch and exported models' exit outputs on a probe batch."""
    batch = domain.probe_batch(model) if hasattr(domain, "probe_batch") else None
    if batch is None:
        return float("nan")
    worst = 0.0
    state_a, state_b = model.begin(batch), exported.begin(batch)
    for k in range(model.num_stages):
        state_a, state_b = model.run_stage(k, state_a), exported.run_stage(k, state_b)
        a, b = model.exit_output(k, state_a), exported.exit_output(k, state_b)
        worst = max(worst, float((a.float() - b.float()).abs().max()))
    return worst

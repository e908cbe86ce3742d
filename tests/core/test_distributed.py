"""Two CPU processes (gloo) train with the same loop and end with identical weights."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("dist_train_script.py")


def _launch(cmd, tmp_path, **extra_env):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]), **extra_env)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_process_training_ends_with_identical_weights(tmp_path, launcher):
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path)]
        _launch(cmd, tmp_path)
    else:
        if shutil.which("accelerate") is None:
            pytest.skip("accelerate CLI not installed")
        # `accelerate launch --cpu --num_processes 2` starts a single process (accelerate#2741);
        # the multi-process launcher with ACCELERATE_USE_CPU=1 gives 2 CPU processes on gloo.
        cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533", str(SCRIPT), str(tmp_path)]
        _launch(cmd, tmp_path, ACCELERATE_USE_CPU="1")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    losses = [h["loss"] for h in ranks[0]["history"] if "loss" in h]
    assert losses[-1] < losses[0]

    # The same data order on one process: the 2-process run matches it up to float reduction order.
    single = tmp_path / "single"
    single.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(SCRIPT), str(single)], check=True, env=env, capture_output=True, timeout=300)
    alone = torch.load(single / "rank0.pt", weights_only=True)
    for name, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, alone["state"][name], rtol=1e-3, atol=1e-4)

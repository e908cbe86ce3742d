"""Small saved models and runs for the reliability tests (built once per module)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from adaptive_exit.app.cli import main
from tests.conftest import REPO

DEMO = REPO / "recipes" / "core" / "toy" / "demo.yaml"
QUICK = ["train.max_steps=20", "train.progress=false", "data.train_size=128", "data.dev_size=96",
         "eval.timing_repeats=1", "calibrate.budget=null", "model.hidden=16"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("toy") / "run"
    assert main(["run", str(DEMO), f"run_dir={run_dir}", *QUICK, "-q"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def speech_model(tmp_path_factory) -> Path:
    from adaptive_exit.speech.domain import DOMAIN
    from adaptive_exit.speech.models import enhancer_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("speech") / "model"
    DOMAIN.save_model(DOMAIN.build_model(enhancer_config(num_stages=3, hidden=8), None), path, "full")
    return path


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    from adaptive_exit.text.domain import DOMAIN
    from tests.text.helpers import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("text")
    model = tiny_model("bert", num_labels=2)
    model.tokenizer = tiny_tokenizer(folder)
    DOMAIN.save_model(model, folder / "model", "patience:1")
    return folder / "model"


def speech_like(seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, sr: int = 16000, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr, subtype=subtype)
    return path


def cli(*args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed command in a fresh process (what a user runs)."""
    return subprocess.run([sys.executable, "-m", "adaptive_exit", *args], input=stdin, capture_output=True,
                          timeout=timeout, cwd=REPO)

"""The shipped speech model: it loads from the package, enhances offline and streamed, and
``adaptive-exit enhance`` uses it when no --model is given."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from adaptive_exit.app.cli import main
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.speech import pretrained
from adaptive_exit.speech.domain import load_speech_model
from adaptive_exit.speech.enhance import enhance_waveform
from adaptive_exit.speech.metrics import si_sdr
from adaptive_exit.speech.streaming import StreamingEnhancer

def test_shipped_model_is_small_and_documented():
    folder = pretrained.path()
    assert pretrained.DEFAULT in pretrained.available()
    assert (folder / "model.safetensors").stat().st_size <= 8 * 2**20
    readme = (folder / "README.md").read_text()
    assert "adaptive-exit run" in readme and "PESQ" in readme  # the command that made it and its scores
    assert json.loads((folder / "budget_policies.json").read_text())  # calibrated budgets for --budget
    with pytest.raises(FileNotFoundError, match="no shipped speech model"):
        pretrained.path("nope")


def test_shipped_model_enhances_offline_and_streamed():
    from adaptive_exit.speech.examples import clean_path, noisy_path

    model, policy = load_speech_model(pretrained.path())
    noisy, _ = sf.read(noisy_path(), dtype="float32")  # the recording shipped with the package (no data needed)
    clean, _ = sf.read(clean_path(), dtype="float32")
    enhanced, result = enhance_waveform(EarlyExitRunner(model, "full"), noisy)
    assert len(enhanced) == len(noisy) and np.all(np.isfinite(enhanced))
    assert float(si_sdr(clean, enhanced)) > float(si_sdr(clean, noisy)) + 3.0  # it really denoises
    streamer = StreamingEnhancer(model, "full")
    streamed = np.concatenate([streamer.push(noisy), streamer.flush()])
    assert np.abs(streamed - enhanced).max() < 1e-4


def test_enhance_without_model_uses_the_shipped_one(tmp_path, capsys):
    from adaptive_exit.speech.data import SyntheticDataset

    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", SyntheticDataset(1, 0, seconds=1.0)[0]["noisy"], 16000)
    assert main(["enhance", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--budget", "mean:0.5"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "error" not in record and Path(record["output"]).is_file()


def test_the_example_recording_ships_with_its_licence():
    from adaptive_exit.speech.examples import FOLDER, clean_path, noisy_path

    assert sum(p.stat().st_size for p in (noisy_path(), clean_path())) <= 200 * 1024
    noisy, rate = sf.read(noisy_path(), dtype="float32")
    clean, _ = sf.read(clean_path(), dtype="float32")
    assert rate == 16000 and len(noisy) == len(clean) > 16000
    provenance = (FOLDER / "README.md").read_text()
    assert "CC BY 4.0" in provenance and "doi:10.7488/ds/2117" in provenance and "md5" in provenance

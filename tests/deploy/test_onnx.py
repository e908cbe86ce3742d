"""Per-stage ONNX export: the same runner, policies and compaction on onnxruntime give the
PyTorch model's exit stages and outputs."""
import pytest
import torch

pytest.importorskip("onnxruntime")

from adaptive_exit.app.cli import main
from adaptive_exit.app.domain import load_any_model
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.traces import record_trace, replay
from tests.text.helpers import random_batch, tiny_model, tiny_tokenizer

POLICIES = ["patience:1", "entropy:0.68", "patience:2 | budget:3"]


def exported_text(tmp_path, arch="bert", int8=False, **kwargs):
    from adaptive_exit.text.domain import DOMAIN

    model = tiny_model(arch, num_labels=3, **kwargs)
    model.tokenizer = tiny_tokenizer(tmp_path)
    DOMAIN.save_model(model, tmp_path / "model", "patience:1")
    assert main(["export", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "onnx"),
                 *(["--int8"] if int8 else [])]) == 0
    return load_any_model(tmp_path / "model")[0], load_any_model(tmp_path / "onnx")[0]


@pytest.mark.parametrize("arch", ["bert", "distilbert", "deberta-v2", "modernbert", "llama", "gpt2", "gemma2"])
def test_text_onnx_matches_pytorch_under_compaction(tmp_path, arch):
    model, onnx = exported_text(tmp_path, arch)
    batch = random_batch(8, 12, seed=6)
    for policy in POLICIES:
        a, b = EarlyExitRunner(model, policy)(batch), EarlyExitRunner(onnx, policy)(batch)
        assert torch.equal(a.exit_stage, b.exit_stage), policy
        torch.testing.assert_close(b.output, a.output, rtol=0, atol=1e-4)
    trace = record_trace(onnx, [batch], progress=False)  # traces (and so sweeps and budgets) run on it too
    assert torch.equal(replay(trace, "patience:1").exit_stage, EarlyExitRunner(model, "patience:1")(batch).exit_stage)


def test_converted_classifier_exports_with_its_own_head(tmp_path):
    from adaptive_exit.text.modeling import EarlyExitForSequenceClassification
    from tests.text.test_convert import save_classifier

    original = save_classifier("roberta", tmp_path / "cls")
    model = EarlyExitForSequenceClassification.from_classifier(str(tmp_path / "cls")).eval()
    model.tokenizer = tiny_tokenizer(tmp_path)
    from adaptive_exit.text.domain import DOMAIN

    DOMAIN.save_model(model, tmp_path / "model", "full")
    assert main(["export", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "onnx")]) == 0
    onnx, _, _ = load_any_model(tmp_path / "onnx")
    batch = random_batch(5, 9, seed=2)
    with torch.no_grad():
        expected = original(**batch).logits
    torch.testing.assert_close(EarlyExitRunner(onnx, "full")(batch).output, expected, rtol=0, atol=1e-4)


def test_int8_stage_graphs_keep_the_predictions_close(tmp_path):
    model, onnx = exported_text(tmp_path, "bert", int8=True)
    batch = random_batch(8, 12, seed=1)
    a, b = EarlyExitRunner(model, "full")(batch), EarlyExitRunner(onnx, "full")(batch)
    assert (a.output - b.output).abs().max() < 0.05  # int8 weights: close, not equal


@pytest.mark.parametrize("architecture", ["dual-path", "dprnn", "stage-recurrent"])
def test_speech_onnx_matches_pytorch_under_compaction(tmp_path, architecture):
    from adaptive_exit.speech.domain import DOMAIN
    from adaptive_exit.speech.enhance import enhance_batch
    from adaptive_exit.speech.models import enhancer_config
    from adaptive_exit.speech.data import SyntheticDataset

    torch.manual_seed(0)
    model = DOMAIN.build_model(enhancer_config(architecture=architecture, num_stages=4, hidden=16,
                                                   **({"causal": True} if architecture == "stage-recurrent" else {})), None).eval()
    outputs = [s.out for s in model.stages] if architecture == "stage-recurrent" else [h.refine[-1] for h in model.heads]
    with torch.no_grad():
        for out in outputs:
            out.weight.mul_(20)  # random stages that differ, so the convergence rule has work to do
    DOMAIN.save_model(model, tmp_path / "model", "full")
    assert main(["export", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "onnx")]) == 0
    onnx, _, _ = load_any_model(tmp_path / "onnx")
    audio = [SyntheticDataset(3, i, seconds=s)[0]["noisy"] for i, s in enumerate((0.5, 0.8, 0.3))]
    for policy in ("patience:1,threshold=0.05,distance=relative", "patience:2,threshold=0.02,distance=relative"):
        a_wavs, a = enhance_batch(EarlyExitRunner(model, policy), audio)
        b_wavs, b = enhance_batch(EarlyExitRunner(onnx, policy), audio)
        assert torch.equal(a.exit_stage, b.exit_stage)
        for x, y in zip(a_wavs, b_wavs):
            assert abs(x - y).max() <= 1e-4 * max(1.0, abs(x).max())  # float32 rounding, relative to the level

import json
import math

import pytest
import torch

from adaptive_exit.app.cli import main
from adaptive_exit.training.losses import exit_weights
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.text.data import TextCollator
from adaptive_exit.text.domain import DOMAIN
from adaptive_exit.text.modeling import EarlyExitForSequenceClassification
from adaptive_exit.runtime.traces import Trace, replay

from .helpers import random_batch, tiny_model, tiny_tokenizer


@pytest.mark.parametrize("head_style", ["pabee", "deebert"])
def test_save_load_round_trip_gives_identical_predictions(tmp_path, head_style):
    model = tiny_model("bert", num_labels=3, head_style=head_style)
    model.set_policy("entropy:0.9")
    batch = random_batch(6, 8, seed=2)
    with torch.no_grad():
        before = model(**batch, output_all_exits=True)
    model.save_pretrained(tmp_path)
    loaded = EarlyExitForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.default_policy == "entropy:0.9"
    assert loaded.config.head_style == head_style and loaded.config.num_labels == 3
    with torch.no_grad():
        after = loaded(**batch, output_all_exits=True)
        early = loaded(**batch)
    assert torch.equal(before.all_logits, after.all_logits)
    assert torch.equal(early.exit_layer, after.exit_layer)
    torch.testing.assert_close(early.logits, after.logits, rtol=1e-5, atol=1e-6)


def test_head_styles_share_or_own_poolers():
    pabee = tiny_model("bert", head_style="pabee")
    deebert = tiny_model("bert", head_style="deebert")
    assert pabee.poolers is None and pabee.pooler is not None
    assert len(deebert.poolers) == deebert.num_stages
    # DeeBERT poolers start as copies of the final (pretrained) pooler
    for pooler in deebert.poolers:
        assert torch.equal(pooler.dense.weight, deebert.poolers[-1].dense.weight)
    assert deebert.backbone.pooler is None  # taken over: no unused parameters


def test_training_forward_uses_pabee_weighted_loss():
    model = tiny_model("bert", num_labels=2)
    model.train()
    model.dropout.p = 0.0
    batch = random_batch(4, 6, seed=4)
    labels = torch.tensor([0, 1, 1, 0])
    out = model(**batch, labels=labels, output_all_exits=True)
    per_exit = [torch.nn.functional.cross_entropy(out.all_logits[:, k], labels) for k in range(model.num_stages)]
    weights = exit_weights("pabee", model.num_stages)
    expected = sum(w * l for w, l in zip(weights, per_exit)) / sum(weights)
    torch.testing.assert_close(out.loss, expected)
    assert out.exit_layer.tolist() == [model.num_stages] * 4


def test_dropout_only_in_training():
    model = tiny_model("bert", exit_dropout=0.5)
    batch = random_batch(3, 5, seed=0)
    with torch.no_grad():
        a, b = model(**batch, output_all_exits=True), model(**batch, output_all_exits=True)
    assert torch.equal(a.all_logits, b.all_logits)


def test_sentence_pairs_get_segment_ids(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    collate = TextCollator(tokenizer, max_length=32)
    batch = collate([{"text": "the movie", "text_pair": "the plot is fun", "label": 1},
                     {"text": "a film", "text_pair": "boring", "label": 0}])
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    model = tiny_model("bert")
    with torch.no_grad():
        with_segments = model(**batch, output_all_exits=True).all_logits
        batch.pop("token_type_ids")
        without = model(**batch, output_all_exits=True).all_logits
    assert not torch.allclose(with_segments, without)


def test_over_long_and_empty_text_are_handled(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    collate = TextCollator(tokenizer, max_length=16)
    batch = collate([{"text": " ".join(["good"] * 1000), "text_pair": None, "label": 1},
                     {"text": "", "text_pair": None, "label": 0}])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"][1].sum() == 2  # [CLS] [SEP]
    with torch.no_grad():
        out = tiny_model("bert")(**batch)
    assert torch.isfinite(out.logits).all()


def test_regression_patience_on_predicted_value():
    model = tiny_model("bert", task="regression")
    assert model.config.num_labels == 1
    batch = random_batch(16, 7, seed=9)
    with torch.no_grad():
        values = model(**batch, output_all_exits=True).all_logits[..., 0]  # (B, L)
    deltas = (values[:, 1:] - values[:, :-1]).abs()
    threshold = float(deltas.median())
    model.set_policy(f"patience:1,threshold={threshold}")
    with torch.no_grad():
        out = model(**batch)
    for i in range(16):
        small = (deltas[i] < threshold).nonzero()
        expected = int(small[0]) + 2 if len(small) else model.num_stages  # layers used
        assert int(out.exit_layer[i]) == expected
    trace = Trace(values.unsqueeze(-1), [1.0] * model.num_stages)
    assert torch.equal(replay(trace, model.policy).exit_stage + 1, out.exit_layer)


def test_text_objective_uses_the_model_task_loss():
    from adaptive_exit.training import TrainConfig

    cfg = TrainConfig(exit_weights="uniform")
    regression = DOMAIN.objective(cfg, tiny_model("bert", task="regression"))
    loss = regression([torch.tensor([[0.5], [1.5]])] * 2, {"labels": torch.tensor([1.0, 1.0])})
    assert loss.item() == pytest.approx((0.25 + 0.25) / 2)
    classification = DOMAIN.objective(cfg, tiny_model("bert", num_labels=2))
    # a two-class model with one class: cross-entropy, not a guess from the output shape
    assert classification([torch.zeros(2, 2)] * 2, {"labels": torch.tensor([0, 1])}).item() == pytest.approx(math.log(2))


def test_predict_cli_prints_json_lines(tmp_path, capsys):
    model = tiny_model("bert", num_labels=2)
    model.tokenizer = tiny_tokenizer(tmp_path)
    DOMAIN.save_model(model, tmp_path / "model", "patience:1")
    inputs = tmp_path / "in.txt"
    inputs.write_text("the movie is good\n\n" + " ".join(["bad"] * 500) + "\nthe plot\tis fun\n")
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(inputs), "--batch-size", "2"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["line"] for l in lines] == [1, 2, 3, 4]
    assert lines[1] == {"line": 2, "error": "line 2: empty text"}
    for record in (lines[0], lines[2], lines[3]):
        assert record["label"] in (0, 1) and 0.5 <= record["score"] <= 1.0 and 2 <= record["exit_layer"] <= 4
    assert lines[3]["text_pair"] == "is fun"


def test_predict_cli_reports_missing_model(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "nope"), "--input", "-"]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_dict_policy_survives_save_load_predict(tmp_path, capsys):
    """A policy given as a dict (as a recipe's eval.policy may be) is parsed once and stored
    as its canonical spec: the saved model loads it back and predict runs under it."""
    from adaptive_exit.policies import build_policy

    policy = build_policy({"type": "any", "policies": [{"type": "confidence", "measure": "entropy", "threshold": 0.6},
                                                       "patience:2"]})
    model = tiny_model("bert", num_labels=2)
    model.tokenizer = tiny_tokenizer(tmp_path)
    DOMAIN.save_model(model, tmp_path / "model", policy)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["default_policy"] == "entropy:0.6 | patience:2"
    loaded, default = DOMAIN.load_model(tmp_path / "model")
    assert default == policy
    inputs = tmp_path / "in.txt"
    inputs.write_text("the movie is good\nthe plot is boring\n")
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(inputs)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = EarlyExitRunner(loaded, policy)(TextCollator(loaded.tokenizer, 128)(
        [{"text": t, "text_pair": None, "label": None} for t in ("the movie is good", "the plot is boring")]))
    assert [r["exit_layer"] for r in records] == (expected.exit_stage + 1).tolist()

"""Converting a fine-tuned classifier: its own head is the last exit, predictions unchanged."""
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from adaptive_exit.app.cli import main
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.text.modeling import EarlyExitForSequenceClassification

from .helpers import TINY, random_batch, tiny_tokenizer

# families whose sequence-classification heads differ: pooler (BERT, ALBERT), a head on <s> (RoBERTa,
# ELECTRA), pre_classifier (DistilBERT), ContextPooler (DeBERTa-v2), pooled head + final norm (ModernBERT),
# final norm + head (XLM-RoBERTa-XL)
FAMILIES = ["bert", "albert", "roberta", "electra", "distilbert", "deberta-v2", "modernbert", "xlm-roberta-xl"]


def save_classifier(arch: str, folder, num_labels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    config = TINY[arch]()
    config.num_labels = num_labels
    config.id2label = {i: f"class_{i}" for i in range(num_labels)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    return model


@pytest.mark.parametrize("arch", FAMILIES)
def test_last_exit_is_the_original_classifier(tmp_path, arch):
    original = save_classifier(arch, tmp_path / "cls")
    model = EarlyExitForSequenceClassification.from_classifier(str(tmp_path / "cls")).eval()
    assert model.config.label_names == ["class_0", "class_1", "class_2"]
    batch = random_batch(6, 9, seed=4)
    with torch.no_grad():
        expected = original(**batch).logits
        full = EarlyExitRunner(model, "full")(batch)
    assert torch.equal(full.output.argmax(-1), expected.argmax(-1))
    torch.testing.assert_close(full.output, expected, rtol=0, atol=1e-6)
    # the early exits are new heads with the same output space; compaction leaves the last exit alone
    early = EarlyExitRunner(model, "patience:1")(batch)
    last = early.exit_stage == model.num_stages - 1
    torch.testing.assert_close(early.output[last], expected[last], rtol=0, atol=1e-6)
    # save -> load keeps the original head (one copy of the backbone in the file)
    model.save_pretrained(tmp_path / "ee")
    keys = load_file(str(tmp_path / "ee" / "model.safetensors")).keys()
    assert not any(k.startswith("backbone.") for k in keys) and any(k.startswith("original.") for k in keys)
    again = EarlyExitForSequenceClassification.from_pretrained(tmp_path / "ee").eval()
    with torch.no_grad():
        torch.testing.assert_close(EarlyExitRunner(again, "full")(batch).output, expected, rtol=0, atol=1e-6)


def test_convert_command_trains_only_the_new_exits(tmp_path, capsys):
    save_classifier("bert", tmp_path / "cls", num_labels=2)
    words = "the a movie film good bad great awful not very is was it and of to plot acting fun boring".split()
    gen = torch.Generator().manual_seed(1)
    for split, n in (("train", 64), ("dev", 32)):
        lines = ["text,label"]
        for i in range(n):
            lines.append(" ".join(words[j] for j in torch.randint(0, len(words), (5,), generator=gen).tolist()) + f",{i % 2}")
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    assert main(["convert", "--model", str(tmp_path / "cls"), "--train", str(tmp_path / "train.csv"), "--dev",
                 str(tmp_path / "dev.csv"), "--output", str(run), "--steps", "15", "--batch-size", "16",
                 "train.progress=false", "eval.timing_repeats=1", "-q"]) == 0
    assert "Best early-exit operating points" in capsys.readouterr().out
    source = load_file(str(tmp_path / "cls" / "model.safetensors"))
    saved = load_file(str(run / "model" / "model.safetensors"))
    for key, value in source.items():  # two-stage: the classifier (backbone and head) is untouched
        assert torch.equal(saved[f"original.{key}"], value), key
    assert (run / "config.yaml").exists() and json.loads((run / "results.json").read_text())["full_model"]["accuracy"] >= 0
    recipe = (run / "config.yaml").read_text()
    assert "from_classifier: true" in recipe and "scheme: two-stage" in recipe

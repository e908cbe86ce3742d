"""Sentence-level early exit for sequence labeling (SENTEE) on tiny random encoders."""
import pytest
import torch

from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.text.tagging.conll import CONLL2003_TAGS, IGNORE, TokenCollator
from adaptive_exit.text.modeling import EarlyExitConfig
from adaptive_exit.text.tagging.token_model import EarlyExitForTokenClassification

from .helpers import random_batch, tiny_backbone, tiny_tokenizer


def tiny_tagger(arch: str = "bert", seed: int = 0) -> EarlyExitForTokenClassification:
    backbone = tiny_backbone(arch, seed)
    config = EarlyExitConfig(backbone=backbone.config.to_dict(), task="token-classification", num_labels=len(CONLL2003_TAGS),
                             label_names=list(CONLL2003_TAGS), default_policy="normalized_entropy:0.5")
    torch.manual_seed(seed + 1)
    model = EarlyExitForTokenClassification(config, backbone=backbone).eval()
    for classifier in model.classifiers:  # random heads sharp enough that sentences exit at different layers
        classifier.weight.data.normal_(0, 0.6)
    return model


def _alone(model, batch, i, policy):
    n = int(batch["attention_mask"][i].sum())
    single = {"input_ids": batch["input_ids"][i:i + 1, :n], "attention_mask": batch["attention_mask"][i:i + 1, :n]}
    return EarlyExitRunner(model, policy)(single)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
@pytest.mark.parametrize("policy", ["normalized_entropy:0.6", "patience:1"])
def test_sentence_exits_ignore_padding_and_match_per_sentence_runs(arch, policy):
    model = tiny_tagger(arch)
    if policy.startswith("patience"):  # similar heads: tag sequences agree between some layers
        gen = torch.Generator().manual_seed(5)
        for classifier in model.classifiers[1:]:
            classifier.weight.data = model.classifiers[0].weight.data + 0.2 * torch.randn(classifier.weight.shape, generator=gen)
    pad = model.backbone.config.pad_token_id or 0
    batch = random_batch(10, 8, seed=3, pad_id=pad)
    batched = EarlyExitRunner(model, policy)(batch)
    assert len(set(batched.exit_stage.tolist())) > 1  # sentences really exit at different layers
    for i in range(10):
        alone = _alone(model, batch, i, policy)
        n = int(batch["attention_mask"][i].sum())
        assert int(alone.exit_stage[0]) == int(batched.exit_stage[i])  # padding did not keep it alive
        torch.testing.assert_close(batched.output[i, :n], alone.output[0], rtol=1e-4, atol=1e-5)


def test_padding_positions_are_certain_and_constant():
    model = tiny_tagger()
    batch = random_batch(4, 10, seed=1)
    state = model.begin(batch)
    outputs = []
    for k in range(model.num_stages):
        state = model.run_stage(k, state)
        outputs.append(model.exit_output(k, state))
    padded = batch["attention_mask"] == 0
    assert bool(padded.any())
    for out in outputs:
        assert torch.equal(out[padded], outputs[0][padded])
        assert bool((torch.softmax(out[padded], -1)[:, 0] > 1 - 1e-6).all())


def test_training_loss_ignores_unlabelled_positions_and_round_trips(tmp_path):
    model = tiny_tagger()
    tokenizer = tiny_tokenizer(tmp_path)
    batch = TokenCollator(tokenizer, CONLL2003_TAGS, 16)([{"words": ["the", "movie", "is", "good"], "tags": ["O", "B-MISC", "O", "O"]},
                                                         {"words": ["plot"], "tags": ["B-PER"]}])
    model.train()
    out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    out.loss.backward()
    assert out.loss.item() > 0 and model.classifiers[0].weight.grad is not None
    model.eval()
    model.save_pretrained(tmp_path / "tagger")
    loaded = EarlyExitForTokenClassification.from_pretrained(tmp_path / "tagger").eval()
    a = model(batch["input_ids"], batch["attention_mask"])
    b = loaded(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(a.logits, b.logits) and torch.equal(a.exit_layer, b.exit_layer)
    assert loaded.config.label_names == list(CONLL2003_TAGS) and loaded.policy.spec() == "normalized_entropy:0.5"
    with pytest.raises(ValueError, match="token-classification"):
        EarlyExitForTokenClassification(EarlyExitConfig(backbone=model.config.backbone))

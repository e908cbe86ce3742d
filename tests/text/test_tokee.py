"""Token-level early exit (TOKEE): exactness at threshold 0, frozen halted tokens, padding, FLOPs."""
import pytest
import torch

from adaptive_exit.runtime.staged import all_exit_outputs
from adaptive_exit.text.tagging.tokee import layer_flops, token_exit

from .helpers import random_batch
from .test_token_model import tiny_tagger


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_threshold_zero_equals_the_full_model(arch):
    model = tiny_tagger(arch)
    batch = random_batch(5, 11, seed=2, pad_id=model.backbone.config.pad_token_id or 0)
    full = all_exit_outputs(model, batch)[-1]
    result = token_exit(model, batch, threshold=0.0, window=1)
    real = batch["attention_mask"].bool()
    assert bool((result.exit_layer[real] == model.num_stages).all()) and bool((result.exit_layer[~real] == 0).all())
    torch.testing.assert_close(result.logits[real], full[real], rtol=1e-5, atol=1e-5)
    assert torch.equal(result.logits[real].argmax(-1), full[real].argmax(-1))
    assert result.flops == result.full_flops


def test_halted_tokens_keep_their_exit_layer_state_and_compute_falls():
    model = tiny_tagger()
    batch = random_batch(6, 12, seed=4)
    result = token_exit(model, batch, threshold=0.75, window=1)
    real = batch["attention_mask"].bool()
    layers = result.exit_layer[real]
    assert len(set(layers.tolist())) > 1  # tokens really halt at different layers
    # A halted token's final state is frozen: its exit head re-applied to it gives its logits exactly.
    for layer in range(1, model.num_stages + 1):
        chosen = real & (result.exit_layer == layer)
        if bool(chosen.any()):
            again = model.classifiers[layer - 1](result.hidden[chosen])
            assert torch.equal(again, result.logits[chosen])
    assert result.flops < result.full_flops
    assert token_exit(model, batch, threshold=0.9, window=0).flops <= token_exit(model, batch, threshold=0.5, window=0).flops


def test_padding_costs_nothing_and_keeps_no_token_alive():
    model = tiny_tagger()
    batch = random_batch(4, 10, seed=7)
    together = token_exit(model, batch, threshold=0.75, window=2)
    flops = full = 0.0
    for i in range(4):
        n = int(batch["attention_mask"][i].sum())
        single = {"input_ids": batch["input_ids"][i:i + 1, :n], "attention_mask": batch["attention_mask"][i:i + 1, :n]}
        alone = token_exit(model, single, threshold=0.75, window=2)
        assert torch.equal(alone.exit_layer[0], together.exit_layer[i, :n])
        flops, full = flops + alone.flops, full + alone.full_flops
    assert together.flops == pytest.approx(flops) and together.full_flops == pytest.approx(full)
    h, inter = 32, 48
    assert layer_flops(h, inter, real=10, active=0) == 2 * 2 * 10 * h * h  # halted tokens still give keys/values


def test_unsupported_layers_and_bad_arguments_are_clear_errors():
    from .helpers import tiny_backbone
    from adaptive_exit.text.tagging.conll import CONLL2003_TAGS
    from adaptive_exit.text.modeling import EarlyExitConfig
    from adaptive_exit.text.tagging.token_model import EarlyExitForTokenClassification

    backbone = tiny_backbone("distilbert")
    config = EarlyExitConfig(backbone=backbone.config.to_dict(), task="token-classification", num_labels=len(CONLL2003_TAGS))
    model = EarlyExitForTokenClassification(config, backbone=backbone).eval()
    with pytest.raises(ValueError, match="BERT-family layers"):
        token_exit(model, random_batch(2, 5, seed=0), threshold=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        token_exit(tiny_tagger(), random_batch(2, 5, seed=0), threshold=-1)

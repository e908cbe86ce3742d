"""Early exit changes nothing but depth, for every encoder family the layer-by-layer
runner supports; families it cannot run are refused with a reason."""
import pytest
import torch
import transformers
from transformers import AutoModel

from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.text.encoder import LayerwiseEncoder
from adaptive_exit.runtime.traces import record_trace, replay

from .helpers import TINY, random_batch, tiny_backbone, tiny_model


@pytest.mark.parametrize("arch", sorted(TINY))
def test_layer_k_equals_backbone_hidden_state_k(arch):
    reference = tiny_backbone(arch)
    model = tiny_model(arch)  # same seed: same backbone weights
    batch = random_batch(5, 9, seed=1)
    with torch.no_grad():
        hidden_states = reference(**batch, output_hidden_states=True).hidden_states
        state = model.begin(batch)
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(state["hidden"][real], hidden_states[0][real], rtol=0, atol=0)  # the embeddings
        for k in range(model.num_stages):
            state = model.run_stage(k, state)
            mine = model.exit_hidden(state) if k == model.num_stages - 1 else state["hidden"]  # + a final norm, if any
            torch.testing.assert_close(mine[real], hidden_states[k + 1][real], rtol=0, atol=0)
    assert model.num_stages == len(hidden_states) - 1


@pytest.mark.parametrize("arch, pooling", [(a, "cls") for a in sorted(TINY)] + [("bert", "mean"), ("distilbert", "mean")])
@pytest.mark.parametrize("policy", ["patience:1", "entropy:0.68", "patience:2 | budget:3"])
def test_compaction_equals_per_sample_inference(arch, pooling, policy):
    model = tiny_model(arch, num_labels=2, pooling=pooling)
    batch = random_batch(8, 10, seed=3)
    batched = EarlyExitRunner(model, policy)(batch)
    for i in range(8):
        n = int(batch["attention_mask"][i].sum())
        alone = {k: v[i:i + 1, :n] for k, v in batch.items()}  # no padding at all
        single = EarlyExitRunner(model, policy)(alone)
        assert int(batched.exit_stage[i]) == int(single.exit_stage[0])
        torch.testing.assert_close(batched.output[i], single.output[0], rtol=1e-4, atol=1e-5)
    trace = record_trace(model, [batch], progress=False)
    assert torch.equal(replay(trace, policy).exit_stage, batched.exit_stage)


def _layer_mask(state):
    return state["captured"].calls[0].args[1]


def test_mask_is_rebuilt_for_kept_rows():
    model = tiny_model("bert")
    batch = random_batch(4, 8, seed=5)
    batch["attention_mask"][1:] = 1  # only row 0 is padded
    state = model.begin(batch)
    assert _layer_mask(state) is not None
    kept = model.select(state, torch.tensor([1, 2]))
    assert _layer_mask(kept) is None  # no padding left: the arguments are prepared again and sdpa needs no mask
    assert kept["hidden"].shape[0] == 2
    rows = model.select(state, torch.tensor([0, 3]))
    assert _layer_mask(rows).shape[0] == 2  # padding left: the mask's rows are selected


@pytest.mark.parametrize("build, message", [
    (lambda: AutoModel.from_config(transformers.BartConfig(encoder_layers=1, decoder_layers=1, d_model=16, encoder_attention_heads=2,
                                                           decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
                                                           vocab_size=32)), "encoder-decoder"),
    (lambda: transformers.FunnelModel(transformers.FunnelConfig(vocab_size=32, block_sizes=[1, 1], d_model=16, n_head=2,
                                                                d_head=8, d_inner=16)), "pools the sequence between blocks"),
])
def test_families_that_cannot_run_are_refused_with_the_reason(build, message):
    model = build()
    with pytest.raises(ValueError, match=message):
        LayerwiseEncoder(model).layer(0)


def test_a_family_whose_layers_cannot_be_reproduced_is_refused():
    """If something runs between layers that no override covers, the probe says so."""
    from adaptive_exit.text import architectures

    backbone = tiny_backbone("deberta-v2-conv")
    saved = architectures.OVERRIDES.pop("deberta-v2")
    try:
        with pytest.raises(ValueError, match="runs encoder.conv between its layers"):
            LayerwiseEncoder(backbone).layer(0)  # checked on first use (weights are loaded by then)
    finally:
        architectures.OVERRIDES["deberta-v2"] = saved


def test_albert_shares_layer_groups():
    model = tiny_model("albert")
    groups = [id(model.adapter.layer(k)) for k in range(model.num_stages)]
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[0] != groups[2]


def test_compaction_trims_padding_of_exited_long_rows():
    model = tiny_model("bert")
    batch = random_batch(3, 9, seed=2)
    batch["attention_mask"][:] = 0
    for row, n in enumerate((9, 4, 6)):
        batch["attention_mask"][row, :n] = 1
    state = model.run_stage(0, model.begin(batch))
    kept = model.select(state, torch.tensor([1, 2]))
    assert kept["hidden"].shape[1] == 6 and kept["mask2d"].shape[1] == 6
    alone = model.select(state, torch.tensor([1]))
    assert alone["hidden"].shape[1] == 4 and _layer_mask(alone) is None

"""Early exit changes nothing but depth, for every supported encoder family."""
import pytest
import torch
from transformers import AutoModel, GPT2Config

from adaptive_exit.runner import EarlyExitRunner
from adaptive_exit.staged import select_rows
from adaptive_exit.text.architectures import EncoderAdapter
from adaptive_exit.traces import record_trace, replay

from .helpers import TINY, random_batch, tiny_backbone, tiny_model


@pytest.mark.parametrize("arch", sorted(TINY))
def test_layer_k_equals_backbone_hidden_state_k(arch):
    reference = tiny_backbone(arch)
    model = tiny_model(arch)  # same seed: same backbone weights
    batch = random_batch(5, 9, seed=1)
    with torch.no_grad():
        hidden_states = reference(**batch, output_hidden_states=True).hidden_states
        state = model.begin(batch)
        for k in range(model.num_stages):
            state = model.run_stage(k, state)
            real = batch["attention_mask"].bool()
            torch.testing.assert_close(state["hidden"][real], hidden_states[k + 1][real], rtol=0, atol=0)
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


def test_mask_is_rebuilt_for_kept_rows():
    model = tiny_model("bert")
    batch = random_batch(4, 8, seed=5)
    batch["attention_mask"][1:] = 1  # only row 0 is padded
    state = model.begin(batch)
    assert state["mask"] is not None
    kept = model.select(state, torch.tensor([1, 2]))
    assert kept["mask"] is None  # no padding left: sdpa needs no mask
    assert kept["hidden"].shape[0] == 2


def test_unsupported_architecture_names_what_is_missing():
    gpt2 = AutoModel.from_config(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(ValueError, match="unsupported encoder architecture 'gpt2'.*supported: albert, bert"):
        EncoderAdapter(gpt2)


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
    assert alone["hidden"].shape[1] == 4 and alone["mask"] is None

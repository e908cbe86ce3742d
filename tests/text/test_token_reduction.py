"""Token reduction inside the encoder runner (TR-BERT policies, LTP thresholds): exactness,
per-row packing, [CLS], FLOPs, and the REINFORCE signal."""
import math

import pytest
import torch

from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.text.modeling import EarlyExitConfig, EarlyExitForSequenceClassification
from adaptive_exit.runtime.traces import record_trace, replay
from adaptive_exit.text.token_reduction.reducer import attention_received

from .helpers import random_batch, tiny_backbone


def tr_model(arch="bert", method="trbert", seed=0, **extra):
    backbone = tiny_backbone(arch, seed)
    config = EarlyExitConfig(backbone=backbone.config.to_dict(), num_labels=2,
                             token_reduction={"method": method, **extra})
    torch.manual_seed(seed + 1)
    return EarlyExitForSequenceClassification(config, backbone=backbone).eval()


def set_policy_bias(model, value):
    with torch.no_grad():
        for policy in model.reducer.policies.values():
            policy.linear_2.bias.fill_(value)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "albert", "xlm-roberta-xl"])
def test_keeping_every_token_equals_the_unreduced_model_exactly(arch):
    model = tr_model(arch)
    batch = random_batch(5, 11, seed=2)
    model.reducer.mode = "off"
    full = EarlyExitRunner(model, "full")(batch)
    model.reducer.mode = "hard"
    set_policy_bias(model, 50.0)  # p = 1 everywhere
    kept = EarlyExitRunner(model, "full")(batch)
    assert torch.equal(kept.output, full.output)


@pytest.mark.parametrize("method", ["trbert", "ltp"])
def test_rows_keeping_different_counts_equal_each_row_alone(method):
    """Also with layer exits compacting the batch between selection points (LTP scores its
    next selection on the previous layer's input, which compaction must carry along)."""
    model = tr_model("bert", method=method)
    if method == "trbert":
        set_policy_bias(model, 0.0)  # random weights: each row keeps its own subset
    else:
        with torch.no_grad():
            model.reducer.thresholds.fill_(0.9)  # drop tokens that get less attention than ~an average one
    batch = random_batch(6, 12, seed=5)
    # an entropy threshold between the rows' entropies at the second exit: rows leave the batch at different layers
    trace = record_trace(model, [batch], targets=lambda b: torch.zeros(6, dtype=torch.long), progress=False)
    probs = trace.outputs[:, 1].softmax(-1)
    policy = f"entropy:{float(-(probs * probs.log()).sum(-1).median()):.6f}"
    batched = EarlyExitRunner(model, policy)(batch)
    assert len(set(batched.exit_stage.tolist())) > 1
    fractions = []
    for i in range(6):
        n = int(batch["attention_mask"][i].sum())
        alone = EarlyExitRunner(model, policy)({k: v[i:i + 1, :n] for k, v in batch.items()})
        assert int(alone.exit_stage[0]) == int(batched.exit_stage[i])
        torch.testing.assert_close(alone.output[0], batched.output[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(alone.cost[0], batched.cost[i])
        fractions.append(float(alone.fractions[0]))
    assert len({round(f, 4) for f in fractions}) > 2  # rows really kept different shares


def test_ltp_importance_is_the_attention_the_layer_computed():
    """LTP reuses the layer's own query/key projections: its importance equals the attention
    each real token receives, recomputed here the padded way from the layer's input."""
    model = tr_model("bert", method="ltp")
    batch = random_batch(4, 12, seed=7)
    model.reducer.mode = "off"
    state = model.begin(batch)
    layer_input, mask = state["hidden"], state["mask2d"]
    state = model.run_stage(0, state)
    attn = model.adapter.layer(0).attention.self
    b, t, h = layer_input.shape
    heads, size = attn.num_attention_heads, h // attn.num_attention_heads
    q = attn.query(layer_input).view(b, t, heads, size).transpose(1, 2)
    k = attn.key(layer_input).view(b, t, heads, size).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(size)).masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    real = mask.to(scores.dtype)[:, None, :, None]
    expected = (scores.softmax(-1) * real).sum((1, 2)) / heads * mask.to(scores.dtype)
    got = attention_received(model.adapter.layer(0), state["layer_query"], state["layer_key"], mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(got.sum(1), mask.sum(1).to(got.dtype))  # each real query spreads one unit of attention


def test_cls_is_never_dropped_and_packing_cuts_the_batch():
    model = tr_model("bert")
    set_policy_bias(model, -50.0)  # p = 0: only [CLS] survives
    batch = random_batch(4, 10, seed=3)
    state = model.begin(batch)
    for k in range(model.num_stages):
        state = model.run_stage(k, state)
    assert state["hidden"].shape[1] == 1 and state["mask2d"].all()
    assert state["positions"].eq(0).all()  # the surviving token is [CLS] (position 0) in every row


def test_flops_account_equals_a_hand_count():
    model = tr_model("bert")  # hidden 32, FFN 48, 2 labels, policy width 32
    h, i, c = 32, 48, 2
    layer = lambda n: 8 * n * h * h + 4 * n * h * i + 4 * n * n * h  # noqa: E731  Q,K,V,O + FFN + QK^T and AV
    head = 2 * h * h + 2 * h * c  # pooler dense + classifier (mean pooling is not a matmul)
    policy = lambda n: 2 * n * h * 32 + 2 * n * 32  # noqa: E731
    counts = torch.tensor([3.0, 9.0])
    for k in range(model.num_stages):
        assert torch.equal(model.flop_model.stage(k, counts), torch.tensor([layer(n) + head for n in (3, 9)], dtype=torch.float64))
    for k in model.reducer.layers:
        assert torch.equal(model.flop_model.selection(k, counts), torch.tensor([policy(n) for n in (3, 9)], dtype=torch.float64))
    # a run's per-row cost: every layer on the tokens kept before it, selections on what they saw
    set_policy_bias(model, 50.0)
    batch = random_batch(2, 9, seed=1)
    result = EarlyExitRunner(model, "full")(batch)
    n = batch["attention_mask"].sum(1).tolist()
    expected = [model.num_stages * (layer(m) + head) + len(model.reducer.layers) * policy(m) for m in n]
    assert result.cost.tolist() == pytest.approx(expected)
    assert result.reference_cost.tolist() == pytest.approx([model.num_stages * (layer(m) + head) for m in n])


def test_traces_and_replay_carry_per_sample_flops():
    model = tr_model("bert")
    set_policy_bias(model, 0.0)
    batch = random_batch(6, 12, seed=7)
    trace = record_trace(model, [batch], targets=lambda b: torch.zeros(b["input_ids"].shape[0], dtype=torch.long),
                         progress=False)
    runner = EarlyExitRunner(model, "patience:1")(batch)
    replayed = replay(trace, "patience:1")
    assert torch.equal(replayed.exit_stage, runner.exit_stage)
    torch.testing.assert_close(replayed.cost, runner.cost.cpu())
    torch.testing.assert_close(replayed.reference_cost, runner.reference_cost.cpu())
    assert trace.subset([0, 2]).counted_costs.shape == (2, model.num_stages)


@pytest.mark.parametrize("arch, reason", [("deberta-v2", "relative"), ("mpnet", "relative"), ("modernbert", ""),
                                          ("roformer", "")])
def test_models_whose_layers_see_slot_positions_are_refused(arch, reason):
    model = tr_model(arch)
    with pytest.raises(ValueError, match="token reduction cannot run on"):
        EarlyExitRunner(model, "full")(random_batch(2, 8, seed=0))


def test_reinforce_reward_rises_on_a_toy(tmp_path):
    """A tiny model, the reward -loss - alpha * kept share with a large alpha: the policy
    learns to drop tokens and the mean reward rises."""
    from adaptive_exit.text.data import TextCollator
    from adaptive_exit.text.token_reduction.training import TokenReductionTrainConfig, train_trbert

    from .helpers import WORDS, tiny_tokenizer

    model = tr_model("bert")
    tokenizer = tiny_tokenizer(tmp_path)
    gen = torch.Generator().manual_seed(0)
    samples = [{"text": " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (10,), generator=gen).tolist()),
                "text_pair": None, "label": str(i % 2)} for i in range(64)]
    collate = TextCollator(tokenizer, 32)
    cfg = TokenReductionTrainConfig(batch_size=8, samples=4, alpha=5.0, policy_steps=60, joint_steps=0, guide_rate=0.2,
                                    policy_lr=5e-2)
    history = train_trbert(model, samples, collate, cfg)
    reward = [-h["loss"] - cfg.alpha * h["kept"] for h in history]
    assert sum(reward[-10:]) / 10 > sum(reward[:5]) / 5 + 0.2
    assert history[-1]["kept"] < history[0]["kept"]
    assert model.reducer.mode == "hard"


def test_ltp_thresholds_train_and_prune(tmp_path):
    from adaptive_exit.text.data import TextCollator
    from adaptive_exit.text.token_reduction.training import TokenReductionTrainConfig, train_ltp

    from .helpers import WORDS, tiny_tokenizer

    model = tr_model("bert", method="ltp")
    assert model.reducer.layers == [1, 2, 3]
    tokenizer = tiny_tokenizer(tmp_path)
    gen = torch.Generator().manual_seed(1)
    samples = [{"text": " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (10,), generator=gen).tolist()),
                "text_pair": None, "label": str(i % 2)} for i in range(64)]
    before = model.reducer.thresholds.detach().clone()
    cfg = TokenReductionTrainConfig(batch_size=8, soft_steps=30, hard_steps=5, ltp_lambda=5.0, threshold_lr=0.05)
    history = train_ltp(model, samples, TextCollator(tokenizer, 32), cfg)
    assert not torch.equal(model.reducer.thresholds.detach(), before)
    assert history[-1]["phase"] == "hard"
    result = EarlyExitRunner(model, "full")(TextCollator(tokenizer, 32)(samples[:8]))
    assert result.cost_fraction < 1.0  # tokens are really dropped at inference

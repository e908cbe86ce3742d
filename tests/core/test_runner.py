"""The core invariant: compaction changes cost, never results."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive_exit.policies import Oracle, build_policy
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.traces import record_trace, replay

from .helpers import ScriptedModel, collate_toy, random_samples, toy_model

POLICY_SPECS = [
    "full",
    "patience:1",
    "patience:2",
    "patience:3",
    "patience:2,threshold=0.3",
    "patience:1,threshold=0.05,distance=relative",
    "patience:1,threshold=0.5,distance=l2",
    "max_prob:0.5",
    "entropy:0.9",
    "normalized_entropy:0.8",
    "budget:3",
    "budget:max_fraction=0.5",
    "patience:2 | budget:4",
    "patience:1 & max_prob:0.4",
    "oracle",
]


def make_policy(spec, samples):
    if spec == "oracle":
        return Oracle(torch.tensor([s["label"] for s in samples]))
    return build_policy(spec)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model_seed=st.integers(0, 10_000),
    data_seed=st.integers(0, 10_000),
    batch=st.integers(1, 12),
    num_stages=st.integers(2, 6),
    spec=st.sampled_from(POLICY_SPECS),
)
def test_compaction_equals_per_sample_and_replay(model_seed, data_seed, batch, num_stages, spec):
    model = toy_model(model_seed, num_stages=num_stages)
    samples = random_samples(batch, data_seed)
    order = torch.randperm(batch, generator=torch.Generator().manual_seed(data_seed)).tolist()
    samples = [samples[i] for i in order]  # shuffled, mixed lengths, padded in the batch

    batched = EarlyExitRunner(model, make_policy(spec, samples))(collate_toy(samples))
    for i, sample in enumerate(samples):
        alone = EarlyExitRunner(model, make_policy(spec, [sample]))(collate_toy([sample]))
        assert batched.exit_stage[i] == alone.exit_stage[0]
        torch.testing.assert_close(batched.output[i], alone.output[0], rtol=1e-9, atol=1e-10)
        assert batched.cost[i] == alone.cost[0]

    trace = record_trace(model, [collate_toy(samples)], progress=False)
    replayed = replay(trace, make_policy(spec, samples))
    assert torch.equal(replayed.exit_stage, batched.exit_stage)
    torch.testing.assert_close(replayed.output.double(), batched.output, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["patience:1", "entropy:0.9", "patience:2 | budget:4"])
def test_batch_sync_gives_same_predictions_at_higher_cost(spec):
    model = toy_model(3, num_stages=6)
    batch = collate_toy(random_samples(32, 7))
    compact = EarlyExitRunner(model, spec, mode="compact")(batch)
    synced = EarlyExitRunner(model, spec, mode="batch-sync")(batch)
    assert torch.equal(compact.exit_stage, synced.exit_stage)
    torch.testing.assert_close(compact.output, synced.output)
    last_run = int(compact.exit_stage.max())
    assert torch.all(synced.cost == last_run + 1)
    assert compact.cost.sum() <= synced.cost.sum()


def test_compaction_really_drops_rows():
    # sample b exits at stage b under patience:1 because its label stops changing at stage b-1
    batch = 4
    outputs = []
    for k in range(5):
        labels = [k if k < b else b for b in range(batch)]
        logits = torch.zeros(batch, 8)
        logits[torch.arange(batch), torch.tensor(labels)] = 1.0
        outputs.append(logits)
    model = ScriptedModel(outputs)
    result = EarlyExitRunner(model, "patience:1")(None)
    assert result.exit_stage.tolist() == [1, 2, 3, 4]
    assert model.rows_per_stage == [4, 4, 3, 2, 1]

    synced_model = ScriptedModel(outputs)
    EarlyExitRunner(synced_model, "patience:1", mode="batch-sync")(None)
    assert synced_model.rows_per_stage == [4, 4, 4, 4, 4]


def test_result_statistics():
    model = ScriptedModel([torch.eye(2)[[0, 1]]] * 4, costs=[1.0, 2.0, 3.0, 4.0])
    result = EarlyExitRunner(model, "budget:2")(None)
    assert result.stages_used.tolist() == [2, 2]
    assert result.speedup == pytest.approx(2.0)
    assert result.cost.tolist() == [3.0, 3.0]
    assert result.cost_fraction == pytest.approx(0.3)
    assert result.saved_fraction == pytest.approx(0.7)
    assert result.histogram() == [0, 2, 0, 0]


def test_policy_can_change_between_batches():
    model = toy_model(1)
    runner = EarlyExitRunner(model, "full")
    batch = collate_toy(random_samples(8, 1))
    assert runner(batch).exit_stage.tolist() == [model.num_stages - 1] * 8
    runner.policy = "budget:2"
    assert runner(batch).exit_stage.tolist() == [1] * 8


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown runner mode"):
        EarlyExitRunner(toy_model(0), "full", mode="sync")

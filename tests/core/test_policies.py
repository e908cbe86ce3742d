import math

import pytest
import torch

from adaptive_exit.policies import (AllOf, AnyOf, Budget, Confidence, Never, Oracle, Patience,
                                    build_policy, relative_distance)
from adaptive_exit.runtime.runner import EarlyExitRunner

from .helpers import ScriptedModel


def logits_for(labels):
    """(B, 3) logits whose argmax is each label."""
    out = torch.zeros(len(labels), 3)
    out[torch.arange(len(labels)), torch.tensor(labels)] = 5.0
    return out


def run_scripted(label_rows, policy, costs=None):
    """label_rows[k][b] is sample b's predicted label at stage k."""
    model = ScriptedModel([logits_for(row) for row in label_rows], costs)
    return EarlyExitRunner(model, policy)(None)


def test_patience_counts_unchanged_predictions_and_resets():
    # sample 0: 0 0 0 0 0 -> counter 0,1,2 at stage 2 -> exits at stage 2 with p=2
    # sample 1: 0 1 1 2 2 -> counter 0,0,1,0,1 -> never reaches 2 -> last stage
    # sample 2: 1 2 2 2 2 -> counter 0,0,1,2 -> exits at stage 3
    rows = [[0, 0, 1], [0, 1, 2], [0, 1, 2], [0, 2, 2], [0, 2, 2]]
    result = run_scripted(rows, Patience(2))
    assert result.exit_stage.tolist() == [2, 4, 3]


def test_patience_one_exits_on_first_repeat():
    rows = [[0, 1], [0, 2], [1, 2]]
    assert run_scripted(rows, "patience:1").exit_stage.tolist() == [1, 2]


def test_patience_zero_never_exits_early():
    rows = [[0, 0]] * 6
    result = run_scripted(rows, Patience(0))
    assert result.exit_stage.tolist() == [5, 5]


def test_last_stage_always_exits():
    rows = [[0, 1], [1, 0], [0, 1]]  # predictions flip at every stage
    result = run_scripted(rows, Patience(5))
    assert result.exit_stage.tolist() == [2, 2]
    assert torch.equal(result.output, logits_for([0, 1]))


def test_patience_token_outputs_need_every_position_to_agree():
    a = torch.tensor([[[5.0, 0], [0, 5.0]]])  # tags 0 1
    b = torch.tensor([[[5.0, 0], [5.0, 0]]])  # tags 0 0
    policy = Patience(1)
    state = policy.init(1, [1, 1, 1])
    assert not policy.step(0, a, state).item()
    assert not policy.step(1, b, state).item()  # one tag changed
    assert policy.step(2, b, state).item()


def test_regression_patience_uses_threshold_on_change():
    values = [[1.0], [1.5], [1.55], [1.58], [2.0]]
    model = ScriptedModel([torch.tensor([[v[0]]]) for v in values])
    # changes: 0.5, 0.05, 0.03, 0.42 -> with threshold 0.1 counter 0,0,1,2 -> p=2 exits at stage 3
    assert EarlyExitRunner(model, Patience(2, threshold=0.1))(None).exit_stage.tolist() == [3]
    assert EarlyExitRunner(model, Patience(1, threshold=0.1))(None).exit_stage.tolist() == [2]
    # a threshold below every change never exits early
    assert EarlyExitRunner(model, Patience(1, threshold=0.01))(None).exit_stage.tolist() == [4]


def test_relative_distance_ignores_zero_padding():
    prev = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    cur = torch.tensor([[1.1, 2.0, 0.0, 0.0]])
    unpadded = relative_distance(prev[:, :2], cur[:, :2])
    assert torch.allclose(relative_distance(prev, cur), unpadded)
    assert math.isclose(float(unpadded), 0.01 / 5.0, rel_tol=1e-6)
    assert relative_distance(torch.zeros(1, 3), torch.ones(1, 3)).item() == math.inf


def test_confidence_measures():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    p = torch.softmax(logits.double(), -1)
    entropy = -(p * p.log()).sum(-1)
    for threshold in (0.5, 0.9):
        done = Confidence(threshold).step(0, logits, {})
        assert done.tolist() == (p.max(-1).values >= threshold).tolist()
    done = Confidence(float(entropy[0]) + 1e-6, "entropy").step(0, logits, {})
    assert done.tolist() == [True, False]
    norm = entropy / math.log(3)
    done = Confidence(float(norm[0]) + 1e-6, "normalized_entropy").step(0, logits, {})
    assert done.tolist() == [True, False]
    # token outputs: the least confident position decides
    tokens = torch.stack([logits, logits.flip(0)], 0)  # (2, 2, 3)
    assert Confidence(0.9).step(0, tokens, {}).tolist() == [False, False]


def test_confidence_rejects_regression_outputs():
    with pytest.raises(ValueError, match="class logits"):
        Confidence(0.9).step(0, torch.ones(2, 1), {})


def test_budget_caps_stages_and_cost():
    rows = [[0, 1]] * 6  # never stable enough for patience 4
    assert run_scripted(rows, Budget(max_stages=2)).exit_stage.tolist() == [1, 1]
    costs = [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]  # cumulative 1 2 4 6 8 10
    assert run_scripted(rows, Budget(max_cost=4.5), costs).exit_stage.tolist() == [2, 2]
    assert run_scripted(rows, Budget(max_fraction=0.6), costs).exit_stage.tolist() == [3, 3]
    capped = run_scripted(rows, "patience:4 | budget:max_fraction=0.6", costs)
    assert capped.cost.max().item() <= 6.0


def test_composition_or_and():
    rows = [[0, 0], [0, 1], [0, 0], [0, 0]]
    # patience:1 alone: sample 0 exits at stage 1, sample 1 (0 1 0 0) at stage 3; budget:3 at stage 2
    assert run_scripted(rows, "patience:1 | budget:3").exit_stage.tolist() == [1, 2]
    assert run_scripted(rows, "patience:1 & budget:3").exit_stage.tolist() == [2, 3]
    assert isinstance(build_policy("patience:1 | budget:3"), AnyOf)
    assert isinstance(Patience(1) & Budget(2), AllOf)


def test_oracle_exits_at_first_correct_stage():
    rows = [[1, 0], [0, 0], [0, 1]]
    result = EarlyExitRunner(ScriptedModel([logits_for(r) for r in rows]), Oracle(torch.tensor([0, 1])))(None)
    assert result.exit_stage.tolist() == [1, 2]


@pytest.mark.parametrize("spec, expected", [
    ("patience:2", Patience(2)),
    ("patience:3,threshold=0.05,distance=relative", Patience(3, threshold=0.05, distance="relative")),
    ("entropy:0.3", Confidence(0.3, "entropy")),
    ("max_prob:0.9", Confidence(0.9)),
    ("normalized_entropy:0.2", Confidence(0.2, "normalized_entropy")),
    ("budget:4", Budget(max_stages=4)),
    ("full", Never()),
    ({"type": "confidence", "measure": "entropy", "threshold": 0.3}, Confidence(0.3, "entropy")),
    ({"type": "any", "policies": ["patience:2", "budget:4"]}, Patience(2) | Budget(4)),
])
def test_build_policy_from_specs(spec, expected):
    policy = build_policy(spec)
    assert policy == expected
    assert build_policy(policy.spec()) == policy  # specs round-trip


@pytest.mark.parametrize("spec, message", [
    ("patiense:2", "unknown policy 'patiense'"),
    ("patience:-1", "integer >= 0"),
    ("patience:1.5", "integer >= 0"),
    ("entropy:abc", "finite number"),
    ("max_prob:1.5", r"\[0, 1\]"),
    ("patience:2,distance=l2", "needs a threshold"),
    ("patience:2,threshold=0.1,distance=cosine", "unknown distance"),
    ("budget:0", ">= 1"),
    ("", "empty policy spec"),
    ("patience:2,foo=1", "bad arguments"),
    ({"measure": "entropy"}, "needs a 'type'"),
    (3, "string or dict"),
])
def test_bad_policy_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        build_policy(spec)

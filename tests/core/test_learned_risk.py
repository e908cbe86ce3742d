"""The learned exit policy and risk-controlled calibration (drop:D budgets)."""
import json

import numpy as np
import pytest
import torch

from adaptive_exit.app.cli import main
from adaptive_exit.budgets import BudgetSpec, BudgetTable, certify, split_indices, split_trace
from adaptive_exit.budgets.risk import wsr_p_value, wsr_upper_bound
from adaptive_exit.policies import Learned, build_policy
from adaptive_exit.runtime.traces import Trace, replay
from tests.conftest import REPO

DEMO = REPO / "recipes" / "core" / "toy" / "demo.yaml"


def synthetic_trace(n: int, seed: int, stages: int = 6) -> Trace:
    """Binary logits that get surer with depth, each sample at its own difficulty."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    hardness = torch.rand(n, 1, 1, generator=g).clamp(min=0.1) * 3
    signal = torch.nn.functional.one_hot(labels, 2).unsqueeze(1) * torch.arange(1, stages + 1).view(1, stages, 1)
    outputs = torch.randn(n, stages, 2, generator=g) * 1.5 + signal * 0.5 / hardness
    return Trace(outputs, [1.0] * stages, labels)


def correct(trace: Trace) -> torch.Tensor:
    return (trace.outputs.argmax(-1) == trace.targets[:, None]).double()


def test_learned_policy_round_trips_and_replays_like_the_runner():
    fit = synthetic_trace(3000, 0)
    policy = Learned.fit(fit.outputs, correct(fit), threshold=0.8)
    again = build_policy(policy.spec())
    assert again == policy and torch.equal(again.weights, policy.weights)  # the spec is the whole model
    test = synthetic_trace(500, 1)
    # replay steps stage by stage, as the runner does; the same decisions from the batch features
    result = replay(test, again)
    probs = policy.threshold_values(test.outputs).reshape(test.num_stages - 1, -1).T  # (N, L-1)
    wants = torch.cat([probs >= 0.8, torch.ones(test.num_samples, 1, dtype=torch.bool)], dim=1)
    assert torch.equal(result.exit_stage, wants.double().argmax(dim=1))


def test_learned_threshold_trades_cost_for_quality_monotonically():
    fit, test = synthetic_trace(3000, 0), synthetic_trace(1000, 1)
    policy = Learned.fit(fit.outputs, correct(fit))
    stages = [replay(test, Learned(t, policy.weights.reshape(-1).tolist())).mean_stages for t in (0.3, 0.6, 0.9, 0.99)]
    assert stages == sorted(stages) and stages[0] < stages[-1]
    # it beats exiting everyone at the same mean depth (the point of learning when to stop)
    learned = replay(test, Learned(0.9, policy.weights.reshape(-1).tolist()))
    static = replay(test, build_policy(f"budget:max_stages={max(1, round(learned.mean_stages))}"))
    acc = lambda r: float((test.stage_output(r.exit_stage).argmax(-1) == test.targets).double().mean())  # noqa: E731
    assert static.mean_stages >= learned.mean_stages - 0.5 and acc(learned) > acc(static)


def test_learned_policy_refuses_bad_weights_and_other_models():
    with pytest.raises(ValueError, match="whole number of stages"):
        build_policy("learned:0.5,w=1;2;3")
    with pytest.raises(ValueError, match="probability"):
        build_policy("learned:1.5,w=" + ";".join(["0"] * 7))
    policy = build_policy("learned:0.5,w=" + ";".join(["0"] * 14))  # two fitted stages: a 3-stage model
    with pytest.raises(ValueError, match="fitted for a model of 3 stages; this one has 6"):
        replay(synthetic_trace(10, 0), policy)


def test_learned_exit_on_values_uses_distances():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(400, 1, generator=g)
    noise = torch.randn(400, 4, 1, generator=g) / torch.arange(1, 5).view(1, 4, 1)
    outputs = target.unsqueeze(1) + noise  # regression values converging to the target
    quality = -(outputs[..., 0] - target).pow(2)
    policy = Learned.fit(outputs, quality)
    assert policy.kind == "values" and policy.weights.shape == (3, 5)
    assert build_policy(policy.spec()) == policy


def test_wsr_p_values_and_bounds():
    zeros = np.zeros(500)
    assert wsr_p_value(zeros, 0.05) < 0.01  # nothing lost: clearly below 5%
    lossy = np.random.default_rng(0).binomial(1, 0.2, 500).astype(float)
    assert wsr_p_value(lossy, 0.1) > 0.5  # a mean of 0.2 is not below 0.1
    assert 0.2 < wsr_upper_bound(lossy, 0.9) < 0.3


def test_certify_picks_the_cheapest_policy_within_the_drop_and_holds_out_of_sample():
    fit, test = synthetic_trace(3000, 0), synthetic_trace(2000, 1)
    learned = Learned.fit(fit.outputs, correct(fit))
    weights = ";".join(f"{v:g}" for v in learned.weights.reshape(-1).tolist())
    families = [[f"entropy:{v}" for v in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)],
                [f"learned:{t},kind=logits,w={weights}" for t in (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)]]
    violations, speedups = 0, []
    for seed in range(40):
        cal, held = split_trace(test, 0.5, seed)
        result = certify(cal, families, "accuracy", max_drop=0.02, confidence=0.9, heldout=held, seed=seed)
        assert result.drop <= result.bound + 1e-12 and result.budget == "drop:0.02"
        violations += result.heldout["drop"] > 0.02
        speedups.append(result.heldout["speedup"])
    assert violations / 40 <= 0.1 + 0.05  # the guarantee (with room for the test half's own noise)
    assert np.mean(speedups) > 1.2  # and it buys something
    # exit stages replayed once on the whole trace and indexed per split give the same answer
    whole = {build_policy(spec).spec(): replay(test, spec).exit_stage for family in families for spec in family}
    cal_index, held_index = split_indices(test.num_samples, 0.5, 3)
    again = certify(test.subset(cal_index), families, "accuracy", 0.02, 0.9, heldout=test.subset(held_index), seed=3,
                    exits={spec: stages[cal_index] for spec, stages in whole.items()})
    cal, held = split_trace(test, 0.5, 3)
    assert again == certify(cal, families, "accuracy", 0.02, 0.9, heldout=held, seed=3)
    # nothing certifiable: the full model (drop 0) is the answer
    cal, _ = split_trace(test, 0.5, 0)
    strict = certify(cal, [["budget:max_stages=1"]], "accuracy", max_drop=0.0, confidence=0.9)
    assert strict.policy == "full" and strict.speedup == 1.0 and strict.certified == 0 and strict.bound == 0.0


def test_drop_budgets_parse_and_live_in_the_budget_table():
    assert BudgetSpec.parse("drop:1%") == BudgetSpec("drop", 0.01)
    with pytest.raises(ValueError, match=">= 0"):
        BudgetSpec.parse("drop:-0.1")
    table = BudgetTable({"drop:0.01": "entropy:0.1", "mean:0.5": "patience:2"})
    assert table.policy_for("drop:0.02").spec() == "entropy:0.1"  # a smaller certified drop is safe for a larger one
    with pytest.raises(ValueError, match="no calibrated policy fits budget drop:0.005"):
        table.policy_for("drop:0.005")


def test_metrics_without_a_range_are_refused():
    trace = synthetic_trace(20, 0)
    with pytest.raises(ValueError, match="declares no per-sample range"):
        certify(trace, [["entropy:0.1"]], "mse", max_drop=0.1)


def test_cli_certifies_a_drop_with_a_learned_exit(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(DEMO), f"run_dir={run_dir}", "train.max_steps=60", "train.progress=false",
                 "data.train_size=512", "data.dev_size=400", "data.test_size=400", "eval.timing_repeats=1",
                 "calibrate.budget=null"]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--model", str(run_dir / "model"), "--max-drop", "5%", "--confidence", "0.8",
                 "--learn-from", "test"]) == 0
    out = capsys.readouterr().out
    assert "Certified drop:0.05 (accuracy, 80% confidence" in out
    report = json.loads((run_dir / "calibration.json").read_text())
    assert report["budget"] == "drop:0.05" and report["confidence"] == 0.8 and report["bound"] >= report["drop"]
    table = json.loads((run_dir / "model" / "budget_policies.json").read_text())
    assert table["drop:0.05"] == report["policy"]
    # fitting on the calibration split itself is refused (the guarantee needs fresh data)
    assert main(["calibrate", "--model", str(run_dir / "model"), "--max-drop", "0.05", "--learn-from", "dev"]) == 2
    assert "kept out of both" in capsys.readouterr().err

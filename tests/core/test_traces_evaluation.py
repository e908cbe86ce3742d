import math
import json

import pytest
import torch
from scipy import stats

from adaptive_exit.budgets import BudgetSpec, calibrate, split_trace
from adaptive_exit.evaluation.metrics import get_metric
from adaptive_exit.evaluation import (build_report, mark_pareto, oracle_exit_stage,
                                      static_rows, sweep, write_report)
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.traces import Trace, record_trace, replay

from .helpers import collate_toy, random_samples, toy_model


def labelled_trace(stage_labels, targets, costs=None):
    """A trace whose stage-k prediction for sample i is stage_labels[i][k]."""
    n, num = len(stage_labels), len(stage_labels[0])
    outputs = torch.zeros(n, num, 3)
    for i, row in enumerate(stage_labels):
        for k, label in enumerate(row):
            outputs[i, k, label] = 4.0
    return Trace(outputs, costs or [1.0] * num, torch.tensor(targets))


def test_trace_save_load_round_trip(tmp_path):
    model = toy_model(0)
    batches = [collate_toy(random_samples(5, s)) for s in range(3)]
    trace = record_trace(model, batches, targets=lambda b: b["labels"], progress=False)
    assert trace.outputs.shape[:2] == (15, model.num_stages)
    trace.save(tmp_path / "t.pt")
    loaded = Trace.load(tmp_path / "t.pt")
    assert torch.equal(loaded.outputs, trace.outputs)
    assert torch.equal(loaded.targets, trace.targets)
    runner = EarlyExitRunner(model, "patience:2")
    assert torch.equal(replay(loaded, "patience:2").exit_stage, runner.run_batches(batches).exit_stage)


def test_trace_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="trace file not found"):
        Trace.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a trace")
    with pytest.raises(ValueError, match="cannot read trace file"):
        Trace.load(bad)
    with pytest.raises(ValueError, match="empty dataset"):
        record_trace(toy_model(0), [], progress=False)


def test_oracle_picks_earliest_correct_stage():
    trace = labelled_trace([[1, 0, 0], [1, 1, 1], [0, 1, 1]], targets=[0, 0, 1])
    assert oracle_exit_stage(trace, "accuracy").tolist() == [1, 0, 1]


def test_static_rows_and_sweep_rows():
    trace = labelled_trace([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [2, 2, 2, 2]], targets=[0, 0, 0, 2])
    statics = static_rows(trace, ["accuracy"])
    assert [r.metrics["accuracy"] for r in statics] == [0.5, 0.75, 1.0, 1.0]
    assert [r.speedup for r in statics] == pytest.approx([4.0, 2.0, 4 / 3, 1.0])
    rows = sweep(trace, "patience", [1, 2], ["accuracy"])
    assert [r.name for r in rows] == ["patience:1", "patience:2"]
    # patience:1 exits at the first repeat: s0 (1 0 0) at stage 2, s1, s2 (1 1), s3 at stage 1
    assert rows[0].mean_stages == pytest.approx(9 / 4)
    assert rows[0].histogram == [0, 3, 1, 0]
    assert rows[0].metrics["accuracy"] == 0.75  # s2 exits on its wrong early agreement


def test_pareto_front_excludes_dominated_rows():
    trace = labelled_trace([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [2, 2, 2, 2]], targets=[0, 0, 0, 2])
    rows = static_rows(trace, ["accuracy"])
    front = mark_pareto(rows, get_metric("accuracy"))
    assert [r.name for r in front] == ["static:3", "static:2", "static:1"]
    assert not rows[3].pareto  # static:4 has static:3's accuracy at lower speed-up


def test_report_files(tmp_path):
    model = toy_model(2)
    batches = [collate_toy(random_samples(20, s)) for s in range(2)]
    trace = record_trace(model, batches, targets=lambda b: b["labels"], progress=False)
    report = build_report(trace, {"patience": [1, 2], "entropy": [0.5]}, ["accuracy"])
    paths = write_report(report, tmp_path)
    saved = json.loads(paths["results"].read_text())
    assert saved["num_samples"] == 40
    assert {r["family"] for r in saved["rows"]} == {"patience", "entropy", "static", "oracle"}
    assert paths["csv"].read_text().splitlines()[0].startswith("name,family,param")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regression_metrics_direction_and_edge_cases():
    pearson, spearman, mse = (get_metric(n) for n in ("pearson", "spearman", "mse"))
    targets = torch.arange(10, dtype=torch.float64)
    curved = (targets**3).unsqueeze(1)  # monotone but not linear
    assert spearman.compute(curved, targets) == pytest.approx(1.0)
    assert pearson.compute(curved, targets) < 0.95
    assert math.isnan(pearson.compute(torch.ones(10, 1), targets))  # a constant prediction has no correlation
    assert mse.compute(targets.unsqueeze(1) + 2, targets) == pytest.approx(4.0)
    assert not mse.higher_is_better and mse.better(1.0, 2.0) and not mse.better(float("nan"), 2.0)
    assert pearson.better(0.9, 0.8) and pearson.drop(0.9, 0.8) == pytest.approx(0.1)


def test_calibration_meets_budget_and_prefers_quality():
    model = toy_model(4, num_stages=6)
    trace = record_trace(model, [collate_toy(random_samples(200, 9))], targets=lambda b: b["labels"], progress=False)
    dev, held = split_trace(trace, 0.5)
    cands = [f"patience:{p}" for p in range(1, 6)] + [f"max_prob:{t}" for t in (0.4, 0.5, 0.6, 0.8)]
    result = calibrate(dev, cands, "mean:0.5", "accuracy", heldout=held)
    assert result.calibration["cost_fraction"] <= 0.5
    # the search space: every candidate, each capped at the budget, and the cap alone
    space = cands + [f"{c} | budget:max_fraction=0.5" for c in cands] + ["budget:max_fraction=0.5"]
    feasible = [c for c in space if replay(dev, c).cost_fraction <= 0.5]
    best = max(feasible, key=lambda c: (dev.targets == replay(dev, c).output.argmax(-1)).double().mean())
    assert result.calibration["accuracy"] == pytest.approx(float((dev.targets == replay(dev, best).output.argmax(-1)).double().mean()))
    assert result.heldout["num_samples"] == 100


def test_hard_cap_budget_bounds_every_sample():
    model = toy_model(5, num_stages=6)
    trace = record_trace(model, [collate_toy(random_samples(100, 3))], targets=lambda b: b["labels"], progress=False)
    result = calibrate(trace, ["patience:3", "patience:4"], "max:0.5", "accuracy")
    assert replay(trace, result.policy).cost.max() <= 3.0


@pytest.mark.parametrize("text", ["mean", "mean:abc", "avg:0.5", "mean:1.5", "stages:-1"])
def test_bad_budget_strings(text):
    with pytest.raises(ValueError, match="bad budget"):
        BudgetSpec.parse(text)


def test_budget_accepts_percent():
    assert BudgetSpec.parse("mean:50%") == BudgetSpec("mean", 0.5)


def test_infeasible_budget_is_explained():
    trace = labelled_trace([[0, 0, 0]], targets=[0])
    # even one stage (1/3 of the model) is over budget: no candidate could help, and the error says so
    with pytest.raises(ValueError, match="below what this model can do: even one stage per sample costs 0.3333"):
        calibrate(trace, ["full"], "mean:0.2", "accuracy")
    assert calibrate(trace, ["full"], "mean:0.34", "accuracy").calibration["mean_stages"] == 1


def test_pad_cat_fills_with_a_vector_over_the_last_dim():
    from adaptive_exit.runtime.runner import pad_cat

    a, b = torch.ones(2, 3, 4), torch.full((1, 5, 4), 2.0)
    fill = torch.tensor([9.0, 0.0, 0.0, 0.0])
    out = pad_cat([a, b], value=fill)
    assert out.shape == (3, 5, 4)
    assert torch.equal(out[:2, :3], a) and torch.equal(out[2:], b)
    assert torch.equal(out[:2, 3:], fill.expand(2, 2, 4))
    assert torch.equal(pad_cat([torch.zeros(1, 2), torch.zeros(1, 3)], value=-100.0)[0], torch.tensor([0.0, 0.0, -100.0]))


def test_registered_metric_scores_rows_and_drives_the_oracle():
    from adaptive_exit.evaluation import score
    from adaptive_exit.evaluation.metrics import Metric, register_metric, unregister_metric

    # stage 0 right for sample 0, stage 1 right for sample 1; the metric counts exact matches
    trace = labelled_trace([[1, 0], [0, 1]], [1, 1])
    register_metric(Metric("hits", lambda o, t: float((o.argmax(-1) == t).sum()),
                           per_sample=lambda o, t: (o.argmax(-1) == t.unsqueeze(1)).double()))
    register_metric(Metric("hits_no_oracle", lambda o, t: float((o.argmax(-1) == t).sum())))
    try:
        assert score(trace, torch.tensor([0, 1]), "hits") == 2.0
        assert oracle_exit_stage(trace, "hits").tolist() == [0, 1]
        assert build_report(trace, {}, ["hits"])["full_model"]["hits"] == 1.0
        # a metric without a per-sample form cannot silently drive the oracle
        with pytest.raises(ValueError, match="'hits_no_oracle' has no per-sample form"):
            build_report(trace, {}, ["hits_no_oracle"])
    finally:
        unregister_metric("hits"), unregister_metric("hits_no_oracle")


def test_quantile_grids_fit_the_model_own_confidence():
    from adaptive_exit.evaluation import expand_family
    from adaptive_exit.policies import build_policy

    gen = torch.Generator().manual_seed(0)
    # an unconfident model: every entropy is above 0.6 nats, so a fixed SST-2 grid (0.05..0.3) never exits
    logits = torch.randn(200, 4, 3, generator=gen) * 0.3
    trace = Trace(logits, [1.0] * 4, targets=torch.randint(0, 3, (200,), generator=gen))
    fixed = sweep(trace, "entropy", [0.05, 0.1, 0.2, 0.3], ["accuracy"])
    assert all(r.mean_stages == 4 for r in fixed)
    specs = expand_family("entropy", "quantiles:5", trace)
    thresholds = [v for _, v in specs]
    assert len(thresholds) == 5 and thresholds == sorted(thresholds) and min(thresholds) > 0.6
    rows = sweep(trace, "entropy", {"quantiles": 5}, ["accuracy"])
    assert len({round(r.mean_stages, 3) for r in rows}) == 5 and rows[-1].mean_stages < rows[0].mean_stages
    assert [s for s, _ in expand_family("patience:1,threshold={},distance=abs", "quantiles:3", trace)]
    with pytest.raises(ValueError, match="quantile grids fill in a threshold"):
        expand_family("patience", "quantiles:3", trace)
    with pytest.raises(ValueError, match="need the recorded trace"):
        expand_family("entropy", "quantiles:3")
    with pytest.raises(ValueError, match="positive count"):
        expand_family("entropy", "quantiles:x", trace)
    assert build_policy(specs[0][0]).spec() == specs[0][0]


def test_classification_metrics_f1_and_mcc_drive_the_oracle():
    from adaptive_exit.evaluation import oracle_exit_stage, score
    from adaptive_exit.evaluation.metrics import get_metric

    trace = labelled_trace([[0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 0]], targets=[1, 0, 1, 1])
    last = torch.full((4,), 2)
    assert score(trace, last, "f1") == pytest.approx(get_metric("f1").compute(trace.outputs[:, 2], trace.targets))
    for name in ("f1", "f1_macro", "mcc"):
        stages = oracle_exit_stage(trace, name)
        assert score(trace, stages, name) >= score(trace, last, name)
        assert score(trace, stages, name) > score(trace, last, name)  # samples 0-2 are right somewhere, 3 never

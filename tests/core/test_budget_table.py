"""Run-time budget switching (budget tables) and the cross-recipe budget sweep."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from adaptive_exit.budgets import BudgetTable, policy_for_request
from adaptive_exit.policies import build_policy
from adaptive_exit.app.cli import main
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.app.toy import ToyModelConfig, ToyStagedModel, collate_toy

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "core" / "toy" / "demo.yaml"


def test_budget_table_picks_exact_then_tighter_then_hard_cap(tmp_path):
    table = BudgetTable({"mean:0.7": "patience:2", "mean:0.4": "patience:1", "p95:20ms": "entropy:0.3"})
    assert table.policy_for("mean:0.7").spec() == "patience:2"
    assert table.policy_for("mean:0.5").spec() == "patience:1"  # the largest calibrated budget not above 0.5
    assert table.policy_for("mean:0.2").spec() == "budget:max_fraction=0.2"  # nothing calibrated fits: per-sample hard cap
    assert table.policy_for("mean:0.2", default="patience:2").spec() == "patience:2 | budget:max_fraction=0.2"
    assert table.policy_for("p95:25ms").spec() == "entropy:0.3"
    with pytest.raises(ValueError, match="no calibrated policy fits budget p95:10ms"):
        table.policy_for("p95:10ms")
    table.save(tmp_path)
    assert BudgetTable.load(tmp_path).to_dict() == table.to_dict()
    assert BudgetTable.load(tmp_path / "elsewhere").to_dict() == {}
    (tmp_path / "budget_policies.json").write_text('{"mean:0.5": "patiense:1"}')
    with pytest.raises(ValueError, match="not a valid budget table"):
        BudgetTable.load(tmp_path)
    default = build_policy("patience:2")
    assert policy_for_request(tmp_path / "elsewhere", default, budget="max:0.5").spec() == "patience:2 | budget:max_fraction=0.5"
    assert policy_for_request(tmp_path, default, policy="entropy:0.1", budget="max:0.5").spec() == "entropy:0.1"
    assert policy_for_request(tmp_path / "elsewhere", default) is default
    with pytest.raises(ValueError, match="fraction"):
        policy_for_request(tmp_path / "elsewhere", default, budget="max:1.5")
    with pytest.raises(ValueError, match="write 'max:0.5' for a per-sample cap"):
        policy_for_request(tmp_path / "elsewhere", default, budget="0.5")


def test_runner_switches_budget_between_batches_without_reloading():
    torch.manual_seed(0)
    model = ToyStagedModel(ToyModelConfig(num_stages=6)).eval()
    batch = collate_toy([{"x": torch.randn(int(n), 16), "label": 0} for n in torch.randint(3, 10, (32,))])
    table = BudgetTable({"mean:0.7": "patience:3", "mean:0.4": "patience:1"})
    runner = EarlyExitRunner(model, "full", budgets=table)
    runner.budget = "mean:0.7"
    high = runner(batch)
    runner.budget = "mean:0.4"  # the device came under load
    low = runner(batch)
    assert runner.budget == "mean:0.4" and runner.policy.spec() == "patience:1"
    assert torch.equal(low.exit_stage, EarlyExitRunner(model, "patience:1")(batch).exit_stage)
    assert torch.equal(high.exit_stage, EarlyExitRunner(model, "patience:3")(batch).exit_stage)
    assert low.cost_fraction < high.cost_fraction
    runner.policy = "patience:2"
    assert runner.budget is None  # a policy set directly replaces the budget
    with pytest.raises(ValueError, match="no budget table"):
        EarlyExitRunner(model, "full").budget = "mean:0.5"


def test_budget_sweep_calibrates_each_recipe_and_compares_with_static(tmp_path, capsys):
    common = ["train.max_steps=40", "train.progress=false", "data.train_size=256", "data.dev_size=300",
              "eval.timing_repeats=1", "calibrate.budget=null"]
    sweep = {"output_dir": str(tmp_path / "sweep"), "budget_kind": "mean", "budgets": [0.4, 0.7, 1.0],
             "domains": {"toy_small": {"recipe": str(DEMO), "overrides": [f"run_dir={tmp_path / 'a'}", "model.hidden=16", *common]},
                         "toy_large": {"recipe": str(DEMO), "overrides": [f"run_dir={tmp_path / 'b'}", *common]}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["budget-sweep", str(path)]) == 0  # trains both (no model yet), records, calibrates
    assert "| toy_small (accuracy) | mean:0.4 |" in capsys.readouterr().out
    report = json.loads((tmp_path / "sweep" / "results.json").read_text())
    for name, run in (("toy_small", "a"), ("toy_large", "b")):
        dom = report["domains"][name]
        assert [r["budget"] for r in dom["rows"]] == ["mean:0.4", "mean:0.7", "mean:1"]
        for row in dom["rows"]:
            assert row["calibration_achieved"] <= row["target"] + 1e-9
        static = dom["static"]
        assert static["cost_fraction"][-1] == pytest.approx(1.0) and static["quality"][-1] == dom["full_quality"]
        table = json.loads((tmp_path / run / "model" / "budget_policies.json").read_text())
        assert set(table) == {"mean:0.4", "mean:0.7", "mean:1"}
    assert (tmp_path / "sweep" / "plot.png").stat().st_size > 0 and (tmp_path / "sweep" / "table.md").exists()
    path.write_text(yaml.safe_dump({**sweep, "budgets_typo": [0.5]}))
    assert main(["budget-sweep", str(path)]) == 2
    assert "unknown key 'budgets_typo'" in capsys.readouterr().err

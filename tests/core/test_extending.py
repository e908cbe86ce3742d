"""The "Extending" guide's examples (docs/extending.md) run as written: a new policy and a new budget kind,
each one class in one file, work in specs, replay, calibration, recipes and budget tables."""
import re
import sys
import types

import pytest
import torch

from adaptive_exit.budgets import kinds as budget_module
from adaptive_exit.policies import base as policy_module
from adaptive_exit.budgets import BudgetSpec, BudgetTable, calibrate
from adaptive_exit.policies import build_policy
from adaptive_exit.runtime.traces import Trace, replay
from tests.conftest import REPO


def readme_examples() -> list[str]:
    section = (REPO / "docs" / "extending.md").read_text()
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture
def plugin_module():
    """The README's examples as an importable module (what `plugins:` names)."""
    examples = readme_examples()
    assert len(examples) == 2 and all(len(e.strip().splitlines()) <= 16 for e in examples)
    module = types.ModuleType("readme_plugins")
    for code in examples:
        exec(compile(code, "README.md", "exec"), module.__dict__)
    sys.modules["readme_plugins"] = module
    yield module
    sys.modules.pop("readme_plugins", None)
    policy_module._REGISTRY.pop("margin", None)
    budget_module._KINDS[:] = [k for k in budget_module._KINDS if k.name != "tail"]


def test_readme_policy_and_budget_kind_work_everywhere(plugin_module):
    # logits: sample 0 is decided at stage 0, sample 1 never
    outputs = torch.tensor([[[4.0, 0.0], [4.0, 0.0], [4.0, 0.0]], [[0.1, 0.0], [0.0, 0.1], [0.1, 0.0]]])
    trace = Trace(outputs, [1.0, 1.0, 1.0], targets=torch.tensor([0, 0]))
    policy = build_policy("margin:0.5 | budget:2")
    assert policy.spec() == "margin:0.5 | budget:max_stages=2" and build_policy(policy.spec()) == policy
    assert replay(trace, "margin:0.5").exit_stage.tolist() == [0, 2]
    assert replay(trace, policy).exit_stage.tolist() == [0, 1]

    budget = BudgetSpec.parse("tail:30ms")
    assert str(budget) == "tail:30ms" and budget.unit == "ms" and budget.needs_cost_model
    latency = torch.tensor([[10.0, 20.0, 30.0], [10.0, 25.0, 40.0]])  # cumulative ms per sample and stage
    result = calibrate(trace, ["margin:0.5", "full"], budget, "accuracy", costs=latency)
    assert budget.achieved(replay(trace, result.policy), latency) <= 30.0
    table = BudgetTable({"tail:30ms": result.policy})
    assert table.policy_for("tail:35ms") == build_policy(result.policy)


def test_recipe_plugins_are_imported_before_parsing(plugin_module, tmp_path):
    from adaptive_exit.app.config import ConfigError, load_recipe
    from adaptive_exit.app.pipeline import Pipeline

    demo = REPO / "recipes" / "core" / "toy" / "demo.yaml"
    recipe, _ = load_recipe(demo, ["plugins=[readme_plugins]", "eval.policy=margin:0.3", f"run_dir={tmp_path}"])
    assert Pipeline(recipe).policy.spec() == "margin:0.3"
    with pytest.raises(ConfigError, match="plugins.*cannot import 'no_such_module'"):
        load_recipe(demo, ["plugins=[no_such_module]"])

import json

import pytest
import torch
import yaml

from adaptive_exit.app.cli import main
from adaptive_exit.app.config import ConfigError, apply_overrides, load_recipe
from adaptive_exit.app.pipeline.context import RunContext
from tests.conftest import REPO

DEMO = REPO / "recipes" / "core" / "toy" / "demo.yaml"


def test_overrides_are_parsed_as_yaml():
    data = apply_overrides({"train": {"lr": 0.1}}, ["train.lr=3e-4", "eval.sweeps={patience: [1, 2]}", "a.b.c=true"])
    assert data["train"]["lr"] == 3e-4
    assert data["eval"]["sweeps"] == {"patience": [1, 2]}
    assert data["a"]["b"]["c"] is True


def test_unknown_key_names_its_path():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lr_rate' in the override 'train.lr_rate=0.1'"):
        load_recipe(DEMO, ["train.lr_rate=0.1"])  # blamed on the override that set it, not the file
    recipe, _ = load_recipe(DEMO, ["model.hiden=3"])  # the model section is the domain's to check
    with pytest.raises(ConfigError, match=r"unknown key 'model\.hiden'.*did you mean 'hidden'"):
        RunContext(recipe)
    with pytest.raises(ConfigError, match=r"unknown key 'colour'"):
        load_recipe(DEMO, ["colour=red"])


def test_bad_types_and_values():
    with pytest.raises(ConfigError, match=r"'train\.max_steps'.*integer"):
        load_recipe(DEMO, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match=r"train.*mixed_precision"):
        load_recipe(DEMO, ["train.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_recipe(DEMO, ["train.max_steps"])


def test_missing_or_broken_recipe(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("domain: [toy\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(broken)


def test_cli_runs_demo_recipe_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["run", str(DEMO), f"run_dir={run_dir}", "train.max_steps=60", "train.progress=false",
                 "data.train_size=512", "data.dev_size=256", "eval.timing_repeats=1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "patience:2" in out and "oracle" in out
    for name in ("config.yaml", "results.json", "sweep.csv", "plot.png", "calibration.json", "model/config.json", "traces/dev.pt"):
        assert (run_dir / name).exists(), name
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 60
    results = json.loads((run_dir / "results.json").read_text())
    assert results["timing"]["modes_agree"] and results["timing"]["matches_trace_replay"]
    calibration = json.loads((run_dir / "calibration.json").read_text())
    model_cfg = json.loads((run_dir / "model" / "config.json").read_text())
    assert model_cfg["default_policy"] == calibration["policy"]
    assert calibration["calibration"]["cost_fraction"] <= 0.5

    # sweep again from the stored traces with another family, without the model
    assert main(["sweep", str(DEMO), f"run_dir={run_dir}", "eval.sweeps={max_prob: [0.5, 0.9]}"]) == 0
    rows = json.loads((run_dir / "results.json").read_text())["rows"]
    assert {r["family"] for r in rows} == {"max_prob", "static", "oracle"}
    assert "timing" in json.loads((run_dir / "results.json").read_text())


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["run", str(DEMO), "train.lr_rate=1"]) == 2
    assert "unknown key 'train.lr_rate'" in capsys.readouterr().err
    assert main(["evaluate", str(DEMO), f"run_dir={tmp_path}", "eval.policy=patiense:2"]) == 2
    assert "eval.policy: unknown policy 'patiense'" in capsys.readouterr().err
    assert main(["train", str(DEMO), "domain=vision"]) == 2
    assert "unknown domain 'vision'" in capsys.readouterr().err
    assert main(["calibrate", str(DEMO), f"run_dir={tmp_path}", "--budget", "mean:2"]) == 2
    assert "bad budget 'mean:2'" in capsys.readouterr().err


def test_training_validation_keeps_the_best_model(tmp_path):
    from adaptive_exit.app.config import load_recipe
    from adaptive_exit.evaluation import score
    from adaptive_exit.app.pipeline import Pipeline

    run_dir = tmp_path / "run"
    overrides = [f"run_dir={run_dir}", "train.max_steps=40", "train.progress=false", "train.log_every=10",
                 "train.eval_every=10", "train.keep_best=accuracy", "train.lr=0.05", "data.train_size=256",
                 "data.dev_size=128"]
    assert main(["train", str(DEMO), *overrides]) == 0
    history = json.loads((run_dir / "train_history.json").read_text())
    scores = [e["dev_accuracy_exit_6"] for e in history if "dev_accuracy_exit_6" in e]
    assert len(scores) == 4 and all(f"dev_accuracy_exit_{k}" in history[-1] for k in range(1, 7))
    best = json.loads((run_dir / "best.json").read_text())
    assert best["value"] == max(scores)
    # the saved model is the best validated one, not necessarily the last
    recipe, _ = load_recipe(run_dir / "config.yaml", [f"run_dir={run_dir}"])
    trace = Pipeline(recipe).record("dev")
    assert score(trace, torch.full((trace.num_samples,), 5), "accuracy") == pytest.approx(max(scores))
    with pytest.raises(ValueError, match="keep_best needs train.eval_every"):
        load_recipe(DEMO, ["train.keep_best=accuracy", "train.eval_every=0"])
    with pytest.raises(ValueError, match="must be one of eval.metrics"):
        Pipeline(load_recipe(DEMO, [*overrides, "train.keep_best=mse"])[0]).train()


def test_dict_policy_in_a_recipe_survives_run_save_load(tmp_path, capsys):
    """eval.policy as a YAML mapping: parsed once, saved as its canonical spec, loaded back
    equal, timed and replayed under the same decisions (it used to die after training)."""
    from adaptive_exit.app.config import load_recipe
    from adaptive_exit.app.pipeline import Pipeline
    from adaptive_exit.policies import build_policy
    from adaptive_exit.runtime.runner import EarlyExitRunner

    run_dir = tmp_path / "run"
    policy = "{type: any, policies: [{type: confidence, measure: entropy, threshold: 0.5}, patience:2]}"
    assert main(["run", str(DEMO), f"run_dir={run_dir}", f"eval.policy={policy}", "train.max_steps=30",
                 "train.progress=false", "data.train_size=256", "data.dev_size=128", "eval.timing_repeats=1",
                 "calibrate.budget=null"]) == 0
    saved = json.loads((run_dir / "model" / "config.json").read_text())["default_policy"]
    assert saved == "entropy:0.5 | patience:2"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["timing"]["policy"] == saved and results["timing"]["matches_trace_replay"]
    pipeline = Pipeline(load_recipe(run_dir / "config.yaml")[0])
    model, default = pipeline.load_model()
    assert default == build_policy(saved) == pipeline.policy
    batch = pipeline.batches(model, "dev", 64)[0]
    assert torch.equal(EarlyExitRunner(model, default)(batch).exit_stage,
                       EarlyExitRunner(model, "entropy:0.5 | patience:2")(batch).exit_stage)

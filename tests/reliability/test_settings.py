"""Settings are checked where they are declared; every failure is one line and exit code 2."""
import json
import multiprocessing
import os

import pytest
import torch

from adaptive_exit.budgets import BudgetSpec, BudgetTable
from adaptive_exit.app.cli import main

from .conftest import DEMO, QUICK, cli


@pytest.mark.parametrize("override, message", [
    ("train.max_grad_norm=-1", "train.max_grad_norm must be > 0"),
    ("train.save_every=-1", "train.save_every must be >= 0"),
    ("train.warmup_steps=-3", "train.warmup_steps must be >= 0"),
    ("model.num_stages=0", "model.num_stages must be >= 1"),
    ("data.min_len=9", "data.min_len (9) must be <= data.max_len (3)"),
    ("train.lr=-1", "train.lr must be > 0"),
    ("train.lr=.nan", "'train.lr' in"),
])
def test_out_of_range_settings_are_one_line_errors(tmp_path, capsys, override, message):
    extra = ["data.max_len=3"] if override.startswith("data.min_len") else []
    assert main(["train", str(DEMO), f"run_dir={tmp_path}", override, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("budget, message", [
    ("stages:inf", "'inf' is not a finite number"),
    ("mean:nan", "the value 'nan' is not a finite number"),
    ("mean:1.5", "fraction of the full cost"),
    ("0.5", "write 'max:0.5' for a per-sample cap"),
    ("speed:2", "unknown budget kind 'speed'"),
])
def test_bad_budgets_name_the_value(budget, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BudgetSpec.parse(budget)


def test_duplicate_yaml_keys_are_errors(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(DEMO.read_text() + "\ntrain:\n  lr: 0.5\n")
    assert main(["train", str(recipe), f"run_dir={tmp_path}"]) == 2
    assert "duplicate key 'train'" in capsys.readouterr().err


def test_options_and_overrides_go_anywhere(tmp_path, toy_run, capsys):
    # overrides after --budget, -q after the positional recipe
    assert main(["calibrate", str(DEMO), "--budget", "mean:0.5", f"run_dir={toy_run}", "calibrate.heldout_fraction=0.4", "-q"]) == 0
    assert json.loads((toy_run / "calibration.json").read_text())["heldout"]["num_samples"] == round(96 * 0.4)
    assert main(["calibrate", "--model", str(toy_run / "model"), "calibrate.heldout_fraction=0.25", "--budget", "mean:0.6"]) == 0
    assert json.loads((toy_run / "calibration.json").read_text())["heldout"]["num_samples"] == 24


@pytest.mark.slow
def test_failures_that_used_to_be_tracebacks(tmp_path, toy_run):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "last.pt").write_bytes(b"\x80\x04garbage")
    cases = [
        (["train", str(DEMO), f"run_dir={tmp_path}", *QUICK], "cannot resume from checkpoint"),
        (["train", str(DEMO), f"run_dir={tmp_path / 'nan'}", *QUICK, "train.lr=1e30", "train.max_grad_norm=null"],
         "training loss became nan"),
        (["train", str(DEMO), f"run_dir={DEMO}/run", *QUICK], "Not a directory"),
        (["evaluate", str(DEMO), f"run_dir={tmp_path / 'nothing'}"], "model file missing"),
    ]
    for args, message in cases:
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        err = done.stderr.decode()
        assert message in err and "Traceback" not in err, (args, err)
    verbose = cli(*cases[0][0], "-v")
    assert "Traceback" in verbose.stderr.decode()  # -v shows where it came from


def test_resume_refuses_changed_settings_and_cleans_orphans(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", str(DEMO), f"run_dir={run_dir}", *QUICK, "train.save_every=10", "-q"]
    assert main(args) == 0
    orphan = run_dir / "checkpoint" / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    assert main([*args, "train.lr=0.01"]) == 2
    assert "written with other settings (lr: 0.003 -> 0.01)" in capsys.readouterr().err
    assert main([*args, "train.lr=0.01", "train.resume=force"]) == 0
    assert not orphan.exists()


def _calibrate_in_child(model_dir: str, budget: str, queue) -> None:
    try:
        queue.put(main(["calibrate", "--model", model_dir, "--budget", budget, "-q", "--threads", "1"]))
    except BaseException as exc:  # noqa: BLE001
        queue.put(repr(exc))


def test_concurrent_calibrations_keep_every_budget_table_entry(toy_run):
    budgets = [f"mean:{v}" for v in (0.35, 0.45, 0.55, 0.65, 0.75, 0.85)]
    (toy_run / "model" / "budget_policies.json").unlink(missing_ok=True)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_calibrate_in_child, args=(str(toy_run / "model"), b, queue)) for b in budgets]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    assert sorted(queue.get() for _ in children) == [0] * 6
    table = BudgetTable.load(toy_run / "model")
    assert sorted(table.to_dict()) == sorted(budgets)


def test_threads_setting_reaches_every_command(tmp_path, toy_run):
    from adaptive_exit.runtime.threads import configure_threads, parse_threads

    assert main(["evaluate", str(DEMO), f"run_dir={toy_run}", *QUICK, "--threads", "1", "-q"]) == 0
    assert json.loads((toy_run / "results.json").read_text())["timing"]["threads"] == 1
    assert main(["evaluate", str(DEMO), f"run_dir={toy_run}", *QUICK, "runtime.threads=2", "-q"]) == 0
    assert json.loads((toy_run / "results.json").read_text())["timing"]["threads"] == 2
    assert 1 <= configure_threads("auto") <= (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        parse_threads("0")
    torch.set_num_threads(2)


def test_latency_profiles_record_their_load_and_can_be_remeasured(tmp_path, toy_run):
    from adaptive_exit.budgets.costs import CostModel
    from adaptive_exit.app.toy import ToyModelConfig, ToyStagedModel, collate_toy

    model = ToyStagedModel(ToyModelConfig(num_stages=2, hidden=8)).eval()
    make = lambda n: collate_toy([{"x": torch.randn(n, 16), "label": 0}])  # noqa: E731
    cache = tmp_path / "costs.json"
    CostModel(model, make, cache_file=cache, repeats=1, warmup=0).latency_ms(4)
    entry = next(v for k, v in json.loads(cache.read_text()).items() if k.startswith("ms/"))
    assert set(entry) == {"ms", "load_per_core", "measured"}
    busy = {k: {**v, "ms": [999.0, 999.0], "load_per_core": 50.0} for k, v in json.loads(cache.read_text()).items()}
    cache.write_text(json.dumps(busy))  # measured on a machine far busier than this one is now
    assert CostModel(model, make, cache_file=cache, repeats=1, warmup=0).latency_ms(4)[0] < 999.0
    cache.write_text(json.dumps({k: {**v, "load_per_core": 0.0} for k, v in busy.items()}))
    assert CostModel(model, make, cache_file=cache, repeats=1, warmup=0).latency_ms(4)[0] == 999.0  # trusted
    assert CostModel(model, make, cache_file=cache, repeats=1, warmup=0, remeasure=True).latency_ms(4)[0] < 999.0

"""Cost models (FLOPs, latency per stage and input size), cost-model budgets, calibration to them."""
import json

import pytest
import torch

from adaptive_exit.budgets import BudgetSpec, calibrate
from adaptive_exit.app.cli import main
from adaptive_exit.budgets.costs import CostModel, count_stage_flops, time_stages
from adaptive_exit.budgets.units import cost_table
from adaptive_exit.runtime.staged import ExitResult
from adaptive_exit.app.toy import ToyModelConfig, ToyStagedModel, collate_toy

from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "core" / "toy" / "demo.yaml"


def _toy_batch(length: int, dim: int = 16):
    return collate_toy([{"x": torch.randn(length, dim), "label": 0}])


def test_flops_per_stage_match_the_layer_arithmetic():
    cfg = ToyModelConfig(input_dim=16, hidden=32, num_stages=3, num_classes=4)
    model = ToyStagedModel(cfg).eval()
    for n in (3, 7):
        flops = count_stage_flops(model, _toy_batch(n))
        h = cfg.hidden
        per_stage = 2 * n * (h * 2 * h + 2 * h * h) + 2 * h * h + 2 * h * cfg.num_classes  # block, set mix, exit head
        assert flops[1] == flops[2] == per_stage
        assert flops[0] == per_stage + 2 * n * cfg.input_dim * h  # the embedding is paid by stage 1
    # per sample: a batch of two equal-length samples gives the same per-sample count
    two = collate_toy([{"x": torch.randn(5, 16), "label": 0}] * 2)
    assert count_stage_flops(model, two) == count_stage_flops(model, _toy_batch(5))


def test_speech_stage_flops_match_the_network(tmp_path):
    from adaptive_exit.speech.models import ProgressiveEnhancer, enhancer_config

    cfg = enhancer_config(architecture="stage-recurrent", num_stages=2, hidden=16)
    model = ProgressiveEnhancer(cfg).eval()
    frames = 40
    batch = {"noisy_spec": torch.randn(1, 2, 161, frames), "frames": torch.tensor([frames])}
    d, f = cfg.hidden, cfg.freq_bins
    macs_per_frame = 4 * f * d + len(cfg.dilations) * cfg.time_kernel * d * d + 6 * d * d + 4 * f * d
    assert count_stage_flops(model, batch) == [2 * frames * macs_per_frame] * 2


def test_cost_model_caches_and_interpolates_latency(tmp_path):
    model = ToyStagedModel(ToyModelConfig(num_stages=3)).eval()
    calls = []

    def make_batch(n):
        calls.append(n)
        return _toy_batch(n)

    cache = tmp_path / "costs.json"
    costs = CostModel(model, make_batch, cache_file=cache, repeats=3, warmup=1)
    costs.flops(4)
    costs.flops(4)
    assert calls == [4]
    assert "flops/size=4" in json.loads(cache.read_text())
    assert CostModel(model, make_batch, cache_file=cache).flops(4) == costs.flops(4) and calls == [4]
    table = costs.latency_table([3, 4, 5, 6, 7, 8, 9, 12], points=3)
    assert table.shape == (8, 3) and (table > 0).all()
    assert set(calls) >= {3, 12}  # the extremes are measured, the rest interpolated
    cache.write_text("{not json")
    assert CostModel(model, make_batch, cache_file=cache).cache == {}  # a corrupt cache is re-profiled, not fatal
    assert len(time_stages(model, _toy_batch(5), repeats=2, warmup=0)) == 3


def test_sample_cost_tables_are_cumulative_per_unit():
    model = ToyStagedModel(ToyModelConfig(num_stages=3)).eval()
    costs = CostModel(model, _toy_batch, repeats=2, warmup=0)
    flops = cost_table("flops", model, [3, 9], costs)
    assert flops.shape == (2, 3) and bool((flops[:, 1:] > flops[:, :-1]).all()) and flops[1, 2] > flops[0, 2]
    assert torch.allclose(cost_table("fraction", model, [0, 0])[:, -1], torch.ones(2, dtype=torch.float64))
    rtf = cost_table("rtf", model, [3, 9], costs, durations=[1.0, 2.0])
    assert torch.allclose(rtf * torch.tensor([[1.0], [2.0]], dtype=torch.float64) * 1000, cost_table("ms", model, [3, 9], costs))
    with pytest.raises(ValueError, match="audio duration"):
        cost_table("rtf", model, [3], costs)
    with pytest.raises(ValueError, match="unknown cost unit"):
        cost_table("joules", model, [3], costs)


def test_budget_kinds_parse_and_measure():
    assert BudgetSpec.parse("p95:20ms") == BudgetSpec("p95", 20.0)
    assert BudgetSpec.parse("flops:2.5G").value == 2.5e9 and BudgetSpec.parse("flops:2.5G").unit == "flops"
    assert BudgetSpec.parse("rtf:0.3").unit == "rtf" and BudgetSpec.parse("ms:15").unit == "ms"
    for bad in ("p100:3ms", "watts:3", "p95:fast", "mean:1.5"):
        with pytest.raises(ValueError):
            BudgetSpec.parse(bad)
    table = torch.tensor([[1.0, 2.0], [10.0, 20.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    result = ExitResult(torch.zeros(4), torch.tensor([0, 1, 1, 0]), torch.zeros(4), 2, 2.0)
    assert BudgetSpec.parse("ms:10").achieved(result, table) == pytest.approx((1 + 20 + 4 + 5) / 4)
    assert BudgetSpec.parse("p50:1ms").achieved(result, table) == pytest.approx(torch.quantile(torch.tensor([1.0, 20, 4, 5]), 0.5).item())
    with pytest.raises(ValueError, match="cost model"):
        BudgetSpec.parse("ms:10").achieved(result)


def test_cli_calibrates_a_saved_model_to_flops_and_latency_budgets(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(DEMO), f"run_dir={run_dir}", "train.max_steps=40", "train.progress=false",
                 "data.train_size=256", "data.dev_size=200", "eval.timing_repeats=1", "calibrate.budget=null"]) == 0
    from adaptive_exit.app.config import load_recipe
    from adaptive_exit.app.pipeline import Pipeline

    pipeline = Pipeline(load_recipe(run_dir / "config.yaml")[0])
    full = float(pipeline.cost_table("dev", "flops")[:, -1].mean())
    capsys.readouterr()
    target = 0.6 * full
    assert main(["calibrate", "--model", str(run_dir / "model"), "--data", "dev", "--budget", f"flops:{target}"]) == 0
    assert "Calibrated to flops:" in capsys.readouterr().out  # a human summary; the figures are in calibration.json
    result = json.loads((run_dir / "calibration.json").read_text())
    assert result["calibration"]["unit"] == "flops" and result["calibration"]["achieved"] <= target
    assert json.loads((run_dir / "model" / "config.json").read_text())["default_policy"] == result["policy"]
    assert "flops/size=" in (run_dir / "model" / "costs.json").read_text()
    # a latency percentile: achieved p95 on the calibration half is within the target
    p95_full = float(torch.quantile(pipeline.cost_table("dev", "ms")[:, -1], 0.95))
    assert main(["calibrate", "--model", str(run_dir / "model"), "--budget", f"p95:{0.7 * p95_full}ms"]) == 0
    result = json.loads((run_dir / "calibration.json").read_text())
    assert result["calibration"]["unit"] == "ms" and result["calibration"]["achieved"] <= 0.7 * p95_full
    # a missing model folder is a clear error
    assert main(["calibrate", "--model", str(tmp_path / "nope"), "--budget", "mean:0.5"]) == 2
    assert "no saved model" in capsys.readouterr().err

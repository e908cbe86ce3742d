"""Sharded inference on 2 CPU processes (gloo) equals single-process inference exactly."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from adaptive_exit.app.cli import main
from adaptive_exit.runtime.distributed import Shard, map_ordered
from adaptive_exit.speech.data import SyntheticDataset
from adaptive_exit.runtime.traces import Trace

from ..text.helpers import tiny_backbone, tiny_tokenizer, WORDS

SCRIPT = Path(__file__).with_name("sharded_script.py")
REPO = Path(__file__).resolve().parents[2]


def test_gather_restores_job_order_and_rejects_gaps_and_duplicates():
    shard = Shard()
    assert shard.gather({1: "b", 0: "a", 2: "c"}, 3) == ["a", "b", "c"]
    with pytest.raises(RuntimeError, match="no process"):
        shard.gather({0: "a"}, 2)
    assert [Shard(r, 3).owns(7) for r in range(3)] == [False, True, False]
    assert list(map_ordered(iter([1, 2, 3]), lambda x: x * 10, Shard())) == [10, 20, 30]


def _sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))) for _ in range(n)]


def _prepare(root: Path) -> None:
    backbone_dir, data_dir = root / "tiny-bert", root / "sst"
    tiny_backbone("bert").save_pretrained(backbone_dir)
    tiny_tokenizer(root).save_pretrained(backbone_dir)
    data_dir.mkdir()
    for split, n, seed in (("train", 24, 0), ("dev", 11, 1)):  # 11: not divisible by 2 processes or by the batch size
        rows = [f"{s}\t{i % 2}" for i, s in enumerate(_sentences(n, seed))]
        (data_dir / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    text = {"domain": "text", "seed": 0, "model": {"name_or_path": str(backbone_dir), "max_seq_length": 16},
            "data": {"task": "sst2", "data_dir": str(data_dir)},
            "train": {"max_steps": 3, "batch_size": 8, "progress": False},
            "eval": {"split": "dev", "batch_size": 4, "metrics": ["accuracy"], "policy": "patience:1",
                     "sweeps": {"patience": [1, 2]}, "timing_batch_size": 4}}
    speech = {"domain": "speech", "seed": 0, "model": {"num_stages": 3, "hidden": 16},
              "data": {"source": "synthetic", "train_size": 16, "dev_size": 5, "seconds": 0.6},
              "train": {"max_steps": 2, "batch_size": 4, "progress": False},
              "eval": {"split": "dev", "batch_size": 2, "metrics": ["si_sdr"], "policy": "patience:1,threshold=0.05,distance=relative",
                       "sweeps": {"patience:1,threshold={},distance=relative": [0.01, 0.1]}, "timing_batch_size": 2}}
    for name, recipe in (("text", text), ("speech", speech)):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        assert main(["train", str(root / f"{name}.yaml"), f"run_dir={root / f'{name}-single'}"]) == 0
        shutil.copytree(root / f"{name}-single", root / f"{name}-sharded")
    (root / "inputs.txt").write_text("\n".join(_sentences(5, 2) + ["", "good movie\tbad plot"] + _sentences(2, 3)) + "\n")
    (root / "wavs").mkdir()
    for item in (SyntheticDataset(3, seed=5, seconds=0.7)[i] for i in range(3)):
        sf.write(root / "wavs" / f"{item['name']}.wav", item["noisy"], 16000)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_evaluate_predict_enhance_equal_single_process(tmp_path):
    _prepare(tmp_path)
    # tokenizers off its thread pool: a Rust pool in each launched rank is one more thread to tear down at exit
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    alone = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "single"], env=env, capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path), "sharded"]
    launched = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]

    for name, split in (("text", "dev"), ("speech", "dev")):
        single, sharded = (Trace.load(tmp_path / f"{name}-{tag}" / "traces" / f"{split}.pt") for tag in ("single", "sharded"))
        assert single.num_samples == sharded.num_samples == (11 if name == "text" else 5)
        assert torch.equal(single.outputs, sharded.outputs)
        assert (single.targets is None and sharded.targets is None) or torch.equal(single.targets, sharded.targets)
        assert single.quality.keys() == sharded.quality.keys()
        for metric in single.quality:
            assert torch.equal(single.quality[metric].nan_to_num(-1), sharded.quality[metric].nan_to_num(-1))
        reports = [json.loads((tmp_path / f"{name}-{tag}" / "results.json").read_text()) for tag in ("single", "sharded")]
        assert reports[0]["rows"] == reports[1]["rows"]
        assert reports[0]["per_exit"] == reports[1]["per_exit"]

    # Predictions: the main rank prints every line once, in input order; the other prints nothing.
    single_pred = _lines(tmp_path / "single-predict-rank0.jsonl")
    assert _lines(tmp_path / "sharded-predict-rank0.jsonl") == single_pred
    assert _lines(tmp_path / "sharded-predict-rank1.jsonl") == []
    assert [r["line"] for r in single_pred] == list(range(1, 10))
    # Enhancement: same records (bar timing) in the same order and identical audio.
    drop = lambda r: {k: v for k, v in r.items() if k not in ("processing_s", "rtf", "output")}  # noqa: E731
    single_enh, sharded_enh = _lines(tmp_path / "single-enhance-rank0.jsonl"), _lines(tmp_path / "sharded-enhance-rank0.jsonl")
    assert [drop(r) for r in single_enh] == [drop(r) for r in sharded_enh] and len(single_enh) == 3
    assert _lines(tmp_path / "sharded-enhance-rank1.jsonl") == []
    for record in single_enh:
        name = Path(record["output"]).name
        a, _ = sf.read(tmp_path / "single-enhanced" / name)
        b, _ = sf.read(tmp_path / "sharded-enhanced" / name)
        assert np.array_equal(a, b)

"""Data by name (Hugging Face ``datasets``, offline from a local dataset built here) and the
data-missing error that says what is missing, where it looked and what provides it."""
import subprocess
import sys
import time

import pytest

from adaptive_exit.text.domain import DOMAIN, TextDataConfig
from tests.conftest import REPO

pytest.importorskip("datasets")


def test_a_dataset_by_name_loads_offline_from_a_local_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "reviews"
    folder.mkdir()
    (folder / "train.csv").write_text("sentence,label\na good movie,1\nbad acting,0\nfun plot,1\n")
    (folder / "validation.csv").write_text("sentence,label\nboring,0\ngreat,1\n")
    cfg = TextDataConfig(task="classification", hf_dataset=True, hf_name=str(folder), text_column="sentence",
                         label_column="label")
    train = DOMAIN.load_split(cfg, "train", 0)
    dev = DOMAIN.load_split(cfg, "dev", 0)  # "dev" is the hub's "validation"
    assert [e["text"] for e in train] == ["a good movie", "bad acting", "fun plot"]
    assert [str(e["label"]) for e in dev] == ["0", "1"]
    assert DOMAIN.label_names(cfg) == ("0", "1")


def test_tagged_datasets_by_name_become_words_and_tags(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    rows = datasets.Dataset.from_dict({"tokens": [["John", "Smith", "ran"], ["hi"]], "ner_tags": [[1, 2, 0], [0]]},
                                      features=features)
    folder = tmp_path / "ner"
    rows.to_parquet(str(folder / "train.parquet")) if folder.mkdir() is None else None
    cfg = TextDataConfig(task="token-classification", hf_dataset=True, hf_name=str(folder))
    examples = DOMAIN.load_split(cfg, "train", 0)
    assert examples[0]["words"] == ["John", "Smith", "ran"] and examples[0]["tags"] == ["B-PER", "I-PER", "O"]


def test_missing_data_is_reported_before_any_model_loads(tmp_path):
    env = {"ADAPTIVE_EXIT_DATA": str(tmp_path / "nothing"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "adaptive_exit", "train", "sst2-pabee", f"run_dir={tmp_path / 'run'}"],
                            capture_output=True, env=env, cwd=tmp_path, timeout=300)
    err = result.stderr.decode()
    assert result.returncode == 2, err[-1500:]
    line = err.strip().splitlines()[-1]
    assert "sst2" in line and "glue_sst2" in line and "ADAPTIVE_EXIT_DATA" in line and "data.hf_dataset=true" in line
    assert "Loading weights" not in err  # the model was never loaded
    assert time.monotonic() - start < 120
    _ = REPO

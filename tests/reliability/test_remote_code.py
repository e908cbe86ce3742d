"""A model folder that asks to run its own code (``auto_map``) is refused, whatever stdin says."""
import json
import shutil
from pathlib import Path

import pytest

from .conftest import cli

EVIL = """from pathlib import Path
Path(__file__).with_name("PWNED").touch()
from transformers import BertTokenizerFast as EvilTokenizer
from transformers import BertConfig as EvilConfig
from transformers import BertModel as EvilModel
from transformers import BertForSequenceClassification as EvilClassifier
"""


def _plant(folder: Path, file: str, auto_map: dict) -> Path:
    """Add ``auto_map`` to ``folder/file`` and the module it points at; returns the marker path."""
    (folder / "evil.py").write_text(EVIL)
    config = json.loads((folder / file).read_text()) if (folder / file).exists() else {}
    config["auto_map"] = auto_map
    (folder / file).write_text(json.dumps(config))
    return folder / "PWNED"


def _assert_refused(result, file: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == 2, (result.returncode, err[-2000:])
    last = err.strip().splitlines()[-1]
    assert file in last and "auto_map" in last and "never runs" in last, err
    assert "Do you wish to run the custom code" not in result.stdout.decode() + err


@pytest.mark.parametrize("file", ["tokenizer_config.json", "config.json"])
def test_predict_refuses_a_folder_with_custom_code_even_when_stdin_says_yes(tmp_path, text_model, file):
    folder = tmp_path / "model"
    shutil.copytree(text_model, folder)
    key = "AutoTokenizer" if file.startswith("tokenizer") else "AutoConfig"
    marker = _plant(folder, file, {key: ["evil.EvilTokenizer", None] if key == "AutoTokenizer" else "evil.EvilConfig"})
    result = cli("predict", "--model", str(folder), "--input", "-", stdin=b"y\nyes\na good movie\n")
    assert not marker.exists()
    _assert_refused(result, file)
    assert b'"label"' not in result.stdout  # no answers from a refused model


def test_a_nested_backbone_auto_map_in_a_saved_model_is_refused(tmp_path, text_model):
    folder = tmp_path / "model"
    shutil.copytree(text_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["backbone"]["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(EVIL)
    result = cli("predict", "--model", str(folder), "--input", "-", stdin=b"y\n")
    assert not (folder / "PWNED").exists()
    _assert_refused(result, "config.json")
    assert "backbone.auto_map" in result.stderr.decode()


def _classifier_folder(tmp_path: Path) -> Path:
    import transformers

    from tests.text.helpers import TINY, tiny_tokenizer

    folder = tmp_path / "classifier"
    model = transformers.BertForSequenceClassification(TINY["bert"]())
    model.save_pretrained(folder)
    tiny_tokenizer(tmp_path).save_pretrained(folder)
    return folder


def test_convert_refuses_a_classifier_with_custom_code(tmp_path):
    folder = _classifier_folder(tmp_path)
    marker = _plant(folder, "config.json", {"AutoConfig": "evil.EvilConfig",
                                            "AutoModelForSequenceClassification": "evil.EvilClassifier"})
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a good movie", "label": 1}\n{"text": "bad", "label": 0}\n')
    result = cli("convert", "--model", str(folder), "--train", str(data), "--dev", str(data),
                 "--output", str(tmp_path / "run"), stdin=b"y\n")
    assert not marker.exists()
    _assert_refused(result, "config.json")


def test_serve_refuses_a_folder_with_custom_code(tmp_path, text_model):
    folder = tmp_path / "model"
    shutil.copytree(text_model, folder)
    marker = _plant(folder, "tokenizer_config.json", {"AutoTokenizer": ["evil.EvilTokenizer", None]})
    result = cli("serve", "--model", str(folder), "--port", "8937", stdin=b"y\n", timeout=60)
    assert not marker.exists()
    _assert_refused(result, "tokenizer_config.json")


def test_run_refuses_a_backbone_with_custom_code(tmp_path):
    folder = _classifier_folder(tmp_path)
    marker = _plant(folder, "config.json", {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"})
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a good movie", "label": 1}\n{"text": "bad", "label": 0}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"domain: text\nrun_dir: {tmp_path / 'run'}\nmodel:\n  name_or_path: {folder}\n"
                      f"data:\n  task: classification\n  files: {{train: {data}, dev: {data}}}\n")
    result = cli("train", str(recipe), stdin=b"y\n")
    assert not marker.exists()
    _assert_refused(result, "config.json")

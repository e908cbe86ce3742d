"""Any dataset from the recipe: CSV, TSV, JSONL, headerless and BOM files, labels inferred
and saved, line-numbered errors; a GLUE-format pair task run by YAML alone."""
import json

import pytest
import torch

from adaptive_exit.app.cli import main
from adaptive_exit.text.data import TaskSpec, TextCollator, infer_label_names, read_table
from tests.conftest import REPO

from .helpers import tiny_backbone, tiny_tokenizer

CLS = TaskSpec("text", None, "label", "classification")


def write(path, text, bom=False):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_csv_tsv_and_jsonl_give_the_same_examples(tmp_path):
    rows = [("it's \"great\"", "pos"), ("dull, slow", "neg")]
    csv_text = "text,label\n" + "".join(f'"{t.replace(chr(34), 2 * chr(34))}",{l}\n' for t, l in rows)
    tsv_text = "text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows)
    jsonl = "".join(json.dumps({"text": t, "label": l, "extra": 1}) + "\n" for t, l in rows)
    for name, text in (("a.csv", csv_text), ("a.tsv", tsv_text), ("a.jsonl", jsonl)):
        examples = read_table(write(tmp_path / name, text), CLS)
        assert [(e["text"], e["label"]) for e in examples] == rows, name
        assert examples[1]["where"].endswith(f"{name}:{3 if name != 'a.jsonl' else 2}")


def test_glue_mrpc_files_with_a_bom_and_cola_files_without_a_header(tmp_path):
    mrpc = write(tmp_path / "train.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                 '1\t1\t2\tHe said "yes" .\tHe agreed .\n0\t3\t4\tA cat .\tThe stock fell .\n', bom=True)
    spec = TaskSpec("#1 String", "#2 String", "Quality", "classification")
    examples = read_table(mrpc, spec)
    assert examples[0] == {"text": 'He said "yes" .', "text_pair": "He agreed .", "label": "1", "where": f"{mrpc}:2"}
    cola = write(tmp_path / "cola.tsv", "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n")
    spec = TaskSpec("sentence", None, "label", "classification", column_names=("source", "label", "original", "sentence"))
    assert [(e["text"], e["label"], e["where"][-2:]) for e in read_table(cola, spec)] == [
        ("Our friends won't buy this analysis.", "1", ":1"), ("They drank the pub.", "0", ":2")]


@pytest.mark.parametrize("name, text, message", [
    ("a.csv", "text,label\nfine,1\n\"broken,1\n", r"a.csv:3: expected 2 comma-separated columns, found 1"),
    ("a.tsv", "sentence\tlabel\nx\t1\n", r"a.tsv:1: columns \['label', 'sentence'\] lack \['text'\]"),
    ("a.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', r"a.jsonl:2: expected a JSON object, got list"),
    ("a.jsonl", '{"text": "a", "label": 1}\n{"text": "b"\n', r"a.jsonl:2: not a JSON object"),
    ("a.tsv", "text\tlabel\n  \t1\n", r"a.tsv:2: empty text in column 'text'"),
    ("a.xml", "<x/>", r"cannot tell the format"),
])
def test_bad_files_name_the_line(tmp_path, name, text, message):
    with pytest.raises(ValueError, match=message):
        read_table(write(tmp_path / name, text), CLS)


def test_labels_are_inferred_sorted_and_mapped(tmp_path):
    examples = read_table(write(tmp_path / "t.csv", "text,label\na,neg\nb,pos\nc,neutral\n"), CLS)
    assert infer_label_names(examples) == ("neg", "neutral", "pos")
    assert infer_label_names([{"label": "10"}, {"label": "2"}, {"label": "1"}]) == ("1", "2", "10")
    collate = TextCollator(tiny_tokenizer(tmp_path), 16, label_names=["neg", "neutral", "pos"])
    assert collate(examples)["labels"].tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match=r"t.csv:2: label 'meh' is neither"):
        collate([{**examples[0], "label": "meh"}])
    # class ids work for a model whose labels are names (a converted NEGATIVE/POSITIVE classifier)
    assert TextCollator(tiny_tokenizer(tmp_path), 16, label_names=["NEGATIVE", "POSITIVE"])(
        [{"text": "a", "text_pair": None, "label": "1"}])["labels"].tolist() == [1]


def tiny_local_model(folder):
    """A tiny BERT and tokenizer saved like a hub checkpoint (model.name_or_path: FOLDER)."""
    backbone = tiny_backbone("bert")
    backbone.save_pretrained(folder)
    tiny_tokenizer(folder).save_pretrained(folder)
    return folder


def test_a_glue_format_pair_recipe_runs_by_yaml_alone_with_f1_and_mcc(tmp_path, capsys):
    data = tmp_path / "glue_mrpc"
    data.mkdir()
    gen = torch.Generator().manual_seed(0)
    words = "the a movie film good bad great awful not very is was it and of to plot acting fun boring".split()
    for split, n in (("train", 96), ("dev", 40)):
        lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            a = " ".join(words[j] for j in torch.randint(0, len(words), (6,), generator=gen).tolist())
            same = i % 2
            b = a if same else " ".join(words[j] for j in torch.randint(0, len(words), (6,), generator=gen).tolist())
            lines.append(f"{same}\t{i}\t{i + 1000}\t{a}\t{b}")
        write(data / f"{split}.tsv", "\n".join(lines) + "\n", bom=True)
    model_dir = tiny_local_model(tmp_path / "tiny-bert")
    run_dir = tmp_path / "run"
    assert main(["run", str(REPO / "recipes/text/mrpc/pabee.yaml"), f"run_dir={run_dir}", f"data.data_dir={data}",
                 f"model.name_or_path={model_dir}", "train.max_steps=20", "train.progress=false", "eval.timing_repeats=1",
                 "model.max_seq_length=32", "-q"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["full_model"]) == {"f1", "mcc", "accuracy"}
    entropy_rows = [r for r in results["rows"] if r["family"] == "normalized_entropy"]
    assert 1 <= len(entropy_rows) <= 8  # thresholds from quantiles of the model's own uncertainty
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["label_names"] == ["0", "1"]  # inferred from train and saved with the model
    assert json.loads((run_dir / "calibration.json").read_text())["budget"] == "mean:0.5"

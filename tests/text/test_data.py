import pytest

from adaptive_exit.text.data import TASKS, read_glue_tsv


def write(tmp_path, text):
    path = tmp_path / "data.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_sst2_with_quotes_as_text(tmp_path):
    path = write(tmp_path, 'sentence\tlabel\nit \'s a "charming" film \t1\nbleak\t0\n')
    rows = read_glue_tsv(path, TASKS["sst2"])
    assert rows == [{"text": 'it \'s a "charming" film', "text_pair": None, "label": "1", "where": f"{path}:2"},
                    {"text": "bleak", "text_pair": None, "label": "0", "where": f"{path}:3"}]


def test_reads_stsb_pairs_and_scores(tmp_path):
    path = write(tmp_path, "index\tsentence1\tsentence2\tscore\n0\tA man.\tA person.\t4.25\n")
    assert read_glue_tsv(path, TASKS["stsb"]) == [{"text": "A man.", "text_pair": "A person.", "label": 4.25, "where": f"{path}:2"}]


@pytest.mark.parametrize("content, message", [
    ("text\tlabel\nfoo\t1\n", r"data.tsv:1: columns .* lack \['sentence'\]"),
    ("sentence\tlabel\ngood\t1\nbad\t2\n", r"data.tsv:3: label '2' is not one of \['0', '1'\]"),
    ("sentence\tlabel\ngood\t1\nbad\n", r"data.tsv:3: expected 2 tab-separated columns, found 1"),
    ("sentence\tlabel\n \t1\n", r"data.tsv:2: empty text"),
    ("sentence\tlabel\n", "no examples"),
    ("", "is empty"),
])
def test_bad_sst2_files_say_which_line(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        read_glue_tsv(write(tmp_path, content), TASKS["sst2"])


def test_bad_stsb_scores(tmp_path):
    with pytest.raises(ValueError, match=r":2: score 7.0 is outside \[0.0, 5.0\]"):
        read_glue_tsv(write(tmp_path, "sentence1\tsentence2\tscore\na\tb\t7\n"), TASKS["stsb"])
    with pytest.raises(ValueError, match=r":2: score 'high' is not a number"):
        read_glue_tsv(write(tmp_path, "sentence1\tsentence2\tscore\na\tb\thigh\n"), TASKS["stsb"])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_glue_tsv(tmp_path / "train.tsv", TASKS["sst2"])


def test_real_sst2_dev_reads_cleanly(data_dir):
    rows = read_glue_tsv(data_dir / "glue_sst2" / "dev.tsv", TASKS["sst2"])
    assert len(rows) == 872
    assert sum(int(r["label"]) for r in rows) == 444


def test_real_stsb_dev_reads_cleanly(data_dir):
    rows = read_glue_tsv(data_dir / "glue_stsb" / "dev.tsv", TASKS["stsb"])
    assert len(rows) == 1500


def test_train_rest_is_the_training_rows_the_subset_left_out(tmp_path):
    from adaptive_exit.text.domain import TextDataConfig, TextDomain

    rows = "".join(f"sentence number {i}\t{i % 2}\n" for i in range(50))
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + rows)
    domain = TextDomain()
    cfg = TextDataConfig(task="sst2", data_dir=str(tmp_path), train_subset=30)
    used, rest = domain.load_split(cfg, "train", 0), domain.load_split(cfg, "train_rest", 0)
    assert len(used) == 30 and len(rest) == 20
    assert {r["text"] for r in used}.isdisjoint({r["text"] for r in rest})  # no row both trained on and held out
    with pytest.raises(ValueError, match="trains on all 50"):
        domain.load_split(TextDataConfig(task="sst2", data_dir=str(tmp_path)), "train_rest", 0)

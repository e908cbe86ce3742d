"""Bad input gets a one-line error naming what and where; the rest still gets answers."""
import json
import os
import subprocess
import sys
import time

from adaptive_exit.app.cli import main
from tests.conftest import REPO

from .conftest import cli


def _records(out: bytes | str) -> list[dict]:
    text = out.decode() if isinstance(out, bytes) else out
    return [json.loads(line) for line in text.splitlines()]


def test_a_bad_byte_on_stdin_spoils_only_its_line(text_model):
    stdin = b"the movie is good\n\xff\xfe broken \x80 line\nthe plot is boring\n"
    done = cli("predict", "--model", str(text_model), "--input", "-", stdin=stdin)
    assert done.returncode == 0, done.stderr
    records = _records(done.stdout)
    assert [r["line"] for r in records] == [1, 2, 3]
    assert records[1] == {"line": 2, "error": "line 2: not UTF-8 text (byte 0xff at column 1)"}
    assert "label" in records[0] and "label" in records[2]


def test_a_non_utf8_input_file_names_the_line(tmp_path, text_model, capsys):
    path = tmp_path / "in.txt"
    path.write_bytes("\ufeffthe movie is good\nfine\nthe plot is \xe9 bad\n".encode("utf-8")[:-12] + b"\xe9 bad\n")
    assert main(["predict", "--model", str(text_model), "--input", str(path)]) == 0
    records = _records(capsys.readouterr().out)
    assert records[0]["text"] == "the movie is good"  # the byte-order mark is not part of the text
    assert records[1]["text"] == "fine"
    assert records[2]["line"] == 3 and "not UTF-8" in records[2]["error"]


def test_a_third_tab_column_is_an_error_record_not_glued_into_the_pair(tmp_path, text_model, capsys):
    path = tmp_path / "in.txt"
    path.write_text("the movie\tis good\nthe plot\tis\tboring\n")
    assert main(["predict", "--model", str(text_model), "--input", str(path)]) == 0
    records = _records(capsys.readouterr().out)
    assert records[0]["text_pair"] == "is good"
    assert records[1] == {"line": 2, "error": "line 2: 3 tab-separated fields; expected one text, or a pair separated by one tab"}


def test_typed_input_is_answered_line_by_line(text_model):
    process = subprocess.Popen([sys.executable, "-m", "adaptive_exit", "predict", "--model", str(text_model)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        process.stdin.write(b"the movie is good\n")
        process.stdin.flush()
        os.set_blocking(process.stdout.fileno(), True)
        start = time.time()
        line = process.stdout.readline()  # answered while stdin is still open (batch size 32)
        assert json.loads(line)["line"] == 1 and time.time() - start < 60
        process.stdin.write(b"the plot is boring\n")
        process.stdin.flush()
        assert json.loads(process.stdout.readline())["line"] == 2
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    assert process.returncode == 0


def test_input_that_is_a_directory_is_a_clean_error(tmp_path, text_model, capsys):
    assert main(["predict", "--model", str(text_model), "--input", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory" in err

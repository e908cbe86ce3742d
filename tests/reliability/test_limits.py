"""Every bound in adaptive_exit.limits holds where a hostile file, recipe, input or client
pushes on it, and ends in a one-line error (exit 2) or a 4xx, never a crash or a hang."""
import http.client
import json
import os
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from adaptive_exit.app.cli import main
from adaptive_exit.limits import LIMITS, limit, limits_table
from tests.conftest import REPO

from .conftest import DEMO, QUICK, cli, speech_like, write_wav


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    err = result.stderr.decode(errors="replace").strip()
    assert result.returncode == 2, (result.returncode, err[-1500:])
    lines = err.splitlines()
    assert len(lines) == 1, err[-1500:]
    assert "Traceback" not in err and "internal error" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- the table itself

def test_every_limit_has_a_default_an_override_and_a_readme_row(monkeypatch):
    readme = (REPO / "README.md").read_text() + "".join(p.read_text() for p in (REPO / "docs").glob("*.md"))
    for lim in LIMITS.values():
        assert f"`{lim.name}`" in readme and lim.env in readme, lim.name
    assert limit("json_depth") == 64
    monkeypatch.setenv("ADAPTIVE_EXIT_LIMIT_JSON_DEPTH", "8")
    assert limit("json_depth") == 8
    monkeypatch.setenv("ADAPTIVE_EXIT_LIMIT_JSON_DEPTH", "lots")
    with pytest.raises(ValueError, match="ADAPTIVE_EXIT_LIMIT_JSON_DEPTH"):
        limit("json_depth")
    assert limits_table().count("\n") == len(LIMITS) + 1


# --------------------------------------------------------------------------- recipes

def test_an_alias_bomb_recipe_is_refused_at_load_in_under_five_seconds(tmp_path):
    lines = ["domain: toy", f"run_dir: {tmp_path / 'run'}", "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    lines += ["eval:", "  sweeps:", "    patience: *i"]
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    assert recipe.stat().st_size < 1500
    start = time.monotonic()
    result = cli("sweep", str(recipe))
    assert time.monotonic() - start < 5 + 10  # interpreter start-up on a loaded machine included
    one_line_error(result, "limit recipe_nodes")


def test_a_huge_recipe_value_is_not_echoed_whole(tmp_path, capsys):
    assert main(["train", str(DEMO), f"run_dir={tmp_path}", "train.lr=" + "x" * 1_000_000]) == 2
    err = capsys.readouterr().err
    assert len(err) < 2000 and "1,000,002 characters" in err


# --------------------------------------------------------------------------- model folders

def _corrupt(folder, how):
    weights = folder / "model.safetensors"
    if how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif how == "huge header":
        data = weights.read_bytes()
        weights.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    elif how == "nested config":
        (folder / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    elif how == "pickle weights":
        weights.unlink()
        import torch

        torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    elif how == "duplicate keys":
        text = (folder / "config.json").read_text()
        (folder / "config.json").write_text(text.replace("{", '{"model_type": "bert", ', 1))
    elif how == "huge config":
        config = json.loads((folder / "config.json").read_text())
        config["backbone"]["hidden_size"] = 10**7
        config["backbone"]["intermediate_size"] = 10**7
        (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("how, needle", [("truncated", "model.safetensors"), ("huge header", "model.safetensors"),
                                         ("nested config", "config.json"), ("pickle weights", "never loaded"),
                                         ("duplicate keys", "duplicate key"), ("huge config", "limit model_parameters")])
def test_bad_text_model_folders_end_in_one_line_errors(tmp_path, text_model, how, needle):
    folder = tmp_path / "model"
    shutil.copytree(text_model, folder)
    _corrupt(folder, how)
    start = time.monotonic()
    result = cli("predict", "--model", str(folder), "--input", "-", stdin=b"a good movie\n")
    one_line_error(result, needle)
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("how, needle", [("truncated", "model.safetensors"), ("nested config", "config.json")])
def test_bad_speech_model_folders_end_in_one_line_errors(tmp_path, speech_model, how, needle):
    folder = tmp_path / "model"
    shutil.copytree(speech_model, folder)
    _corrupt(folder, how)
    wav = write_wav(tmp_path / "in.wav", speech_like())
    result = cli("enhance", "--model", str(folder), "--input", str(wav), "--output", str(tmp_path / "out"))
    one_line_error(result, needle)


def test_an_oversized_speech_config_is_refused_before_allocation(tmp_path, speech_model):
    folder = tmp_path / "model"
    shutil.copytree(speech_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["hidden"] = 10**6
    (folder / "config.json").write_text(json.dumps(config))
    wav = write_wav(tmp_path / "in.wav", speech_like())
    result = cli("enhance", "--model", str(folder), "--input", str(wav), "--output", str(tmp_path / "out"))
    one_line_error(result, "config.json")


def test_a_policy_with_a_huge_integer_is_a_one_line_error(text_model):
    result = cli("predict", "--model", str(text_model), "--policy", "patience:99999999999999999999", stdin=b"good\n")
    one_line_error(result, "patience must be an integer >= 0 and <= 1,000,000")


def test_an_exported_manifest_cannot_point_outside_its_folder(tmp_path):
    from adaptive_exit.deploy.onnx import Manifest, confined_name

    for bad in ("/etc/passwd", "../x.onnx", "sub/stage.onnx", "..", ""):
        with pytest.raises(ValueError, match="inside the exported folder"):
            confined_name(bad)
    folder = tmp_path / "exported"
    folder.mkdir()
    graph = {"file": "/etc/passwd", "inputs": ["a"], "outputs": ["b"]}
    (folder / "manifest.json").write_text(json.dumps({
        "format": 1, "domain": "text", "num_stages": 1, "stage_costs": [1.0], "batch_inputs": ["a"], "begin": graph,
        "stages": [graph], "exits": ["b"], "batched": ["a"]}))
    with pytest.raises(ValueError, match="inside the exported folder"):
        Manifest.load(folder)


# --------------------------------------------------------------------------- inputs

def test_a_huge_input_line_gets_an_error_record_and_the_rest_are_answered(text_model):
    stdin = b"a good movie\n" + b"x" * 10_000_000 + b"\nbad acting\n"
    result = cli("predict", "--model", str(text_model), "--input", "-", stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()[-1000:]
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(records) == 3 and "label" in records[0] and "label" in records[2]
    assert "limit text_chars" in records[1]["error"] and records[1]["line"] == 2


def test_a_wav_whose_header_claims_1_hz_is_refused_at_once(tmp_path, speech_model):
    wav = tmp_path / "slow.wav"
    sf.write(str(wav), np.zeros(8000, dtype=np.int16), 1000, subtype="PCM_16")
    data = bytearray(wav.read_bytes())
    data[24:28] = struct.pack("<I", 1)  # the fmt chunk's sample rate
    data[28:32] = struct.pack("<I", 2)
    wav.write_bytes(bytes(data))
    start = time.monotonic()
    assert main(["enhance", "--model", str(speech_model), "--input", str(wav), "--output", str(tmp_path / "out")]) == 1
    assert time.monotonic() - start < 10


def test_enhance_reports_a_mix_down_and_cleans_temporaries_of_a_killed_run(tmp_path, speech_model, capsys):
    source = tmp_path / "in" / "multi.wav"
    source.parent.mkdir()
    sf.write(str(source), np.stack([speech_like(seed=c) for c in range(8)], 1), 16000)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".multi.wav.abc123.tmp"
    stale.write_bytes(b"half a file")
    assert main(["enhance", "--model", str(speech_model), "--input", str(source), "--output", str(out)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["channels"] == 8 and "averaged" in record["note"]
    assert not stale.exists() and sorted(os.listdir(out)) == ["multi.wav"]


def test_a_csv_that_is_not_utf8_names_the_file_and_line(tmp_path):
    from adaptive_exit.text.data import TaskSpec, read_table

    table = tmp_path / "data.csv"
    table.write_bytes(b"text,label\ngood,1\nbad \xff\xfe movie,0\n")
    with pytest.raises(ValueError, match=r"data.csv:3: not UTF-8 text \(byte 0xff at column 5\)"):
        read_table(table, TaskSpec("text", None, "label", "classification"))


class Thing:
    """An object a checkpoint must not unpickle."""


def test_torch_advice_to_unpickle_is_never_shown(tmp_path, capsys):
    import torch

    run_dir = tmp_path / "run"
    (run_dir / "checkpoint").mkdir(parents=True)
    torch.save({"step": 1, "model": Thing()}, run_dir / "checkpoint" / "last.pt")
    assert main(["train", str(DEMO), f"run_dir={run_dir}", *QUICK]) == 2
    assert "weights_only" not in capsys.readouterr().err  # torch's advice to switch it off is dropped


# --------------------------------------------------------------------------- the server

def _serve(model, port):
    env = {**os.environ, "ADAPTIVE_EXIT_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "adaptive_exit", "serve", "--model", str(model), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    for _ in range(600):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
    proc.kill()
    raise RuntimeError("server did not start")


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


@pytest.fixture
def served_text(text_model):
    from tests.deploy.test_serve import free_port

    port = free_port()
    proc = _serve(text_model, port)
    yield port, proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
def test_a_chunked_upload_of_300_mb_is_refused_with_flat_memory(served_text):
    port, proc = served_text
    idle = _rss_mb(proc.pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b"x" * (1 << 20)
    peak, sent = idle, 0
    try:
        for i in range(300):
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            if i % 20 == 0:
                peak = max(peak, _rss_mb(proc.pid))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the upload ended: what a limit should do
    response = conn.getresponse()
    assert response.status == 413, response.read()[:300]
    assert "limit request_bytes_text" in json.loads(response.read())["error"]
    peak = max(peak, _rss_mb(proc.pid))
    assert peak - idle < 100, (idle, peak, sent)


@pytest.mark.slow
def test_nested_json_gets_400_and_the_log_stays_clean(served_text):
    port, proc = served_text
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/predict", body=b"[" * 100_000, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 400 and "limit json_depth" in json.loads(response.read())["error"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a client that leaves mid-body
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", "1000")
    conn.endheaders()
    conn.send(b'{"text": "a go')
    conn.close()
    time.sleep(1.0)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/predict", body=b'{"text": "a good movie"}', headers={"Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err, err.decode()[-2000:]


def test_serve_refuses_bad_options_in_one_line(text_model):
    one_line_error(cli("serve", "--model", str(text_model), "--port", "70000"), "--port")
    one_line_error(cli("serve", "--model", str(text_model), "--max-batch", "0"), "--max-batch")
    one_line_error(cli("serve", "--model", str(text_model), "--max-wait-ms", "-5"), "--max-wait-ms")

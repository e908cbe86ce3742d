"""Nothing from a file runs code; nothing already written is lost or overwritten."""
import json
import os
import stat

import numpy as np
import soundfile as sf
import torch

from adaptive_exit.app.cli import main

from .conftest import DEMO, QUICK, speech_like, write_wav


class _Exploit:
    """Unpickling this calls Path.touch(marker): code execution if a loader unpickles freely."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_a_crafted_pickle_checkpoint_never_executes(tmp_path, capsys):
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    (run_dir / "checkpoint").mkdir(parents=True)
    torch.save({"step": 1, "model": _Exploit(marker), "optimizer": {}, "scheduler": {}}, run_dir / "checkpoint" / "last.pt")
    assert main(["train", str(DEMO), f"run_dir={run_dir}", *QUICK]) == 2
    assert not marker.exists()
    assert "cannot resume from checkpoint" in capsys.readouterr().err


def test_trace_and_model_folders_load_without_unpickling_objects(tmp_path, toy_run, capsys):
    from adaptive_exit.runtime.traces import Trace

    marker = tmp_path / "pwned"
    torch.save({"format": 1, "outputs": _Exploit(marker)}, tmp_path / "dev.pt")
    try:
        Trace.load(tmp_path / "dev.pt")
    except ValueError as exc:
        assert "cannot read trace file" in str(exc)
    assert not marker.exists()


def test_enhance_refuses_to_write_into_its_input_folder(tmp_path, speech_model, capsys):
    source = write_wav(tmp_path / "in" / "a.wav", speech_like())
    before = source.read_bytes()
    assert main(["enhance", "--model", str(speech_model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "in")]) == 2
    assert "is the input folder" in capsys.readouterr().err
    assert main(["enhance", "--model", str(speech_model), "--input", str(source), "--output", str(tmp_path / "in")]) == 2
    assert source.read_bytes() == before and sorted(os.listdir(tmp_path / "in")) == ["a.wav"]


def test_enhance_keeps_same_stem_inputs_distinct_and_never_overwrites(tmp_path, speech_model, capsys):
    inputs = tmp_path / "in"
    files = [write_wav(inputs / "a.wav", speech_like(seed=1)), write_wav(inputs / "sub" / "a.wav", speech_like(seed=2))]
    sf.write(str(inputs / "a.flac"), speech_like(seed=3), 16000)
    files.append(inputs / "a.flac")
    before = {f: f.read_bytes() for f in files}
    out = tmp_path / "out"
    assert main(["enhance", "--model", str(speech_model), "--input", str(inputs), "--output", str(out)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    outputs = [r["output"] for r in records]
    assert len(records) == 3 and len(set(outputs)) == 3 and all(os.path.exists(o) for o in outputs)
    assert {os.path.relpath(o, out) for o in outputs} == {"a.wav", "a_flac.wav", os.path.join("sub", "a.wav")}
    assert all(f.read_bytes() == before[f] for f in files)  # inputs untouched
    # a second run does not replace what the first wrote, unless asked
    stamp = {o: os.stat(o).st_mtime_ns for o in outputs}
    assert main(["enhance", "--model", str(speech_model), "--input", str(inputs), "--output", str(out)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert captured.out == "" and len(errors) == 3 and all("exists; pass --overwrite" in e for e in errors)
    assert {o: os.stat(o).st_mtime_ns for o in outputs} == stamp
    assert main(["enhance", "--model", str(speech_model), "--input", str(inputs), "--output", str(out), "--overwrite"]) == 0


def test_enhance_output_naming_a_file_is_a_clean_error(tmp_path, speech_model, capsys):
    source = write_wav(tmp_path / "a.wav", speech_like())
    (tmp_path / "taken.txt").write_text("keep me")
    assert main(["enhance", "--model", str(speech_model), "--input", str(source), "--output", str(tmp_path / "taken.txt")]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "taken.txt").read_text() == "keep me"


def test_a_tiny_file_does_not_stop_the_others(tmp_path, speech_model, capsys):
    inputs = tmp_path / "in"
    write_wav(inputs / "a_tiny.wav", speech_like()[:100])  # 6 ms: shorter than one STFT frame
    write_wav(inputs / "b_normal.wav", speech_like())
    assert main(["enhance", "--model", str(speech_model), "--input", str(inputs), "--output", str(tmp_path / "out")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [("error" in r) for r in records] == [False, False]
    assert sf.info(records[0]["output"]).frames == 100 and sf.info(records[1]["output"]).frames == 8000


def test_an_empty_input_folder_is_an_error_not_a_silent_success(tmp_path, speech_model, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["enhance", "--model", str(speech_model), "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 2
    assert "holds no audio files" in capsys.readouterr().err


def test_float_input_above_full_scale_is_not_clipped(tmp_path, speech_model, capsys):
    from adaptive_exit.runtime.runner import EarlyExitRunner
    from adaptive_exit.speech.audio import save_audio
    from adaptive_exit.speech.domain import load_speech_model
    from adaptive_exit.speech.enhance import enhance_waveform

    loud = speech_like() * 6.0  # peaks near 2.0
    write_wav(tmp_path / "in" / "loud.wav", loud, subtype="FLOAT")
    assert main(["enhance", "--model", str(speech_model), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out"), "--policy", "full"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert sf.info(record["output"]).subtype == "FLOAT" and "warning" not in record
    expected, _ = enhance_waveform(EarlyExitRunner(load_speech_model(speech_model)[0], "full"), loud)
    np.testing.assert_allclose(sf.read(record["output"], dtype="float32")[0], expected, atol=1e-6)  # written as computed
    # integer formats clip, and say how much
    assert save_audio(tmp_path / "f.wav", loud, 16000, "FLOAT") == 0 and np.abs(sf.read(tmp_path / "f.wav")[0]).max() > 1.5
    assert save_audio(tmp_path / "p.wav", loud, 16000, "PCM_16") == int(np.count_nonzero(np.abs(loud) > 1))


def test_outputs_follow_the_umask(tmp_path, toy_run):
    old = os.umask(0o022)
    try:
        assert main(["sweep", str(DEMO), f"run_dir={toy_run}", "-q"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(toy_run / "results.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(toy_run / "model").st_mode) in (0o755, 0o700)  # written by the run before
    from adaptive_exit import io

    old = os.umask(0o022)
    try:
        io.write_json(tmp_path / "x.json", {})
        with io.atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "folder").st_mode) == 0o755


def test_evaluate_keeps_the_calibration_in_results(tmp_path, toy_run):
    assert main(["calibrate", str(DEMO), f"run_dir={toy_run}", "--budget", "mean:0.5", "-q"]) == 0
    results = json.loads((toy_run / "results.json").read_text())
    results["calibration"] = json.loads((toy_run / "calibration.json").read_text())
    (toy_run / "results.json").write_text(json.dumps(results))
    assert main(["evaluate", str(DEMO), f"run_dir={toy_run}", *QUICK, "-q"]) == 0
    assert json.loads((toy_run / "results.json").read_text())["calibration"]["budget"] == "mean:0.5"


def test_split_names_cannot_escape_the_run_folder(tmp_path, toy_run, capsys):
    assert main(["calibrate", str(DEMO), f"run_dir={toy_run}", "--budget", "mean:0.5", "calibrate.split=../escape/x"]) == 2
    assert "bad split name" in capsys.readouterr().err
    assert not (toy_run.parent / "escape").exists()

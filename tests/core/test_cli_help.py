"""The command line talks: every command explains itself, --help is instant and light."""
import json
import subprocess
import sys

import pytest

from adaptive_exit.app.cli import CORE_COMMANDS, _command_entry_points, main
from tests.conftest import REPO

COMMANDS = sorted(set(CORE_COMMANDS) | set(_command_entry_points()))


def test_every_installed_command_is_listed():
    assert {"run", "train", "evaluate", "sweep", "calibrate", "budget-sweep", "predict", "enhance", "self-sample",
            "convert"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_has_a_description_and_an_example(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert len(description.split()) >= 6, out  # a sentence, not just the usage line
    assert "examples:" in out and f"adaptive-exit {command}" in out.split("examples:")[1]
    for line in out.split("options:")[1].split("examples:")[0].splitlines():
        if line.strip().startswith("--") and "  " in line.strip():
            assert line.strip().split("  ", 1)[1].strip(), f"option without help: {line}"


def test_top_level_help_is_light_and_lists_domain_commands():
    code = ("import sys; from adaptive_exit.app.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "loaded = sorted(m for m in sys.modules if m.startswith(('adaptive_exit.text', 'adaptive_exit.speech', 'torch', 'transformers')))\n"
            "print('LOADED', loaded)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout  # no domain, no torch: answers in well under a second
    for command in ("predict", "enhance", "self-sample", "convert"):
        assert command in done.stdout


def test_options_and_overrides_after_the_positionals(tmp_path, capsys):
    demo = REPO / "recipes" / "core" / "toy" / "demo.yaml"
    assert main(["train", str(demo), f"run_dir={tmp_path}", "-q", "train.max_steps=5", "--threads", "1",
                 "train.progress=false", "data.train_size=64"]) == 0
    assert "train:\n  max_steps: 5" in (tmp_path / "config.yaml").read_text()


def test_unknown_options_are_rejected_cleanly(capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", str(REPO / "recipes/core/toy/demo.yaml"), "--bogus"])
    assert done.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_bad_policy_measure_names_itself(tmp_path, capsys):
    assert main(["evaluate", str(REPO / "recipes/core/toy/demo.yaml"), f"run_dir={tmp_path}", "eval.policy=entropy:abc"]) == 2
    assert "entropy threshold must be a finite number, got 'abc'" in capsys.readouterr().err


def test_a_benchmark_run_leaves_the_checkout_clean(tmp_path):
    def status() -> str:
        done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            pytest.skip("not a git checkout")
        return done.stdout

    before = status()
    done = subprocess.run([sys.executable, "benchmarks/core_runner.py", "--batch", "8", "--stages", "3", "--hidden", "16",
                           "--tokens", "4", "--repeats", "1", "--threads", "1"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "runs/benchmarks/core_runner.json" in done.stdout  # not the committed benchmarks/results/
    assert status() == before

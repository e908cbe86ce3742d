"""A newcomer's first screen works: every ``adaptive-exit`` command in the README's first 40
lines runs and exits 0 from an empty folder, with no data folder and the hub offline (the
install and test commands around them are what brought us here)."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO


def first_screen_commands() -> list[str]:
    head = "\n".join((REPO / "README.md").read_text().splitlines()[:40])
    blocks = re.findall(r"```bash\n(.*?)```", head, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("adaptive-exit "):
                commands.append(line)
    return commands


@pytest.mark.slow
def test_the_first_screen_runs_from_an_empty_folder(tmp_path):
    commands = first_screen_commands()
    assert len(commands) >= 3 and any(" run " in c for c in commands) and any("enhance" in c for c in commands)
    env = {k: v for k, v in os.environ.items() if k != "ADAPTIVE_EXIT_DATA"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for command in commands:
        argv = shlex.split(command)
        result = subprocess.run([sys.executable, "-m", "adaptive_exit", *argv[1:]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
        if argv[1] == "enhance":
            record = json.loads(result.stdout.strip().splitlines()[-1])
            assert record["stages_used"] >= 1 and 0 < record["compute"] <= 1
    assert (tmp_path / "runs" / "toy-demo" / "results.json").is_file()
    assert sorted(os.listdir(tmp_path / "enhanced")) == ["noisy.wav"]

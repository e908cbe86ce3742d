"""Time what the README's first screen asks a newcomer to run, and the quick test command,
on this machine: each first-screen command from an empty folder (no data, hub offline), then
``python -m pytest -q -m "not slow"`` in the clone. Prints a table; ``--save`` writes
benchmarks/results/readme_times.json (the README quotes it)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _output import add_save_flag, print_table, results_path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.core.test_readme_quickstart import first_screen_commands  # noqa: E402


def timed(argv: list[str], cwd: Path, env: dict) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-tests", action="store_true", help="time the first-screen commands only")
    add_save_flag(parser)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "ADAPTIVE_EXIT_DATA"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for command in first_screen_commands():
            seconds, rc = timed([sys.executable, "-m", "adaptive_exit", *shlex.split(command)[1:]], Path(folder), env)
            rows.append({"command": command, "seconds": round(seconds, 1), "exit_code": rc})
    if not args.skip_tests:
        seconds, rc = timed([sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"], REPO, env)
        rows.append({"command": 'python -m pytest -q -m "not slow"', "seconds": round(seconds, 1), "exit_code": rc})
    print_table(["command", "seconds", "exit code"], [[r["command"], f"{r['seconds']:.1f}", str(r["exit_code"])] for r in rows])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    path = results_path("readme_times.json", args.save)
    path.write_text(json.dumps({"rows": rows, "cpu_count": os.cpu_count(), "load_1min_at_end": load,
                                "machine": platform.machine(), "python": platform.python_version()}, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()

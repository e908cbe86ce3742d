import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """../shared/data or $ADAPTIVE_EXIT_DATA, if present."""
    env = os.environ.get("ADAPTIVE_EXIT_DATA")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture
def data_dir() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("shared data not found (set ADAPTIVE_EXIT_DATA)")
    return found


@pytest.fixture(autouse=True)
def _threads():
    """The suite follows the project's own thread setting: ``ADAPTIVE_EXIT_THREADS`` when
    set, else ``auto`` (the idle cores), so a loaded machine is not oversubscribed."""
    from adaptive_exit.runtime.threads import configure_threads

    configure_threads(os.environ.get("ADAPTIVE_EXIT_THREADS"))
    yield

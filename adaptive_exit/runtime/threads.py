"""Process-wide run-time settings shared by every command: the number of CPU threads.

torch defaults to one thread per physical core. On a shared machine whose cores
are busy that oversubscribes them: a speech training step measured 38 s with
torch's 2 threads against 4 s with 1 thread on a loaded 2-core machine. The
default here (``auto``) therefore takes the cores that are idle now (cores minus
the 1-minute load average, at least 1); ``--threads N``, a recipe's
``runtime.threads`` or ``ADAPTIVE_EXIT_THREADS`` set it explicitly.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)

THREADS_ENV = "ADAPTIVE_EXIT_THREADS"
PROGRESS_ENV = "ADAPTIVE_EXIT_PROGRESS"  # "0": no progress bars (set by -q)
_TORCH_DEFAULT: int | None = None  # torch's own default, read before anything changes it


@dataclass
class RuntimeConfig:
    """The ``runtime:`` section of a recipe."""

    threads: int | str = "auto"  # a number of CPU threads, or "auto"

    def __post_init__(self) -> None:
        parse_threads(self.threads)


def parse_threads(value: int | str | None) -> int | None:
    """``None``/``"auto"`` -> None (decide from the load); a positive integer -> itself."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        threads = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be a positive integer or 'auto', got {value!r}") from None
    if isinstance(value, bool) or threads < 1 or str(threads) != str(value).strip():
        raise ValueError(f"threads must be a positive integer or 'auto', got {value!r}")
    return threads


def idle_cores() -> int:
    """Cores not busy right now: cores minus the 1-minute load average (at least 1)."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def configure_threads(requested: int | str | None = None) -> int:
    """Set torch's intra-op threads: ``requested``, else ``$ADAPTIVE_EXIT_THREADS``, else
    the idle cores (at most torch's own default). Returns the number set."""
    import torch

    global _TORCH_DEFAULT
    if _TORCH_DEFAULT is None:
        _TORCH_DEFAULT = torch.get_num_threads()
    threads = parse_threads(requested)
    if threads is None:
        threads = parse_threads(os.environ.get(THREADS_ENV))
    if threads is None:
        threads = min(_TORCH_DEFAULT, idle_cores())
        logger.debug("threads: %d (auto: %d cores, load %.2f)", threads, os.cpu_count() or 1,
                    os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
    torch.set_num_threads(threads)
    return threads


def progress_enabled() -> bool:
    """Progress bars on stderr, unless ``-q`` (or ``ADAPTIVE_EXIT_PROGRESS=0``) turned them off."""
    return os.environ.get(PROGRESS_ENV, "1") != "0"

"""The project's error type for problems with a user's input, files or settings.

The CLI prints any of these (and ``ValueError``/``OSError``, which validation code
raises) as one line naming what was wrong and where, and exits with code 2;
``-v`` shows the traceback.
"""
from __future__ import annotations


class AdaptiveExitError(ValueError):
    """Bad input, settings or files; the message says what and where."""


class CheckpointError(AdaptiveExitError):
    """A training checkpoint that cannot be used (corrupt, or from other settings)."""


class TrainingDiverged(AdaptiveExitError, FloatingPointError):
    """The training loss became NaN or infinite."""

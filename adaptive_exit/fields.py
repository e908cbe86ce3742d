"""Numeric ranges declared next to each config field.

``bounded(default, ge=0)`` is a ``dataclasses.field`` that carries its allowed range;
:func:`check_ranges` (called by recipe validation for every section, and by
``__post_init__`` of configs built in code) rejects values outside it with the
field's full name. ``None`` is always allowed where the type allows it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        parts = [f"{op} {bound:g}" for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if bound is not None]
        return " and ".join(parts)


def bounded(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, **kwargs: Any) -> Any:
    """A dataclass field whose numeric value must lie in the given range."""
    return dataclasses.field(default=default, metadata={"range": Range(ge, gt, le, lt)}, **kwargs)


def check_ranges(obj: Any, prefix: str = "") -> None:
    """Raise ValueError naming the first field of dataclass ``obj`` outside its range."""
    for f in dataclasses.fields(obj):
        allowed = f.metadata.get("range")
        value = getattr(obj, f.name)
        if allowed is None or value is None or isinstance(value, (bool, str)):
            continue
        if not allowed.contains(value):
            name = f"{prefix}.{f.name}" if prefix else f.name
            raise ValueError(f"{name} must be {allowed}, got {value!r}")

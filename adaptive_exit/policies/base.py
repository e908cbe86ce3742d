"""The policy base class, the registry of policy names, and composition (``a | b``, ``a & b``).

A new policy is one class in one file: subclass :class:`ExitPolicy`, give it a ``name``
and decorate it with :func:`register_policy`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from adaptive_exit.runtime.staged import select_rows

PolicyState = dict[str, Any]


class ExitPolicy:
    """Base class. Subclasses implement ``step`` and ``spec`` (and ``_init`` for state).

    ``name`` (and optional ``aliases``) is what specs call the policy; registered
    classes are built from ``NAME:args`` by :meth:`from_spec`.
    """

    name = "policy"
    aliases: tuple[str, ...] = ()
    composite = False  # AnyOf / AllOf: built from policies, never from NAME:args

    @classmethod
    def from_spec(cls, name: str, args: list, kwargs: dict) -> "ExitPolicy":
        """Build from a parsed spec atom; ``name`` is the alias that was used."""
        return cls(*args, **kwargs)

    def init(self, batch_size: int, stage_costs: Sequence[float], device: torch.device | str = "cpu") -> PolicyState:
        return self._init(batch_size, list(stage_costs), torch.device(device))

    def _init(self, batch_size: int, stage_costs: list[float], device: torch.device) -> PolicyState:
        return {}

    def step(self, k: int, output: Tensor, state: PolicyState) -> Tensor:
        raise NotImplementedError

    def select(self, state: PolicyState, keep: Tensor) -> PolicyState:
        return select_rows(state, keep)

    def spec(self) -> str:
        """The canonical string that :func:`build_policy` turns back into this policy."""
        raise NotImplementedError

    def threshold_values(self, outputs: Tensor) -> Tensor:
        """The values this policy compares with its threshold, for every sample and stage
        of (N, L, ...) recorded outputs (flattened); sweeps take their quantiles so that a
        grid fits any model's own confidence range."""
        raise ValueError(f"policy {self.name!r} has no threshold to take quantiles of")

    def __or__(self, other: "ExitPolicy") -> "AnyOf":
        return AnyOf([self, other])

    def __and__(self, other: "ExitPolicy") -> "AllOf":
        return AllOf([self, other])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r})"

    def __str__(self) -> str:
        return self.spec()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExitPolicy) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(self.spec())


_REGISTRY: dict[str, type[ExitPolicy]] = {}


def register_policy(cls: type[ExitPolicy]) -> type[ExitPolicy]:
    """Class decorator: make ``cls.name`` (and ``cls.aliases``) usable in specs."""
    for key in (cls.name, *cls.aliases):
        key = normal_name(key)
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"policy name {key!r} is already registered by {_REGISTRY[key].__name__}")
        _REGISTRY[key] = cls
    return cls


def known_policies() -> list[str]:
    return sorted(_REGISTRY)


def registered(name: str) -> type[ExitPolicy] | None:
    """The policy class a spec name (or alias) stands for, or None."""
    return _REGISTRY.get(normal_name(name))


def normal_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def number_arg(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return number


def integer_arg(value: Any, what: str, minimum: int, maximum: int = 1_000_000) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise ValueError(f"{what} must be an integer >= {minimum} and <= {maximum:,}, got {shown}")
    return value


class _Composite(ExitPolicy):
    """A policy made of policies. Children step at every stage (so their state stays current); ``combine`` joins
    their decisions and ``symbol`` writes the spec."""

    symbol = ""
    composite = True  # written with | and & in specs, not as NAME:args

    def __init__(self, policies: Sequence[ExitPolicy]):
        if len(policies) < 2:
            raise ValueError("a composition needs at least two policies")
        flat: list[ExitPolicy] = []
        for policy in policies:
            if not isinstance(policy, ExitPolicy):
                raise ValueError(f"a composition takes policies, got {type(policy).__name__}")
            flat.extend(policy.policies if type(policy) is type(self) else [policy])
        self.policies = flat

    @staticmethod
    def combine(a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    def _init(self, batch_size, stage_costs, device):
        return {"children": [p.init(batch_size, stage_costs, device) for p in self.policies]}

    def select(self, state, keep):
        return {"children": [p.select(s, keep) for p, s in zip(self.policies, state["children"])]}

    def step(self, k, output, state):
        decisions = [p.step(k, output, s) for p, s in zip(self.policies, state["children"])]
        done = decisions[0]
        for other in decisions[1:]:
            done = self.combine(done, other)
        return done

    def spec(self):
        parts = [f"({p.spec()})" if isinstance(p, _Composite) else p.spec() for p in self.policies]
        return f" {self.symbol} ".join(parts)


@register_policy
class AnyOf(_Composite):
    """Exit when any child policy says so (``a | b``; dict ``{"type": "any", "policies": [...]}``)."""

    name = "any"
    symbol = "|"
    combine = staticmethod(torch.logical_or)

    def spec(self):
        # '|' binds loosest: its children never need parentheses unless they are '|' too (flattened)
        return " | ".join(p.spec() for p in self.policies)


@register_policy
class AllOf(_Composite):
    """Exit when every child policy says so (``a & b``; dict ``{"type": "all", ...}``)."""

    name = "all"
    symbol = "&"
    combine = staticmethod(torch.logical_and)

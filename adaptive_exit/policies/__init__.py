"""Exit policies: per-sample rules that decide when a sample may stop.

A policy is stateless between batches. For each batch it creates a per-sample
state with ``init``; ``step(k, output, state)`` updates the state with stage k's
exit output and returns a boolean mask of the rows that may exit now. The runner
drops exited rows from the batch and calls ``select`` to keep the policy state
aligned. Every decision is a function of one sample's own outputs, which is why
a replay over recorded traces gives exactly the runner's decisions.

The last stage always exits; the runner enforces that, not the policies.

Policies are parsed once, from a spec string or a dict, by :func:`build_policy`,
and written back by ``policy.spec()``, a canonical string that
``build_policy`` turns into an equal policy (files store it). Grammar::

    policy := term ('|' term)*          either says stop
    term   := factor ('&' factor)*      both say stop ('&' binds tighter)
    factor := '(' policy ')' | NAME [':' args]
    args   := arg (',' arg)*,  arg := VALUE | KEY '=' VALUE

A new policy is one class in one file: subclass :class:`ExitPolicy`, give it a
``name`` and decorate it with :func:`register_policy`.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import torch
import yaml
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
        key = _normal_name(key)
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"policy name {key!r} is already registered by {_REGISTRY[key].__name__}")
        _REGISTRY[key] = cls
    return cls


def known_policies() -> list[str]:
    return sorted(_REGISTRY)


def _normal_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return number


def _integer(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


# --------------------------------------------------------------------------- distances

def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).double()


def abs_distance(prev: Tensor, cur: Tensor) -> Tensor:
    """Largest absolute change of any element (PABEE's regression rule for a scalar)."""
    return (_flat(cur) - _flat(prev)).abs().amax(dim=1)


def l2_distance(prev: Tensor, cur: Tensor) -> Tensor:
    return (_flat(cur) - _flat(prev)).norm(dim=1)


def relative_distance(prev: Tensor, cur: Tensor) -> Tensor:
    """||cur - prev||^2 / ||prev||^2: the spectral distance of progressive enhancement.

    Zero-padded positions add nothing to either sum, so padding cannot leak into
    the decision. A silent previous estimate gives +inf (never "converged").
    """
    num = (_flat(cur) - _flat(prev)).pow(2).sum(dim=1)
    den = _flat(prev).pow(2).sum(dim=1)
    out = num / den
    return torch.where(den > 0, out, torch.where(num > 0, torch.full_like(out, math.inf), torch.zeros_like(out)))


DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "abs": abs_distance,
    "l2": l2_distance,
    "relative": relative_distance,
}


def entropy(logits: Tensor, normalized: bool = False) -> Tensor:
    """Entropy in nats of softmax(logits) over the last dimension (float64);
    ``normalized`` divides by log(num_classes), giving a value in [0, 1]."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    value = -(logp.exp() * logp).sum(dim=-1)
    return value / math.log(logits.shape[-1]) if normalized else value


# --------------------------------------------------------------------------- policies

@register_policy
class Patience(ExitPolicy):
    """PABEE's patience rule.

    A counter per sample: +1 when stage k's prediction equals stage k-1's, reset
    to 0 otherwise; exit when the counter reaches ``patience``. ``patience=0``
    never exits early. Predictions are the argmax over the last dimension (all
    positions must agree for token outputs). With a ``threshold``, "unchanged"
    means ``distance(prev, cur) < threshold`` instead, for regression values and
    signals (``distance``: abs, l2 or relative).
    """

    name = "patience"

    def __init__(self, patience: int, threshold: float | None = None, distance: str | None = None):
        patience = _integer(patience, "patience", 0)
        if distance is not None and threshold is None:
            raise ValueError("patience: a distance needs a threshold (e.g. 'patience:2,threshold=0.05,distance=relative')")
        if threshold is not None:
            threshold = _number(threshold, "patience threshold")
            if not threshold >= 0:
                raise ValueError(f"patience threshold must be >= 0, got {threshold!r}")
            distance = distance or "abs"
            if distance not in DISTANCES:
                raise ValueError(f"unknown distance {distance!r}; known: {sorted(DISTANCES)}")
        self.patience = patience
        self.threshold = threshold
        self.distance = distance

    def _init(self, batch_size, stage_costs, device):
        return {"counter": torch.zeros(batch_size, dtype=torch.long, device=device), "prev": None}

    def _unchanged(self, prev: Tensor, output: Tensor) -> Tensor:
        if self.threshold is None:
            return (prev.argmax(-1) == output.argmax(-1)).reshape(output.shape[0], -1).all(dim=1)
        return DISTANCES[self.distance](prev, output) < self.threshold

    def step(self, k, output, state):
        prev = state["prev"]
        if prev is not None:
            unchanged = self._unchanged(prev, output)
            state["counter"] = torch.where(unchanged, state["counter"] + 1, torch.zeros_like(state["counter"]))
        state["prev"] = output
        if self.patience == 0:
            return torch.zeros(output.shape[0], dtype=torch.bool, device=output.device)
        return state["counter"] >= self.patience

    def threshold_values(self, outputs):
        if self.threshold is None:
            raise ValueError("plain patience has no threshold; quantiles need patience:P,threshold={},distance=...")
        return torch.cat([DISTANCES[self.distance](outputs[:, k], outputs[:, k + 1]) for k in range(outputs.shape[1] - 1)])

    def spec(self):
        if self.threshold is None:
            return f"patience:{self.patience}"
        return f"patience:{self.patience},threshold={self.threshold:g},distance={self.distance}"


CONFIDENCE_MEASURES = ("max_prob", "entropy", "normalized_entropy")


@register_policy
class Confidence(ExitPolicy):
    """Exit when the prediction is confident enough (DeeBERT, FastBERT).

    ``max_prob``: exit when max softmax probability >= threshold.
    ``entropy``: exit when the entropy (nats) <= threshold.
    ``normalized_entropy``: entropy / log(num_classes) <= threshold.
    For outputs with positions (tokens), the least confident position decides.
    Specs: ``max_prob:0.9``, ``entropy:0.3``, ``normalized_entropy:0.2``.
    """

    name = "confidence"
    aliases = CONFIDENCE_MEASURES

    @classmethod
    def from_spec(cls, name, args, kwargs):
        if name in CONFIDENCE_MEASURES:
            if "measure" in kwargs:
                raise ValueError(f"{name!r} names its measure already; drop measure=")
            kwargs = {**kwargs, "measure": name}
        return cls(*args, **kwargs)

    def __init__(self, threshold: float, measure: str = "max_prob"):
        if measure not in CONFIDENCE_MEASURES:
            raise ValueError(f"unknown confidence measure {measure!r}; known: {list(CONFIDENCE_MEASURES)}")
        threshold = _number(threshold, f"{measure} threshold")
        if threshold < 0:
            raise ValueError(f"{measure} threshold must be a finite number >= 0, got {threshold!r}")
        if measure == "max_prob" and threshold > 1:
            raise ValueError(f"max_prob threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        self.measure = measure

    def score(self, output: Tensor) -> Tensor:
        """(B,) the measure of each sample (the least confident position for tokens)."""
        batch = output.shape[0]
        if self.measure == "max_prob":
            return torch.softmax(output.double(), dim=-1).amax(dim=-1).reshape(batch, -1).amin(dim=1)
        return entropy(output, normalized=self.measure == "normalized_entropy").reshape(batch, -1).amax(dim=1)

    def step(self, k, output, state):
        if output.shape[-1] < 2:
            raise ValueError("confidence policies need class logits (last dimension >= 2); use patience with a threshold for regression")
        score = self.score(output)
        return score >= self.threshold if self.measure == "max_prob" else score <= self.threshold

    def threshold_values(self, outputs):
        return torch.cat([self.score(outputs[:, k]) for k in range(max(1, outputs.shape[1] - 1))])  # the last stage exits anyway

    def spec(self):
        return f"{self.measure}:{self.threshold:g}"


@register_policy
class Budget(ExitPolicy):
    """A hard cap: exit once ``max_stages`` stages ran, or before the next stage
    would push the cumulative cost past ``max_cost`` (model cost units) or past
    ``max_fraction`` of the full model's cost. The first stage always runs."""

    name = "budget"

    def __init__(self, max_stages: int | None = None, max_cost: float | None = None, max_fraction: float | None = None):
        if max_stages is None and max_cost is None and max_fraction is None:
            raise ValueError("budget needs max_stages, max_cost or max_fraction")
        if max_stages is not None:
            max_stages = _integer(max_stages, "budget max_stages", 1)
        for label, value in (("max_cost", max_cost), ("max_fraction", max_fraction)):
            if value is not None and not _number(value, f"budget {label}") > 0:
                raise ValueError(f"budget {label} must be > 0, got {value!r}")
        self.max_stages = max_stages
        self.max_cost = None if max_cost is None else float(max_cost)
        self.max_fraction = None if max_fraction is None else float(max_fraction)

    def last_stage(self, stage_costs: Sequence[float]) -> int:
        """Index of the last stage this budget lets a sample run."""
        num = len(stage_costs)
        last = num - 1 if self.max_stages is None else min(num, self.max_stages) - 1
        limits = []
        if self.max_cost is not None:
            limits.append(self.max_cost)
        if self.max_fraction is not None:
            limits.append(self.max_fraction * sum(stage_costs))
        for limit in limits:
            cumulative = 0.0
            for k, cost in enumerate(stage_costs):
                cumulative += cost
                if k > 0 and cumulative > limit * (1 + 1e-9):
                    last = min(last, k - 1)
                    break
        return last

    def _init(self, batch_size, stage_costs, device):
        return {"last": self.last_stage(stage_costs)}

    def step(self, k, output, state):
        return torch.full((output.shape[0],), k >= state["last"], dtype=torch.bool, device=output.device)

    def spec(self):
        parts = []
        if self.max_stages is not None:
            parts.append(f"max_stages={self.max_stages}")
        if self.max_cost is not None:
            parts.append(f"max_cost={self.max_cost:g}")
        if self.max_fraction is not None:
            parts.append(f"max_fraction={self.max_fraction:g}")
        return "budget:" + ",".join(parts)


@register_policy
class Never(ExitPolicy):
    """Never exit early: the full model."""

    name = "full"
    aliases = ("never", "none")

    def step(self, k, output, state):
        return torch.zeros(output.shape[0], dtype=torch.bool, device=output.device)

    def spec(self):
        return "full"


@register_policy
class Oracle(ExitPolicy):
    """Exit at the earliest stage whose output is right (evaluation only).

    ``targets`` are the batch's targets in its original row order. For class
    logits "right" means argmax == target; with ``tolerance`` it means
    ``|output - target| <= tolerance`` for every element (regression).
    It cannot be written in a spec: it needs the targets.
    """

    name = "oracle"

    @classmethod
    def from_spec(cls, name, args, kwargs):
        raise ValueError("the oracle needs targets: build Oracle(targets) in code (evaluation only)")

    def __init__(self, targets: Tensor, tolerance: float | None = None):
        self.targets = torch.as_tensor(targets)
        self.tolerance = tolerance

    def _init(self, batch_size, stage_costs, device):
        if self.targets.shape[0] != batch_size:
            raise ValueError(f"oracle has {self.targets.shape[0]} targets for a batch of {batch_size}")
        return {"targets": self.targets.to(device)}

    def step(self, k, output, state):
        targets = state["targets"]
        if self.tolerance is None:
            right = output.argmax(-1) == targets
        else:
            right = (output.reshape(targets.shape).double() - targets.double()).abs() <= self.tolerance
        return right.reshape(output.shape[0], -1).all(dim=1)

    def spec(self):
        return "oracle" if self.tolerance is None else f"oracle:tolerance={self.tolerance:g}"


class _Composite(ExitPolicy):
    """Children step at every stage (so their state stays current); ``combine`` joins
    their decisions and ``symbol`` writes the spec."""

    symbol = ""

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


# --------------------------------------------------------------------------- parsing

_TOKEN = re.compile(r"\s*(\(|\)|\||&|[^()|&]+)")


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _atom(text: str) -> ExitPolicy:
    text = text.strip()
    if not text:
        raise ValueError("empty policy spec")
    name, _, rest = text.partition(":")
    name = _normal_name(name)
    if name not in _REGISTRY or name in ("any", "all"):
        known = ", ".join(n for n in known_policies() if n not in ("any", "all"))
        raise ValueError(f"unknown policy {name!r}; known: {known} (combine with | and &)")
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        if "=" in part:
            key, _, value = part.partition("=")
            kwargs[key.strip()] = _parse_value(value.strip())
        else:
            if kwargs:
                raise ValueError(f"bad arguments in policy spec {text!r}: a positional value after key=value")
            args.append(_parse_value(part))
    try:
        return _REGISTRY[name].from_spec(name, args, kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments in policy spec {text!r}: {exc}") from None


class _Parser:
    """Recursive descent over the grammar in the module docstring."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = [t.strip() for t in _TOKEN.findall(text) if t.strip()]
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ValueError(f"policy spec {self.text!r} ends too early")
        self.pos += 1
        return token

    def parse(self) -> ExitPolicy:
        if not self.tokens:
            raise ValueError("empty policy spec")
        policy = self.either()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek()!r} in policy spec {self.text!r}")
        return policy

    def either(self) -> ExitPolicy:
        return self._joined("|", self.both, AnyOf)

    def both(self) -> ExitPolicy:
        return self._joined("&", self.factor, AllOf)

    def _joined(self, symbol: str, operand: Callable[[], ExitPolicy], combine: type) -> ExitPolicy:
        parts = [operand()]
        while self.peek() == symbol:
            self.take()
            parts.append(operand())
        return parts[0] if len(parts) == 1 else combine(parts)

    def factor(self) -> ExitPolicy:
        token = self.take()
        if token == "(":
            inner = self.either()
            if self.take() != ")":
                raise ValueError(f"missing ')' in policy spec {self.text!r}")
            return inner
        if token in (")", "|", "&"):
            raise ValueError(f"unexpected {token!r} in policy spec {self.text!r}")
        return _atom(token)


def _from_dict(spec: dict) -> ExitPolicy:
    spec = dict(spec)
    kind = _normal_name(str(spec.pop("type", "")))
    if not kind:
        raise ValueError(f"policy dict needs a 'type' key, got {spec!r}")
    if kind in ("any", "all"):
        children = spec.pop("policies", None)
        if not isinstance(children, list):
            raise ValueError(f"policy {kind!r} needs a list under 'policies'")
        if spec:
            raise ValueError(f"unknown keys for policy {kind!r}: {sorted(spec)}")
        return _REGISTRY[kind]([build_policy(child) for child in children])
    if kind not in _REGISTRY:
        raise ValueError(f"unknown policy {kind!r}; known: {', '.join(known_policies())}")
    try:
        return _REGISTRY[kind].from_spec(kind, [], spec)
    except TypeError as exc:
        raise ValueError(f"bad keys for policy {kind!r}: {exc}") from None


def build_policy(spec: str | dict | ExitPolicy) -> ExitPolicy:
    """Parse a spec string or dict into an :class:`ExitPolicy` (a policy is returned as is).

    Strings: ``"patience:2"``, ``"patience:2,threshold=0.05,distance=relative"``,
    ``"max_prob:0.9"``, ``"entropy:0.3"``, ``"normalized_entropy:0.2"``,
    ``"budget:4"``, ``"budget:max_fraction=0.5"``, ``"full"``; combine with ``|``
    (either), ``&`` (both; binds tighter) and parentheses.
    Dicts: ``{"type": "confidence", "measure": "entropy", "threshold": 0.3}``,
    ``{"type": "any", "policies": [...]}``.
    Errors are ``ValueError`` with a one-line message.
    """
    if isinstance(spec, ExitPolicy):
        return spec
    if isinstance(spec, dict):
        return _from_dict(spec)
    if not isinstance(spec, str):
        raise ValueError(f"a policy spec must be a string or dict, got {type(spec).__name__}")
    return _Parser(spec).parse()

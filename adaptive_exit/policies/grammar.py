"""Policies are parsed once, from a spec string or a dict, by :func:`build_policy`,
and written back by ``policy.spec()``, a canonical string that
``build_policy`` turns into an equal policy (files store it). Grammar::

    policy := term ('|' term)*          either says stop
    term   := factor ('&' factor)*      both say stop ('&' binds tighter)
    factor := '(' policy ')' | NAME [':' args]
    args   := arg (',' arg)*,  arg := VALUE | KEY '=' VALUE
"""
from __future__ import annotations

import re
from typing import Any, Callable

import yaml

from .base import AllOf, AnyOf, ExitPolicy, known_policies, normal_name, registered


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
    name = normal_name(name)
    cls = registered(name)
    if cls is None or cls.composite:
        known = ", ".join(n for n in known_policies() if not registered(n).composite)
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
        return cls.from_spec(name, args, kwargs)
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
    kind = normal_name(str(spec.pop("type", "")))
    if not kind:
        raise ValueError(f"policy dict needs a 'type' key, got {spec!r}")
    cls = registered(kind)
    if cls is not None and cls.composite:
        children = spec.pop("policies", None)
        if not isinstance(children, list):
            raise ValueError(f"policy {kind!r} needs a list under 'policies'")
        if spec:
            raise ValueError(f"unknown keys for policy {kind!r}: {sorted(spec)}")
        return cls([build_policy(child) for child in children])
    if cls is None:
        raise ValueError(f"unknown policy {kind!r}; known: {', '.join(known_policies())}")
    try:
        return cls.from_spec(kind, [], spec)
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

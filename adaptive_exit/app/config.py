"""YAML recipes: load, apply ``a.b=value`` overrides, validate against dataclasses.

Unknown keys are errors that name the full key path (``train.lr_rate``), and
values are type-checked against the dataclass field types.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import difflib
import importlib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

import yaml

from adaptive_exit.errors import AdaptiveExitError
from adaptive_exit.fields import bounded, check_ranges
from adaptive_exit.limits import limit
from adaptive_exit.runtime.threads import RuntimeConfig
from adaptive_exit.training import TrainConfig


class ConfigError(AdaptiveExitError):
    """A recipe or override is wrong; the message names the key and the file."""


@dataclass
class EvalConfig:
    """The ``eval:`` section: traces, sweeps and the timed default policy."""

    split: str = "dev"
    batch_size: int = bounded(64, ge=1)
    metrics: list = field(default_factory=lambda: ["accuracy"])
    policy: Any = "patience:2"
    sweeps: dict = field(default_factory=dict)
    timing_batch_size: int = bounded(32, ge=1)
    timing_repeats: int = bounded(3, ge=1)
    timing_samples: int | None = bounded(None, ge=1)  # time on the first N samples only (long inputs); None: all


@dataclass
class CalibrateConfig:
    """The ``calibrate:`` section: a budget and the candidate policies."""

    budget: Any = None
    split: str = "dev"
    heldout_fraction: float = bounded(0.5, gt=0, lt=1)
    candidates: dict = field(default_factory=dict)
    levels: list = field(default_factory=list)  # more budgets calibrated into the model's budget table (run-time switching)
    confidence: float = bounded(0.9, gt=0, lt=1)  # of drop: budgets (risk-controlled calibration)
    learn_from: str | None = None  # a split kept out of evaluation (e.g. train_rest): fit a learned exit on it


@dataclass
class Recipe:
    domain: str
    run_dir: str = "runs/default"
    seed: int = bounded(0, ge=0)
    plugins: list = field(default_factory=list)  # modules imported first: your own policies, budget kinds, metrics
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# --------------------------------------------------------------------------- loading

def quoted(value: Any) -> str:
    """``repr(value)``, cut to the ``recipe_value_chars`` limit (errors never echo a huge value)."""
    cap = int(limit("recipe_value_chars"))
    text = repr(value)
    return text if len(text) <= cap else f"{text[:cap]}... ({len(text):,} characters)"


def expanded_size(node: yaml.Node, memo: dict[int, int] | None = None) -> int:
    """How many values a YAML node stands for once aliases are expanded, counted on the node
    graph without expanding it (so a billion-leaf alias bomb is measured in microseconds)."""
    memo = {} if memo is None else memo
    if id(node) in memo:
        return memo[id(node)]
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(expanded_size(k, memo) + expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size
    return size


def bounded_yaml(text: str, where: str) -> Any:
    """Safe YAML within the recipe limits: at most ``recipe_nodes`` values after aliases are
    expanded, duplicate keys refused."""
    loader = UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size, cap = expanded_size(node), int(limit("recipe_nodes"))
        if size > cap:
            raise ConfigError(f"{where} holds {size:,} values once its YAML aliases are expanded, over the limit of "
                              f"{cap:,} (limit recipe_nodes)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike) -> dict:
    """A recipe file (or a shipped recipe's name) as a dict, within the recipe limits."""
    from adaptive_exit.app.recipes import resolve_recipe

    try:
        path = resolve_recipe(path)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    size, cap = path.stat().st_size, int(limit("recipe_bytes"))
    if size > cap:
        raise ConfigError(f"{path}: {size:,} bytes, over the {cap:,}-byte limit for recipes (limit recipe_bytes)")
    try:
        data = bounded_yaml(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())[:500]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping at the top level, got {type(data).__name__}")
    return data


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader (no code, no Python objects) that rejects a key given twice in
    one mapping: YAML silently keeps the last, which hides typos in recipes."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {quoted(key)} (first at line {seen[key].start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set ``a.b.c=value`` entries (value parsed as YAML) on a nested dict copy."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {quoted(item)} must look like key.path=value")
        try:
            value = _numeric(bounded_yaml(text, f"override {key}")) if text.strip() else ""
        except (yaml.YAMLError, RecursionError) as exc:
            raise ConfigError(f"override {quoted(item)}: value is not valid YAML: {' '.join(str(exc).split())[:300]}") from None
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {quoted(item)}: {'.'.join(parts[:depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _numeric(value: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` as a string; read it as the number users mean."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# --------------------------------------------------------------------------- validation

_ORIGINS: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("recipe_origins", default={})


def _where(path: str, source: str) -> str:
    """Where a key's value came from, for error messages: the override that set it (or set a
    section above it), else the recipe file."""
    for key, override in _ORIGINS.get().items():
        if path == key or path.startswith(key + "."):
            return f" in the override {quoted(override)}"
    return f" in {source}" if source else ""


@contextlib.contextmanager
def blaming(recipe: "Recipe") -> Iterator[None]:
    """Errors raised while parsing the recipe's sections name the override that set a value
    (``recipe.overrides``) instead of the file."""
    token = _ORIGINS.set(getattr(recipe, "origins", {}))
    try:
        yield
    finally:
        _ORIGINS.reset(token)


def from_dict(cls: type, data: Any, path: str = "", source: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys (with the nearest valid
    one) and bad types."""
    where = _where(path, source) if path else (f" in {source}" if source else "")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'recipe'}{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"unknown key '{full}'{_where(full, source)}; {hint}valid keys here: {', '.join(names)}")
    values = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else key
        values[key] = _check(hints[key], value, full, _where(full, source), source)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing key '{(path + '.') if path else ''}{missing[0]}'{where}")
    try:
        obj = cls(**values)
        check_ranges(obj, path)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        if path and message.startswith(f"{path}."):
            raise ConfigError(f"{message}{where}") from None
        raise ConfigError(f"{path or 'recipe'}{where}: {message}") from None
    return obj


def _check(hint: Any, value: Any, path: str, where: str, source: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path, source)
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(option, value, path, where, source)
            except ConfigError:
                continue
        raise ConfigError(f"'{path}'{where} has a bad value {quoted(value)}; expected {hint}")
    base = origin or hint
    if base is float and isinstance(value, str):
        value = _numeric(value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"'{path}'{where} must be a finite number, got {quoted(value)}")
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"'{path}'{where} must be true or false, got {quoted(value)}")
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"'{path}'{where} must be an integer, got {quoted(value)}")
    if isinstance(base, type) and not isinstance(value, base):
        raise ConfigError(f"'{path}'{where} must be {base.__name__}, got {type(value).__name__} {quoted(value)}")
    return value


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> tuple[Recipe, dict]:
    """Load, override and validate a recipe. Returns (Recipe, resolved dict)."""
    from adaptive_exit.app.recipes import resolve_recipe

    data = load_yaml(path)
    return recipe_from_dict(data, overrides, str(resolve_recipe(path)))


def recipe_from_dict(data: dict, overrides: list[str] | None = None, source: str = "") -> tuple[Recipe, dict]:
    """Override and validate a recipe given as a dict (e.g. built by a command). Errors in a
    value an override set name the override, not the file."""
    data = apply_overrides(data, overrides or [])
    origins = {item.partition("=")[0].strip(): item for item in overrides or [] if "=" in item}
    import_plugins(data.get("plugins"), source)
    token = _ORIGINS.set(origins)
    try:
        recipe = from_dict(Recipe, data, source=source)
    finally:
        _ORIGINS.reset(token)
    recipe.origins, recipe.source = origins, source
    return recipe, recipe_to_dict(recipe)


def import_plugins(modules: Any, source: str = "") -> None:
    """Import the modules a recipe names under ``plugins:`` (they register policies,
    budget kinds, metrics or domains as they are imported)."""
    where = f" in {source}" if source else ""
    if modules is None:
        return
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError(f"'plugins'{where} must be a list of module names, got {quoted(modules)}")
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of a user's module is a config problem
            raise ConfigError(f"plugins{where}: cannot import {name!r} ({type(exc).__name__}: {exc})") from None


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def save_resolved(recipe: Recipe, run_dir: str | os.PathLike) -> Path:
    from adaptive_exit import io

    path = Path(run_dir) / "config.yaml"
    io.write_text(path, yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    return path

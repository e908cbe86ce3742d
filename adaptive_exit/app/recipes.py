"""Shipped recipes by name, from any folder: ``recipes/<domain>/<dataset>/<name>.yaml`` in the
source tree is the package ``adaptive_exit.recipes`` once installed.

A recipe's name is ``<dataset>-<file>`` (``sst2-pabee``, ``voicebank-dprnn``; ``toy-demo``),
or just the dataset when the file is named after it (``quickstart``).
"""
from __future__ import annotations

import difflib
import shutil
from pathlib import Path


def recipes_root() -> Path:
    import adaptive_exit.recipes as package

    return Path(package.__file__).parent


def recipe_name(path: Path) -> str:
    dataset, stem = path.parent.name, path.stem
    return (dataset if stem == dataset else f"{dataset}-{stem}").replace("_", "-")


def shipped_recipes() -> dict[str, Path]:
    """name -> path of every shipped recipe file."""
    return {recipe_name(p): p for p in sorted(recipes_root().rglob("*.yaml"))}


def describe(path: Path) -> str:
    """The first comment line of a recipe (what it does)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.strip("# "):
            return line.lstrip("# ").strip()
    return ""


def resolve_recipe(text: str | Path) -> Path:
    """A recipe file: the path as given when it exists, else the shipped recipe of that
    name; otherwise a one-line error saying where recipes live and the nearest names."""
    path = Path(text)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if str(text) in shipped:
        return shipped[str(text)]
    if path.suffix in (".yaml", ".yml") and path.parts[:1] == ("recipes",):  # a path from the source tree's README
        inside = recipes_root().joinpath(*path.parts[1:])
        if inside.is_file():
            return inside
    close = difflib.get_close_matches(str(text), list(shipped), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise FileNotFoundError(f"recipe not found: {text} (give a YAML file, or the name of a shipped recipe{hint} "
                            "`adaptive-exit recipes` lists them)")


def copy_recipe(name: str, destination: str | Path | None = None) -> Path:
    """Copy a shipped recipe out to edit it (default: ./<name>.yaml); never overwrites."""
    source = resolve_recipe(name)
    target = Path(destination) if destination else Path(f"{recipe_name(source)}.yaml")
    if target.is_dir():
        target = target / f"{recipe_name(source)}.yaml"
    if target.exists():
        raise FileExistsError(f"{target} exists; give another destination")
    shutil.copyfile(source, target)
    return target

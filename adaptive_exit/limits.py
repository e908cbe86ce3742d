"""Every bound on what a file, a recipe, a request or an input may make us do, in one place.

Each limit has a name, a default, a unit and an override: the environment variable
``ADAPTIVE_EXIT_LIMIT_<NAME>`` (upper case), e.g. ``ADAPTIVE_EXIT_LIMIT_AUDIO_SECONDS=7200``.
The README's "Guarantees" table is generated from :data:`LIMITS`
(``python -m adaptive_exit.limits`` prints it), so the two cannot drift apart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    name: str
    default: float
    unit: str
    guards: str

    @property
    def env(self) -> str:
        return f"ADAPTIVE_EXIT_LIMIT_{self.name.upper()}"


LIMITS: dict[str, Limit] = {lim.name: lim for lim in (
    Limit("request_bytes_text", 1 << 20, "bytes", "a /predict request body, counted while it streams in"),
    Limit("request_bytes_audio", 20 << 20, "bytes", "an /enhance request body, counted while it streams in"),
    Limit("request_texts", 64, "texts", "texts in one /predict request"),
    Limit("text_chars", 20_000, "characters", "one text: a /predict field or a `predict` input line"),
    Limit("json_depth", 64, "levels", "nesting of any JSON we parse (request bodies, config.json, manifest.json)"),
    Limit("json_file_bytes", 16 << 20, "bytes", "a JSON file read from a model or export folder"),
    Limit("recipe_bytes", 1 << 20, "bytes", "a recipe file"),
    Limit("recipe_nodes", 100_000, "values", "values in a recipe after YAML aliases are expanded (alias bombs)"),
    Limit("recipe_value_chars", 200, "characters", "how much of a bad recipe value an error message quotes"),
    Limit("audio_seconds", 3600, "seconds", "one audio file for `enhance` (CLI); /enhance requests are held to 120 s"),
    Limit("request_audio_seconds", 120, "seconds", "audio in one /enhance request"),
    Limit("sample_rate_min", 4000, "Hz", "lowest sample rate accepted from an audio file's header"),
    Limit("sample_rate_max", 384_000, "Hz", "highest sample rate accepted from an audio file's header"),
    Limit("model_parameters", 2_000_000_000, "parameters", "a model built from a folder's config.json, checked "
                                                           "against its weights file's header before allocation"),
)}


def limit(name: str) -> float:
    """The limit's value: its override from the environment, else its default."""
    lim = LIMITS[name]
    raw = os.environ.get(lim.env)
    if raw is None or not raw.strip():
        return lim.default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{lim.env}={raw!r}: expected a number ({lim.unit})") from None
    if value <= 0:
        raise ValueError(f"{lim.env}={raw!r}: expected a positive number ({lim.unit})")
    return int(value) if float(value).is_integer() else value


def limits_table() -> str:
    """The Markdown table the README's "Guarantees" section shows."""
    rows = ["| limit | default | what it bounds | override |", "|---|---|---|---|"]
    for lim in LIMITS.values():
        default = f"{int(lim.default):,}" if float(lim.default).is_integer() else f"{lim.default:g}"
        rows.append(f"| `{lim.name}` | {default} {lim.unit} | {lim.guards} | `{lim.env}` |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - prints the README table
    print(limits_table())

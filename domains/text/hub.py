"""The one place that loads Hugging Face configs, models and tokenizers.

Every load here passes ``trust_remote_code=False``, so transformers never imports a
``.py`` file from a model folder and never asks "Do you wish to run the custom code?"
on stdin (where ``predict --input -`` reads the user's data). A local folder whose
``config.json`` or ``tokenizer_config.json`` asks for custom code (an ``auto_map`` key,
also inside a saved model's ``backbone``/``classifier`` configs) is refused before
transformers sees it, with one line naming the file and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptive_exit.errors import AdaptiveExitError
from adaptive_exit.io import read_json

#: Files of a model folder that transformers reads ``auto_map`` from.
CODE_KEY_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
CODE_KEYS = ("auto_map",)


class CustomCodeRefused(AdaptiveExitError):
    """A model folder asks to run its own code; adaptive-exit never does."""


def _code_key(config: Any, where: str = "") -> str | None:
    """The dotted key of the first custom-code request in a parsed config, or None."""
    if not isinstance(config, dict):
        return None
    for key in CODE_KEYS:
        if config.get(key):
            return f"{where}{key}"
    for nested in ("backbone", "classifier", "text_config", "encoder", "decoder"):
        found = _code_key(config.get(nested), f"{where}{nested}.")
        if found:
            return found
    return None


def refuse_custom_code(folder: str | Path) -> None:
    """Raise :class:`CustomCodeRefused` when a local model folder asks for its own code."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for name in CODE_KEY_FILES:
        file = folder / name
        if not file.is_file():
            continue
        config = read_json(file)  # bounded size and depth, duplicate keys refused
        key = _code_key(config)
        if key:
            raise CustomCodeRefused(
                f"{file}: key {key!r} asks to run Python code from the model folder; adaptive-exit never runs a "
                "model's own code (use a model of an architecture transformers ships, or remove the key)")


def check_config_dict(config: dict, source: str) -> None:
    """The same refusal for a config held as a dict (a saved model's nested backbone config)."""
    key = _code_key(config)
    if key:
        raise CustomCodeRefused(f"{source}: key {key!r} asks to run Python code; adaptive-exit never runs a model's own code")


def _safe(loader, name_or_path: str | Path, weights: bool = False, **kwargs):
    refuse_custom_code(name_or_path)
    try:
        if weights:  # pickle checkpoints (pytorch_model.bin) are never loaded
            kwargs["use_safetensors"] = True
        return loader.from_pretrained(str(name_or_path), trust_remote_code=False, **kwargs)
    except ValueError as exc:
        if "custom code" in str(exc) or "trust_remote_code" in str(exc):
            raise CustomCodeRefused(f"{name_or_path}: the model asks to run its own Python code; adaptive-exit never "
                                    "runs a model's own code") from None
        raise


def load_config(name_or_path: str | Path, **kwargs):
    from transformers import AutoConfig

    return _safe(AutoConfig, name_or_path, **kwargs)


def load_backbone(name_or_path: str | Path, **kwargs):
    from transformers import AutoModel

    return _safe(AutoModel, name_or_path, weights=True, **kwargs)


def load_sequence_classifier(name_or_path: str | Path, **kwargs):
    from transformers import AutoModelForSequenceClassification

    return _safe(AutoModelForSequenceClassification, name_or_path, weights=True, **kwargs)


def load_tokenizer(name_or_path: str | Path, **kwargs):
    from transformers import AutoTokenizer

    return _safe(AutoTokenizer, name_or_path, **kwargs)


def build_from_config_dict(auto_class_name: str, config: dict, source: str):
    """A randomly initialised ``AutoModel``/``AutoModelForSequenceClassification`` from a
    saved config dict (weights follow from the caller's safetensors), never running code."""
    import transformers
    from transformers import AutoConfig

    check_config_dict(config, source)
    auto_class = getattr(transformers, auto_class_name)
    return auto_class.from_config(AutoConfig.for_model(**config), trust_remote_code=False)


__all__ = ["CustomCodeRefused", "refuse_custom_code", "check_config_dict", "load_config", "load_backbone",
           "load_sequence_classifier", "load_tokenizer", "build_from_config_dict"]

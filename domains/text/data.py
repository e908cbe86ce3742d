"""Text data: any CSV, TSV or JSON Lines file declared in a recipe, the built-in GLUE tasks,
Hugging Face ``datasets`` by name (online), and tokenisation with dynamic padding.

A task is a :class:`TaskSpec`: its kind (classification, regression, token
classification), the columns holding the text, the optional second text of a pair and the
label, and for classification the label names. Built-in tasks (``sst2``, ``stsb``,
``conll2003``) are specs with their folder; any other dataset is declared in the recipe::

    data:
      task: classification            # or regression
      data_dir: ../shared/data/imdb   # files are relative to it
      files: {train: train.tsv, dev: dev.tsv, test: test.tsv}
      text_column: text
      text_pair_column: null          # a second text column for pair tasks
      label_column: label
      column_names: null              # for headerless files: the columns, in order
      label_names: null               # classification: inferred from train (sorted) and saved with the model

Files are read as UTF-8 (a byte-order mark is dropped); TSV is read without quote
processing (GLUE's convention: quotes are text), CSV with standard quoting, JSONL one
object per line. Every error names the file and line.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from .tagging.conll import CONLL2003_TAGS

KINDS = ("classification", "regression", "token-classification")
FORMATS = ("csv", "tsv", "jsonl")


@dataclass(frozen=True)
class TaskSpec:
    """Columns of a table and what a valid label is."""

    text: str
    pair: str | None
    label: str
    kind: str  # "classification", "regression" or "token-classification" (CoNLL files)
    labels: tuple[str, ...] = ()  # label names in id order (classification); empty: inferred from train
    value_range: tuple[float, float] | None = None  # regression targets
    hf_name: tuple[str, ...] | None = None  # (path[, config]) in HF datasets
    folder: str = ""
    files: tuple[tuple[str, str], ...] = ()  # (split, file name); default "<split>.tsv"
    column_names: tuple[str, ...] | None = None  # headerless files
    format: str = "auto"

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.labels)

    def file_for(self, split: str) -> str:
        files = dict(self.files)
        if files and split not in files:
            raise ValueError(f"no file for split {split!r}: data.files names {sorted(files)}")
        return files.get(split, f"{split}.tsv")


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sentence", None, "label", "classification", labels=("0", "1"), hf_name=("glue", "sst2"), folder="glue_sst2"),
    "stsb": TaskSpec("sentence1", "sentence2", "score", "regression", value_range=(0.0, 5.0), hf_name=("glue", "stsb"), folder="glue_stsb"),
    "conll2003": TaskSpec("words", None, "tags", "token-classification", labels=CONLL2003_TAGS, folder="conll2003_en",
                          hf_name=("eriktks/conll2003",)),
}


def table_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        if declared not in FORMATS:
            raise ValueError(f"data.format must be auto, {', '.join(FORMATS)}; got {declared!r}")
        return declared
    suffix = path.suffix.lower().lstrip(".")
    fmt = {"tsv": "tsv", "txt": "tsv", "csv": "csv", "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl"}.get(suffix)
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; set data.format to csv, tsv or jsonl")
    return fmt


def _rows(path: Path, fmt: str, column_names: Sequence[str] | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, {column: value}) for every data row; errors name the line."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}); "
                         "save the file as UTF-8") from None
    del raw
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if fmt == "jsonl":
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                yield number, row
            return
        reader = csv.reader(handle, delimiter="\t" if fmt == "tsv" else ",",
                            quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
        header = list(column_names) if column_names else next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty (expected a header line, or set data.column_names for a headerless file)")
        first = 1 if column_names else 2
        for number, row in enumerate(reader, start=first):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                sep = "tab-separated" if fmt == "tsv" else "comma-separated"
                raise ValueError(f"{path}:{number}: expected {len(header)} {sep} columns, found {len(row)}")
            yield number, dict(zip(header, row))


def read_table(path: str | os.PathLike, task: TaskSpec, require_labels: bool = True) -> list[dict[str, Any]]:
    """Examples ``{"text", "text_pair", "label", "where"}`` from a CSV/TSV/JSONL file.
    Classification labels stay strings (the model's label names map them to ids);
    regression labels are checked numbers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    fmt = table_format(path, task.format)
    needed = [task.text] + ([task.pair] if task.pair else []) + ([task.label] if require_labels else [])
    examples = []
    checked = False
    for number, row in _rows(path, fmt, task.column_names):
        where = f"{path}:{number}"
        if not checked:
            missing = [c for c in needed if c not in row]
            if missing:
                what = "columns" if fmt != "jsonl" else "keys"
                raise ValueError(f"{path}:{1 if fmt != 'jsonl' else number}: {what} {sorted(row)} lack {missing} "
                                 "(set data.text_column / text_pair_column / label_column, or data.column_names)")
            checked = fmt != "jsonl"
        text = _text(row.get(task.text), where, task.text)
        pair = _text(row.get(task.pair), where, task.pair) if task.pair else None
        label = None
        if require_labels or (task.label in row and row[task.label] not in (None, "")):
            label = parse_label(row.get(task.label), task, where)
        examples.append({"text": text, "text_pair": pair, "label": label, "where": where})
    if not examples:
        raise ValueError(f"{path} has no examples")
    return examples


def read_glue_tsv(path: str | os.PathLike, task: TaskSpec, require_labels: bool = True) -> list[dict[str, Any]]:
    """A GLUE-style TSV (quotes are text): :func:`read_table` in TSV format."""
    return read_table(path, replace(task, format="tsv"), require_labels)


def _text(value: Any, where: str, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"{where}: no value in column {column!r}")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{where}: empty text in column {column!r}")
    return text


def parse_label(raw: Any, task: TaskSpec, where: str) -> str | float:
    if raw is None:
        raise ValueError(f"{where}: no label in column {task.label!r}")
    if task.kind == "classification":
        label = str(raw).strip() if not isinstance(raw, bool) else str(raw).lower()
        if isinstance(raw, float) and raw.is_integer():
            label = str(int(raw))
        if task.labels and label not in task.labels:
            raise ValueError(f"{where}: label {label!r} is not one of {list(task.labels)}")
        if not label:
            raise ValueError(f"{where}: empty label")
        return label
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: score {raw!r} is not a number") from None
    low, high = task.value_range or (-math.inf, math.inf)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{where}: score {value} is outside [{low}, {high}]")
    return value


def infer_label_names(examples: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The label values seen in training, sorted (numerically when they are integers)."""
    values = {e["label"] for e in examples if e.get("label") is not None}
    if len(values) < 2:
        raise ValueError(f"classification needs at least two labels in the training data, found {sorted(values)}")
    if all(v.lstrip("-").isdigit() for v in values):
        return tuple(sorted(values, key=int))
    return tuple(sorted(values))


def load_hf_split(task: TaskSpec, split: str) -> list[dict[str, Any]]:
    """Load a split by Hugging Face ``datasets`` name (needs the network or a cache)."""
    try:
        import datasets
    except ImportError as exc:
        raise ValueError("loading by dataset name needs `pip install datasets`") from exc
    if task.hf_name is None:
        raise ValueError(f"this task ({task.kind}, folder {task.folder}) has no Hugging Face dataset name; "
                         "set data.hf_name, or point data.data_dir/data.files at its files")
    hf_split = {"dev": "validation"}.get(split, split)
    name = "/".join(task.hf_name)
    try:
        rows = datasets.load_dataset(*task.hf_name, split=hf_split)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as exc:
        raise FileNotFoundError(f"dataset {name} split {hf_split!r} could not be loaded "
                                f"({' '.join(str(exc).split())[:200]}); offline it must be in the Hugging Face "
                                "cache (HF_DATASETS_OFFLINE=1 uses the cache), or give data.data_dir/data.files") from None
    features = getattr(rows, "features", {}) or {}
    if task.kind == "token-classification":
        return _hf_tagged(rows, features, task, f"{name}[{hf_split}]")
    names = getattr(features.get(task.label), "names", None)
    out = []
    for i, row in enumerate(rows):
        where = f"{'/'.join(task.hf_name)}[{hf_split}][{i}]"
        raw = row[task.label]
        if task.kind == "classification" and names and isinstance(raw, int) and raw >= 0:
            raw = names[raw] if not task.labels or names[raw] in task.labels else str(raw)
        label = None if task.kind == "classification" and raw == -1 else parse_label(raw, task, where)  # GLUE test: -1
        out.append({"text": _text(row[task.text], where, task.text), "where": where, "label": label,
                    "text_pair": _text(row[task.pair], where, task.pair) if task.pair else None})
    return out


def _hf_tagged(rows, features, task: TaskSpec, where: str) -> list[dict[str, Any]]:
    """Word-tagged rows (``tokens`` and ``ner_tags`` as in CoNLL-2003 on the hub) as
    ``{"words", "tags"}`` examples, tag ids mapped through the dataset's own tag names."""
    words_key = "tokens" if "tokens" in features else task.text
    tags_key = "ner_tags" if "ner_tags" in features else task.label
    feature = features.get(tags_key)
    names = getattr(getattr(feature, "feature", None), "names", None)
    out = []
    for i, row in enumerate(rows):
        tags = [names[t] if names else str(t) for t in row[tags_key]]
        if len(tags) != len(row[words_key]):
            raise ValueError(f"{where}[{i}]: {len(row[words_key])} words but {len(tags)} tags")
        if row[words_key]:
            out.append({"words": list(row[words_key]), "tags": tags, "where": f"{where}[{i}]"})
    return out


class TextCollator:
    """Tokenises a list of examples with truncation and pads to the longest in the batch.
    Classification labels (strings) become ids through ``label_names`` (a label outside
    them is an error naming its line); without label names they must be integer ids."""

    def __init__(self, tokenizer, max_length: int, regression: bool = False, label_names: Sequence[str] | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.regression = regression
        self.label_index = {name: i for i, name in enumerate(label_names)} if label_names else None

    def label_id(self, example: dict[str, Any]) -> int | float:
        label = example["label"]
        if self.regression:
            return float(label)
        key = str(label)
        if self.label_index is not None and key in self.label_index:
            return self.label_index[key]
        count = len(self.label_index) if self.label_index is not None else None
        if key.lstrip("-").isdigit() and (count is None or 0 <= int(key) < count):
            return int(key)  # a class id (e.g. 0/1 data for a model whose labels are NEGATIVE/POSITIVE)
        where = example.get("where", "an example")
        raise ValueError(f"{where}: label {key!r} is neither one of the model's labels {list(self.label_index or [])} "
                         "nor a class id")

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        texts = [e["text"] for e in examples]
        pairs = [e["text_pair"] for e in examples] if examples[0].get("text_pair") is not None else None
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding="longest", return_tensors="pt")
        batch = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if examples[0].get("label") is not None:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([self.label_id(e) for e in examples], dtype=dtype)
        return batch

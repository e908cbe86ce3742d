"""Text data: GLUE-style TSV readers, Hugging Face datasets, tokenisation with dynamic padding."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .conll import CONLL2003_TAGS


@dataclass(frozen=True)
class TaskSpec:
    """Columns of a GLUE-style TSV and what a valid label is."""

    text: str
    pair: str | None
    label: str
    kind: str  # "classification", "regression" or "token-classification" (CoNLL files)
    labels: tuple[str, ...] = ()  # allowed label strings (classification)
    value_range: tuple[float, float] | None = None  # regression targets
    hf_name: tuple[str, str] | None = None  # (path, config) in HF datasets
    folder: str = ""

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.labels)


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sentence", None, "label", "classification", labels=("0", "1"), hf_name=("glue", "sst2"), folder="glue_sst2"),
    "stsb": TaskSpec("sentence1", "sentence2", "score", "regression", value_range=(0.0, 5.0), hf_name=("glue", "stsb"), folder="glue_stsb"),
    "conll2003": TaskSpec("words", None, "tags", "token-classification", labels=CONLL2003_TAGS, folder="conll2003_en"),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown text task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]


def read_glue_tsv(path: str | os.PathLike, task: TaskSpec, require_labels: bool = True) -> list[dict[str, Any]]:
    """Read a GLUE TSV (``csv.QUOTE_NONE``: quotes are text), checking the header,
    every row's column count, non-empty text and the label. Errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty (expected a header line)")
        needed = [task.text] + ([task.pair] if task.pair else []) + ([task.label] if require_labels else [])
        missing = [c for c in needed if c not in header]
        if missing:
            raise ValueError(f"{path}:1: header {header} lacks column(s) {missing}")
        index = {name: header.index(name) for name in needed}
        examples = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line_no}: expected {len(header)} tab-separated columns, found {len(row)}")
            example: dict[str, Any] = {"text": row[index[task.text]].strip(), "text_pair": None, "label": None}
            if task.pair:
                example["text_pair"] = row[index[task.pair]].strip()
            if not example["text"] or (task.pair and not example["text_pair"]):
                raise ValueError(f"{path}:{line_no}: empty text")
            if require_labels:
                example["label"] = parse_label(row[index[task.label]], task, f"{path}:{line_no}")
            examples.append(example)
    if not examples:
        raise ValueError(f"{path} has a header but no examples")
    return examples


def parse_label(raw: str, task: TaskSpec, where: str) -> int | float:
    raw = raw.strip()
    if task.kind == "classification":
        if raw not in task.labels:
            raise ValueError(f"{where}: label {raw!r} is not one of {list(task.labels)}")
        return task.labels.index(raw)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{where}: score {raw!r} is not a number") from None
    low, high = task.value_range or (-math.inf, math.inf)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{where}: score {value} is outside [{low}, {high}]")
    return value


def load_hf_split(task: TaskSpec, split: str) -> list[dict[str, Any]]:
    """Load a split by Hugging Face ``datasets`` name (needs the network or a cache)."""
    try:
        import datasets
    except ImportError as exc:
        raise ValueError("loading by dataset name needs `pip install datasets`") from exc
    if task.hf_name is None:
        raise ValueError(f"this task ({task.kind}, folder {task.folder}) has no Hugging Face dataset name; "
                         "set data.hf_dataset: false and point data.data_dir at its files")
    hf_split = {"dev": "validation"}.get(split, split)
    rows = datasets.load_dataset(*task.hf_name, split=hf_split)
    out = []
    for row in rows:
        label = row["label"]
        out.append({"text": row[task.text], "text_pair": row[task.pair] if task.pair else None,
                    "label": float(label) if task.kind == "regression" else int(label)})
    return out


class TextCollator:
    """Tokenises a list of examples with truncation and pads to the longest in the batch."""

    def __init__(self, tokenizer, max_length: int, regression: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.regression = regression

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        texts = [e["text"] for e in examples]
        pairs = [e["text_pair"] for e in examples] if examples[0].get("text_pair") is not None else None
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding="longest", return_tensors="pt")
        batch = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if examples[0].get("label") is not None:
            dtype = torch.float32 if self.regression else torch.long
            batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=dtype)
        return batch

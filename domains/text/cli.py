"""``adaptive-exit predict``: early-exit inference on text, one JSON line per input."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Iterator, TextIO

import torch


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="classify or score text with a saved early-exit model")
    parser.add_argument("--model", required=True, help="a saved model folder (RUN_DIR/model)")
    parser.add_argument("--input", default="-", help="a text file with one input per line ('-' for stdin); "
                        "a tab separates the two sentences of a pair")
    parser.add_argument("--policy", default=None, help="exit policy (default: the model's saved policy)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.set_defaults(func=run)


def _lines(handle: TextIO) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(handle, start=1):
        yield number, line.rstrip("\n").rstrip("\r")


def run(args: argparse.Namespace) -> int:
    from adaptive_exit.runner import EarlyExitRunner

    from .data import TextCollator
    from .domain import load_text_model

    model, default_policy = load_text_model(args.model)
    runner = EarlyExitRunner(model, args.policy or default_policy)
    collate = TextCollator(model.tokenizer, model.config.max_seq_length)
    labels = model.config.label_names
    handle = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
    pending: list[tuple[int, dict]] = []

    def flush() -> None:
        if not pending:
            return
        batch = collate([example for _, example in pending])
        with torch.no_grad():
            result = runner(batch)
        for (number, example), output, stage in zip(pending, result.output, result.exit_stage):
            record = {"line": number, "text": example["text"], "exit_layer": int(stage) + 1, "num_layers": model.num_stages}
            if example["text_pair"] is not None:
                record["text_pair"] = example["text_pair"]
            if model.config.task == "regression":
                record["score"] = float(output[0])
            else:
                probs = torch.softmax(output.double(), -1)
                label = int(probs.argmax())
                record["label"] = labels[label] if labels else label
                record["score"] = float(probs[label])
            print(json.dumps(record), flush=True)
        pending.clear()

    try:
        for number, line in _lines(handle):
            text, _, pair = line.partition("\t")
            if not text.strip() or ("\t" in line and not pair.strip()):
                flush()  # keep output in input order
                print(json.dumps({"line": number, "error": "empty text"}), flush=True)
                continue
            example = {"text": text, "text_pair": pair if "\t" in line else None, "label": None}
            if pending and (pending[0][1]["text_pair"] is None) != (example["text_pair"] is None):
                flush()  # single sentences and pairs are batched separately
            pending.append((number, example))
            if len(pending) >= args.batch_size:
                flush()
        flush()
    finally:
        if handle is not sys.stdin:
            handle.close()
    return 0

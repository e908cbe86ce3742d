"""``adaptive-exit predict``: early-exit inference on text, one JSON line per input."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Iterator, TextIO, Union

import torch


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="classify, score or tag text with a saved early-exit model")
    parser.add_argument("--model", required=True, help="a saved model folder (RUN_DIR/model)")
    parser.add_argument("--input", default="-", help="a text file with one input per line ('-' for stdin); "
                        "a tab separates the two sentences of a pair; taggers split a line into words at whitespace")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--policy", default=None, help="exit policy (default: the model's saved policy)")
    group.add_argument("--budget", default=None, help="a fraction caps every input (0.5); a budget spec (mean:0.4) "
                       "picks the model's calibrated policy for it")
    parser.add_argument("--token-exit", default=None, metavar="THRESHOLD[:WINDOW]",
                        help="taggers only: token-level exit (TOKEE) at this uncertainty threshold and window "
                        "(default window 1) instead of the sentence-level policy")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.set_defaults(func=run)


def parse_token_exit(text: str) -> tuple[float, int]:
    """``"0.1"`` -> (0.1, 1); ``"0.1:2"`` -> (0.1, 2)."""
    threshold, _, window = text.partition(":")
    try:
        parsed = float(threshold), int(window) if window else 1
    except ValueError:
        raise ValueError(f"--token-exit must be THRESHOLD[:WINDOW] (e.g. 0.1:1), got {text!r}") from None
    if parsed[0] < 0 or parsed[1] < 0:
        raise ValueError(f"--token-exit threshold and window must be >= 0, got {text!r}")
    return parsed


def _lines(handle: TextIO) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(handle, start=1):
        yield number, line.rstrip("\n").rstrip("\r")


Job = Union[dict, list]  # an error record, or a batch of (line number, example)


def _jobs(handle: TextIO, batch_size: int) -> Iterator[Job]:
    """Input lines grouped into batches in input order; empty lines become error records."""
    pending: list[tuple[int, dict]] = []
    for number, line in _lines(handle):
        text, _, pair = line.partition("\t")
        if not text.strip() or ("\t" in line and not pair.strip()):
            if pending:
                yield pending  # keep output in input order
                pending = []
            yield {"line": number, "error": "empty text"}
            continue
        example = {"text": text, "text_pair": pair if "\t" in line else None, "label": None}
        if pending and (pending[0][1]["text_pair"] is None) != (example["text_pair"] is None):
            yield pending  # single sentences and pairs are batched separately
            pending = []
        pending.append((number, example))
        if len(pending) >= batch_size:
            yield pending
            pending = []
    if pending:
        yield pending


def run(args: argparse.Namespace) -> int:
    """Stream predictions; under torchrun/accelerate launch the batches are sharded
    across processes and the main process prints every line in input order."""
    from adaptive_exit.budget import policy_for_request
    from adaptive_exit.distributed import map_ordered
    from adaptive_exit.runner import EarlyExitRunner

    from .data import TextCollator
    from .domain import load_text_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, default_policy = load_text_model(args.model)
    runner = EarlyExitRunner(model, policy_for_request(args.model, default_policy, args.policy, args.budget))
    tagger = model.config.task == "token-classification"
    token_exit = parse_token_exit(args.token_exit) if args.token_exit else None
    if token_exit and not tagger:
        raise ValueError(f"--token-exit needs a token-classification model; {args.model} is a {model.config.task} model")
    collate = TextCollator(model.tokenizer, model.config.max_seq_length)
    labels = model.config.label_names

    def predict(job: Job) -> list[dict]:
        if isinstance(job, dict):
            return [job]
        if tagger:
            return tag(model, runner, token_exit, job)
        batch = collate([example for _, example in job])
        with torch.no_grad():
            result = runner(batch)
        records = []
        for (number, example), output, stage in zip(job, result.output, result.exit_stage):
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
            records.append(record)
        return records

    handle = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
    if tagger:  # words, not sentence pairs: a tab is whitespace
        handle = (line.replace("\t", " ") for line in handle)
    try:
        for records in map_ordered(_jobs(handle, args.batch_size), predict):
            for record in records:
                print(json.dumps(record), flush=True)
    finally:
        if handle is not sys.stdin:
            handle.close()
    return 0


def tag(model, runner, token_exit: tuple[float, int] | None, job: list) -> list[dict]:
    """Word tags for a batch of lines with a token-classification model: the whole
    sentence exits under the runner's policy, or each token on its own (TOKEE)."""
    from .conll import TokenCollator, tags_from_logits
    from .tokee import token_exit as run_token_exit

    names = model.config.label_names
    sentences = [{"words": example["text"].split()} for _, example in job]
    batch = TokenCollator(model.tokenizer, names, model.config.max_seq_length)(sentences)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        if token_exit is None:
            result = runner(inputs)
            logits, layers = result.output, (result.exit_stage + 1)[:, None].expand_as(batch["word_index"])
        else:
            result = run_token_exit(model, inputs, *token_exit)
            logits, layers = result.logits, result.exit_layer
    tags = tags_from_logits(logits, batch["word_index"], batch["num_words"], names)
    records = []
    for i, ((number, _), sentence) in enumerate(zip(job, sentences)):
        exit_layers = [0] * len(sentence["words"])  # 0: cut off by max_seq_length, tagged O
        for position in (batch["word_index"][i] >= 0).nonzero().flatten().tolist():
            exit_layers[int(batch["word_index"][i, position])] = int(layers[i, position])
        records.append({"line": number, "words": sentence["words"], "tags": tags[i], "exit_layers": exit_layers,
                        "num_layers": model.num_stages})
    return records


def register_self_sample(subparsers) -> None:
    parser = subparsers.add_parser("self-sample", help="self-sampling fine-tuning of a tagger for token-level exit (TOKEE)")
    parser.add_argument("--model", required=True, help="a saved token-classification model (RUN_DIR/model); "
                        "its run's config.yaml gives the training data")
    parser.add_argument("--output", required=True, help="a new run folder: OUTPUT/model and OUTPUT/config.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--max-threshold", type=float, default=0.4, help="thresholds are drawn from [0, this]")
    parser.add_argument("--full-fraction", type=float, default=0.0,
                        help="share of batches trained on full-model states (the joint loss), to keep the full model")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run_self_sample)


def run_self_sample(args: argparse.Namespace) -> int:
    """Fine-tune a copy of the model; the output folder is a run folder of its own, so
    ``adaptive-exit evaluate OUTPUT/config.yaml`` and the TOKEE benchmark work on it."""
    from pathlib import Path

    from adaptive_exit import io
    from adaptive_exit.config import from_dict, load_recipe, save_resolved
    from adaptive_exit.domain import get_domain

    from .self_sampling import SelfSamplingConfig, self_sampling_finetune

    model_dir, output = Path(args.model), Path(args.output)
    recipe_path = model_dir.parent / "config.yaml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"no recipe next to the model: {recipe_path} (self-sample needs the run folder's config.yaml)")
    if output.resolve() == model_dir.parent.resolve():
        raise ValueError(f"--output must be a new run folder, not the model's own run {model_dir.parent}")
    cfg = SelfSamplingConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             max_threshold=args.max_threshold, full_fraction=args.full_fraction, seed=args.seed)
    recipe, _ = load_recipe(recipe_path, [f"run_dir={output}"])
    domain = get_domain(recipe.domain)
    data_cfg = from_dict(domain.data_config, recipe.data, "data", str(recipe_path))
    model, policy = domain.load_model(model_dir)
    if model.config.task != "token-classification":
        raise ValueError(f"self-sample needs a token-classification model; {model_dir} is a {model.config.task} model")
    samples = domain.load_split(data_cfg, "train", recipe.seed)
    history = self_sampling_finetune(model, samples, lambda items: domain.collate(model, items), cfg)
    save_resolved(recipe, output)
    io.write_json(output / "self_sampling.json", {"from": str(model_dir), **vars(cfg), "windows": list(cfg.windows),
                                                  "history": history})
    domain.save_model(model, output / "model", policy)
    print(json.dumps({"model": str(output / "model"), "steps": cfg.steps, "final_loss": history[-1]["loss"]}))
    return 0

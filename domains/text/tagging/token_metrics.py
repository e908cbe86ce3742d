"""Entity-level metrics of token-classification outputs, scorable from recorded traces.

Outputs are (N, T, C) tag logits and targets (N, T) tag ids with ``IGNORE`` at
positions that carry no label (special tokens, continuation word pieces, padding),
as ``TokenCollator`` builds them; only labelled positions count. Registered with
the core as ``entity_f1``, ``entity_precision``, ``entity_recall`` and
``token_accuracy`` for the CoNLL-2003 tag set.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from adaptive_exit.evaluation.metrics import Metric, register_metric

from .conll import CONLL2003_TAGS, IGNORE, entity_f1, entity_spans


def _tag_lists(predicted: Tensor, targets: Tensor, tags: Sequence[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tag sequences over each sentence's labelled positions."""
    gold, pred = [], []
    for p_row, t_row in zip(predicted.tolist(), targets.tolist()):
        pairs = [(t, p) for t, p in zip(t_row, p_row) if t != IGNORE]
        gold.append([tags[t] for t, _ in pairs])
        pred.append([tags[p] for _, p in pairs])
    return gold, pred


def entity_scores(outputs: Tensor, targets: Tensor, tags: Sequence[str] = CONLL2003_TAGS) -> dict[str, float]:
    """Entity precision/recall/F1 (seqeval default mode) of (N, T, C) logits."""
    if outputs.dim() != 3 or targets.shape != outputs.shape[:2]:
        raise ValueError(f"entity metrics need (N, T, C) outputs and (N, T) targets, got {tuple(outputs.shape)} "
                         f"and {tuple(targets.shape)}")
    return entity_f1(*_tag_lists(outputs.argmax(-1), targets, tags))


def token_accuracy(outputs: Tensor, targets: Tensor) -> float:
    labelled = targets != IGNORE
    return float((outputs.argmax(-1)[labelled] == targets[labelled]).double().mean())


def token_accuracy_per_sample(outputs: Tensor, targets: Tensor) -> Tensor:
    """(N, L) fraction of each sentence's labelled tokens tagged right at each stage."""
    labelled = (targets != IGNORE).unsqueeze(1)
    correct = (outputs.argmax(-1) == targets.unsqueeze(1)) & labelled
    return correct.sum(-1).double() / labelled.sum(-1).clamp_min(1)


def entity_errors(outputs: Tensor, targets: Tensor, tags: Sequence[str] = CONLL2003_TAGS) -> Tensor:
    """(N, L) minus the number of wrong entities (false positives + misses) of each
    sentence at each stage, from (N, L, T, C) stage outputs: higher is better, 0 is
    perfect. The oracle uses it to pick each sentence's earliest best layer."""
    predicted = outputs.argmax(-1)  # (N, L, T)
    out = torch.zeros(predicted.shape[:2], dtype=torch.float64)
    for i, t_row in enumerate(targets.tolist()):
        keep = [j for j, t in enumerate(t_row) if t != IGNORE]
        gold = set(entity_spans([tags[t_row[j]] for j in keep]))
        for k, p_row in enumerate(predicted[i].tolist()):
            pred = set(entity_spans([tags[p_row[j]] for j in keep]))
            out[i, k] = -len(gold ^ pred)
    return out


def register_conll_metrics() -> None:
    for part in ("f1", "precision", "recall"):
        register_metric(Metric(f"entity_{part}", lambda o, t, part=part: entity_scores(o, t)[part], entity_errors,
                               description=f"entity-level {part} (seqeval, CoNLL-2003 tags)"))
    register_metric(Metric("token_accuracy", token_accuracy, token_accuracy_per_sample,
                           description="share of labelled tokens tagged right", bounds=(0.0, 1.0)))

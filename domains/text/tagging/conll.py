"""CoNLL-format sequence labeling data: reading, word-piece alignment, entity-level F1.

Files hold one token per line with space-separated columns (CoNLL-2003:
``token POS chunk NER``); a blank line ends a sentence and ``-DOCSTART-`` lines
separate documents. The first column is the word and the last the tag, in IOB2.

Word pieces: a word's label goes to its first sub-token; the other sub-tokens,
special tokens and padding get ``IGNORE`` (-100), so they count neither in the loss
nor in the metrics.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

IGNORE = -100
CONLL2003_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
_TAG = re.compile(r"^(O|[BI]-\S+)$")


def read_conll(path: str | os.PathLike, tags: Sequence[str] | None = CONLL2003_TAGS) -> list[dict[str, Any]]:
    """Sentences as ``{"words": [...], "tags": [...]}``; errors name the file and line.

    ``tags``: the allowed tag set (None accepts any IOB2 tag).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    allowed = set(tags) if tags is not None else None
    sentences: list[dict[str, Any]] = []
    words: list[str] = []
    labels: list[str] = []

    def close() -> None:
        if words:
            sentences.append({"words": list(words), "tags": list(labels)})
            words.clear()
            labels.clear()

    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                close()
                continue
            columns = line.split()
            if columns[0] == "-DOCSTART-":
                close()
                continue
            if len(columns) < 2:
                raise ValueError(f"{path}:{number}: expected 'word ... tag' columns, got {line!r}")
            tag = columns[-1]
            if not _TAG.match(tag):
                raise ValueError(f"{path}:{number}: tag {tag!r} is not IOB2 (O, B-X or I-X)")
            if allowed is not None and tag not in allowed:
                raise ValueError(f"{path}:{number}: tag {tag!r} is not in the tag set {sorted(allowed)}")
            words.append(columns[0])
            labels.append(tag)
    close()
    if not sentences:
        raise ValueError(f"{path} holds no sentences")
    return sentences


class TokenCollator:
    """Tokenise pre-split words (fast tokenizers only), truncate, align tags to first
    sub-tokens and pad dynamically. Keeps ``word_index`` (B, T): the word each label
    position belongs to, -1 elsewhere, to map predictions back to words; and
    ``first_piece`` (B, T): for every word piece the position of its word's first
    piece, -1 for special tokens and padding (token-level exits let a word's pieces
    share its uncertainty)."""

    def __init__(self, tokenizer, tags: Sequence[str], max_length: int = 128):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("word-piece alignment needs a fast tokenizer (word_ids())")
        self.tokenizer, self.max_length = tokenizer, max_length
        self.tag_to_id = {t: i for i, t in enumerate(tags)}

    def __call__(self, sentences: list[dict[str, Any]]) -> dict[str, Any]:
        if not sentences:
            raise ValueError("cannot collate an empty list of sentences")
        for s in sentences:
            if not s["words"]:
                raise ValueError("a sentence has no words")
        encoded = self.tokenizer([s["words"] for s in sentences], is_split_into_words=True, truncation=True,
                                 max_length=self.max_length, padding=True, return_tensors="pt")
        labels = torch.full(encoded["input_ids"].shape, IGNORE, dtype=torch.long)
        word_index = torch.full(encoded["input_ids"].shape, -1, dtype=torch.long)
        first_piece = torch.full(encoded["input_ids"].shape, -1, dtype=torch.long)
        for i, sentence in enumerate(sentences):
            previous, start = None, -1
            for position, word in enumerate(encoded.word_ids(i)):
                if word is not None and word != previous:
                    start = position
                    word_index[i, position] = word
                    tag = sentence.get("tags")
                    if tag is not None:
                        labels[i, position] = self.tag_to_id[tag[word]]
                if word is not None:
                    first_piece[i, position] = start
                previous = word
        batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                 "labels": labels, "word_index": word_index, "first_piece": first_piece,
                 "num_words": torch.tensor([len(s["words"]) for s in sentences])}
        if "token_type_ids" in encoded:
            batch["token_type_ids"] = encoded["token_type_ids"]
        return batch


def tags_from_logits(logits: torch.Tensor, word_index: torch.Tensor, num_words: torch.Tensor,
                     tags: Sequence[str]) -> list[list[str]]:
    """Per-sentence word tags from (B, T, C) token logits at first sub-tokens. Words cut
    off by truncation get "O" (so entity F1 counts them as missed, not dropped)."""
    predicted = logits.argmax(-1)
    out = []
    for i in range(logits.shape[0]):
        words = ["O"] * int(num_words[i])
        for position in (word_index[i] >= 0).nonzero().flatten().tolist():
            words[int(word_index[i, position])] = tags[int(predicted[i, position])]
        out.append(words)
    return out


def entity_f1(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (exact span and type match, conlleval rules
    as in seqeval's default mode: an I- tag after O or another type starts an entity)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    gold_spans, pred_spans = set(), set()
    for i, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        gold_spans |= {(i, *span) for span in entity_spans(g)}
        pred_spans |= {(i, *span) for span in entity_spans(p)}
    correct = len(gold_spans & pred_spans)
    precision = correct / len(pred_spans) if pred_spans else 0.0
    recall = correct / len(gold_spans) if gold_spans else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start, end exclusive, type) of every entity in an IOB sequence."""
    spans, start, kind = [], None, None
    for position, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and start is not None and label == kind
        if start is not None and not continues:
            spans.append((start, position, kind))
            start, kind = None, None
        if prefix in ("B", "I") and not continues:
            start, kind = position, label
    return spans

"""CoNLL reading, first-sub-token alignment and entity F1 (checked against seqeval)."""
import os
from pathlib import Path

import pytest
import torch

from adaptive_exit.text.tagging.conll import (CONLL2003_TAGS, IGNORE, TokenCollator, entity_f1, entity_spans, read_conll,
                                      tags_from_logits)

from .helpers import tiny_tokenizer

SAMPLE = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
boycott VB I-VP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_read_conll_splits_sentences_and_names_bad_lines(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(SAMPLE)
    sentences = read_conll(path)
    assert sentences == [{"words": ["EU", "rejects", "German", "boycott"], "tags": ["B-ORG", "O", "B-MISC", "O"]},
                         {"words": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]}]
    path.write_text(SAMPLE + "Smith NNP B-NP X-PER\n")
    with pytest.raises(ValueError, match=r"train.txt:10: tag 'X-PER' is not IOB2"):
        read_conll(path)
    path.write_text(SAMPLE + "Paris NNP B-NP B-CITY\n")
    with pytest.raises(ValueError, match="not in the tag set"):
        read_conll(path)
    path.write_text("-DOCSTART- -X- -X- O\n\n")
    with pytest.raises(ValueError, match="no sentences"):
        read_conll(path)
    with pytest.raises(FileNotFoundError):
        read_conll(tmp_path / "missing.txt")


def test_labels_go_to_first_sub_tokens_only(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    collate = TokenCollator(tokenizer, CONLL2003_TAGS, max_length=16)
    # "funplot" is not in the vocabulary: it splits into several pieces or [UNK]
    sentences = [{"words": ["the", "movie", "was", "good"], "tags": ["O", "B-MISC", "O", "O"]},
                 {"words": ["plot"], "tags": ["B-PER"]}]
    batch = collate(sentences)
    for i, sentence in enumerate(sentences):
        labelled = (batch["labels"][i] != IGNORE).nonzero().flatten()
        assert len(labelled) == len(sentence["words"])
        assert [CONLL2003_TAGS[int(batch["labels"][i, p])] for p in labelled] == sentence["tags"]
        assert batch["word_index"][i, labelled].tolist() == list(range(len(sentence["words"])))
    assert bool((batch["labels"][1][batch["attention_mask"][1] == 0] == IGNORE).all())  # padding never labelled
    # predictions map back to words; a truncated word counts as "O"
    logits = torch.zeros(*batch["labels"].shape, len(CONLL2003_TAGS))
    logits.scatter_(2, batch["labels"].clamp_min(0).unsqueeze(-1), 1.0)
    assert tags_from_logits(logits, batch["word_index"], batch["num_words"], CONLL2003_TAGS) == [s["tags"] for s in sentences]
    short = TokenCollator(tokenizer, CONLL2003_TAGS, max_length=4)([sentences[0]])
    assert int((short["labels"] != IGNORE).sum()) == 2  # [CLS] w1 w2 [SEP]
    assert tags_from_logits(torch.zeros(1, 4, 9), short["word_index"], short["num_words"], CONLL2003_TAGS)[0][2:] == ["O", "O"]
    with pytest.raises(ValueError, match="no words"):
        collate([{"words": [], "tags": []}])


def test_entity_f1_matches_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics")
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG", "O"], ["I-MISC", "I-MISC", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-ORG", "I-ORG", "O", "O"], ["B-MISC", "I-MISC", "O"]]
    ours = entity_f1(gold, pred)
    assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, pred))
    assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, pred))
    assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, pred))
    assert entity_spans(["I-PER", "B-PER", "I-LOC", "O"]) == [(0, 1, "PER"), (1, 2, "PER"), (2, 3, "LOC")]
    assert entity_f1([["O"]], [["O"]])["f1"] == 0.0


@pytest.mark.real_data
def test_reads_the_shared_conll2003_split():
    root = Path(os.environ.get("ADAPTIVE_EXIT_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "conll2003_en"
    if not (root / "valid.txt").exists():
        pytest.skip("CoNLL-2003 not available")
    sentences = read_conll(root / "valid.txt")
    assert len(sentences) == 3250 and sum(len(s["words"]) for s in sentences) == 51362

"""The CoNLL task end to end on a tiny encoder: recipe run, traces padded as the runner
pads, entity metrics from traces equal seqeval, word pieces in token-level exits,
and the SENTEE/TOKEE comparison's FLOPs."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertTokenizerFast

from adaptive_exit.app.cli import main
from adaptive_exit.app.config import load_recipe
from adaptive_exit.app.pipeline import Pipeline
from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.text.tagging.conll import CONLL2003_TAGS, IGNORE, TokenCollator, entity_f1, tags_from_logits
from adaptive_exit.text.domain import load_text_model
from adaptive_exit.text.tagging.token_eval import (TokenExitRow, envelope_f1_at, rows_from_json, sentee_f1_at, sentence_flops,
                                           sentence_level_rows, token_level_row)
from adaptive_exit.text.tagging.tokee import token_exit
from adaptive_exit.text.tagging.token_model import EarlyExitForTokenClassification, certain_logits

from .helpers import WORDS, tiny_backbone
from .test_token_model import tiny_tagger

PIECES = ["##s", "##ing"]  # "movies" -> movie ##s: words of several pieces


def piece_tokenizer(folder: Path) -> BertTokenizerFast:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + PIECES
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=str(folder / "vocab.txt"))


def write_conll(path: Path, n: int, seed: int) -> None:
    """Sentences where 'good'/'bad' (+s) are PER/ORG entities and everything else O."""
    gen = torch.Generator().manual_seed(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        for _ in range(int(torch.randint(2, 9, (1,), generator=gen))):
            if torch.rand(1, generator=gen) < 0.4:
                word = ("good", "bad")[int(torch.randint(0, 2, (1,), generator=gen))]
            else:
                word = WORDS[int(torch.randint(0, len(WORDS), (1,), generator=gen))]
            if torch.rand(1, generator=gen) < 0.3:
                word += "s"
            tag = {"good": "B-PER", "goods": "B-PER", "bad": "B-ORG", "bads": "B-ORG"}.get(word, "O")
            lines.append(f"{word} X X {tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def conll_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("conll")
    backbone_dir = root / "backbone"
    tiny_backbone("bert").save_pretrained(backbone_dir)
    piece_tokenizer(backbone_dir).save_pretrained(backbone_dir)
    data = root / "data"
    data.mkdir()
    write_conll(data / "train.txt", 60, seed=0)
    write_conll(data / "valid.txt", 23, seed=1)
    recipe = {"domain": "text", "seed": 0, "run_dir": str(root / "run"),
              "model": {"name_or_path": str(backbone_dir), "max_seq_length": 32},
              "data": {"task": "conll2003", "data_dir": str(data)},
              "train": {"max_steps": 80, "batch_size": 8, "lr": 0.01, "progress": False, "save_every": 80},
              "eval": {"split": "dev", "batch_size": 4, "metrics": ["entity_f1", "token_accuracy"],
                       "policy": "normalized_entropy:0.3", "timing_repeats": 1, "timing_batch_size": 4,
                       "sweeps": {"normalized_entropy": [0.05, 0.3, 0.6], "patience": [1, 2]}}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(root / "recipe.yaml")]) == 0
    return root


def test_recipe_trains_and_reports_entity_f1_per_exit(conll_run):
    report = json.loads((conll_run / "run" / "results.json").read_text())
    assert set(report["full_model"]) == {"entity_f1", "token_accuracy"}
    assert len(report["per_exit"]) == 4
    assert report["full_model"]["entity_f1"] > 0.5  # the toy entities are learnable in 80 steps
    oracle = next(r for r in report["rows"] if r["family"] == "oracle")
    assert oracle["metrics"]["entity_f1"] >= report["full_model"]["entity_f1"]
    # batches of different lengths: the padded trace replays the runner's exits exactly
    assert report["timing"]["matches_trace_replay"] and report["timing"]["modes_agree"]
    model, _ = load_text_model(conll_run / "run" / "model")
    assert isinstance(model, EarlyExitForTokenClassification)


def _recorded(conll_run):
    """The run's pipeline, model, dev trace and dev batches of 4 (as recorded)."""
    recipe, _ = load_recipe(conll_run / "run" / "config.yaml", [f"run_dir={conll_run / 'run'}"])
    pipeline = Pipeline(recipe)
    model, _ = pipeline.load_model()
    return pipeline, model, pipeline.load_trace("dev"), list(pipeline.batches(model, "dev", 4))


def test_trace_padding_is_certain_and_scores_equal_seqeval(conll_run):
    pipeline, model, trace, batches = _recorded(conll_run)
    assert len({b["input_ids"].shape[1] for b in batches}) > 1
    width = trace.outputs.shape[2]
    first = batches[0]
    t = first["input_ids"].shape[1]
    if t < width:  # positions past a batch's own length are certain tag-0 logits, targets IGNORE
        assert torch.equal(trace.outputs[0, :, t:], certain_logits(len(CONLL2003_TAGS), trace.outputs).expand(trace.num_stages, width - t, -1))
        assert bool((trace.targets[:len(first["labels"]), t:] == IGNORE).all())
    # entity F1 of the last exit from the trace == seqeval on the words' tags from the runner
    seqeval = pytest.importorskip("seqeval.metrics")
    gold, pred = [], []
    samples = list(pipeline.domain.load_split(pipeline.data_cfg, "dev", 0))
    runner = EarlyExitRunner(model, "full")
    for batch in batches:
        out = runner(batch).output
        pred += tags_from_logits(out, batch["word_index"], batch["num_words"], CONLL2003_TAGS)
    gold = [s["tags"] for s in samples]
    expected = seqeval.f1_score(gold, pred)
    report = json.loads((conll_run / "run" / "results.json").read_text())
    assert report["full_model"]["entity_f1"] == pytest.approx(expected, abs=1e-12)
    assert entity_f1(gold, pred)["f1"] == pytest.approx(expected, abs=1e-12)


def test_word_pieces_share_their_words_exit_and_special_tokens_never_hold_anyone(tmp_path):
    tokenizer = piece_tokenizer(tmp_path / "tok")
    sentences = [{"words": ["goods", "movies", "plot", "acting"], "tags": ["B-PER", "O", "O", "O"]},
                 {"words": ["bads", "fun"], "tags": ["B-ORG", "O"]}]
    batch = TokenCollator(tokenizer, CONLL2003_TAGS, 32)(sentences)
    assert batch["first_piece"][0].tolist()[:6] == [-1, 1, 1, 3, 3, 5]  # [CLS] good ##s movie ##s plot
    model = tiny_tagger()
    result = token_exit(model, batch, threshold=0.75, window=0)
    first = batch["first_piece"]
    pieces = first >= 0
    shared = result.exit_layer.gather(1, first.clamp_min(0))
    assert torch.equal(result.exit_layer[pieces], shared[pieces])  # window 0: a word halts as one
    special = batch["attention_mask"].bool() & ~pieces
    assert bool((result.exit_layer[special] == 1).all())  # certain by definition: halt at once
    # the sentence-level model scores first pieces only: other positions are certain
    state = model.begin(batch)
    out = model.exit_output(0, model.run_stage(0, state))
    unscored = batch["word_index"] < 0
    assert torch.equal(out[unscored], certain_logits(out.shape[-1], out).expand(int(unscored.sum()), -1))


def test_sentence_and_token_rows_share_one_flops_account(conll_run):
    pipeline, model, trace, batches = _recorded(conll_run)
    sizes = torch.cat([b["attention_mask"].sum(1) for b in batches])
    rows = sentence_level_rows(model, trace, sizes, {"normalized_entropy": [0.3]})
    full = rows[0]
    assert full.family == "full" and full.mean_layers == model.num_stages
    static1 = next(r for r in rows if r.name == "static:1")
    assert static1.flops_speedup == pytest.approx(model.num_stages)
    nothing_exits = token_level_row(model, batches, threshold=0.0, window=1)
    assert nothing_exits.flops == pytest.approx(full.flops) and nothing_exits.full_flops == pytest.approx(full.full_flops)
    assert nothing_exits.f1 == pytest.approx(full.f1, abs=1e-9)
    assert float(sentence_flops(model, sizes, torch.full_like(sizes, model.num_stages)).sum()) == pytest.approx(full.full_flops)
    some = token_level_row(model, batches, threshold=0.5, window=1)
    assert some.flops < full.flops and some.mean_layers < model.num_stages


def test_sentee_f1_is_interpolated_on_its_upper_envelope():
    def row(family, f1, speedup):
        return TokenExitRow("r", family, None, f1, f1, f1, 100.0 / speedup, 100.0, 1.0)

    rows = [row("full", 0.90, 1.0), row("sentee", 0.80, 2.0), row("sentee", 0.70, 1.5), row("sentee", 0.60, 3.0),
            row("tokee", 0.99, 2.5)]
    assert sentee_f1_at(rows, 1.5) == pytest.approx(0.85)  # the dominated 1.5x point is ignored
    assert sentee_f1_at(rows, 2.5) == pytest.approx(0.70)
    assert sentee_f1_at(rows, 0.5) == pytest.approx(0.90)
    assert sentee_f1_at(rows, 3.5) is None
    assert envelope_f1_at(rows, 2.5, ("tokee",)) == pytest.approx(0.99)
    assert rows_from_json([{**r.as_dict(), "sentee_f1_at_same_flops": None} for r in rows]) == rows  # JSON round trip


def test_predict_tags_words_with_sentence_or_token_exits(conll_run, tmp_path, capsys):
    model_dir = str(conll_run / "run" / "model")
    inputs = tmp_path / "in.txt"
    inputs.write_text("the goods movie\n\nbad\tacting is fun\n")
    for extra in ([], ["--token-exit", "0.2:1"]):
        assert main(["predict", "--model", model_dir, "--input", str(inputs), "--batch-size", "2", *extra]) == 0
        lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
        assert [l["line"] for l in lines] == [1, 2, 3]
        assert lines[1] == {"line": 2, "error": "line 2: empty text"}
        assert lines[2]["words"] == ["bad", "acting", "is", "fun"]
        for record in (lines[0], lines[2]):
            assert len(record["tags"]) == len(record["words"]) == len(record["exit_layers"])
            assert set(record["tags"]) <= set(CONLL2003_TAGS)
            assert all(1 <= layer <= record["num_layers"] for layer in record["exit_layers"])
        if not extra:  # sentence-level: every word of a sentence leaves at the same layer
            assert len(set(lines[0]["exit_layers"])) == 1
    assert main(["predict", "--model", model_dir, "--input", str(inputs), "--token-exit", "x"]) == 2
    assert "--token-exit must be" in capsys.readouterr().err


def test_self_sampling_loss_is_the_joint_loss_at_threshold_zero_and_trains_every_layer(tmp_path):
    from adaptive_exit.training.losses import exit_weights, weighted_exit_loss
    from adaptive_exit.runtime.staged import all_exit_outputs
    from adaptive_exit.text.tagging.self_sampling import self_sampling_loss

    tokenizer = piece_tokenizer(tmp_path / "tok")
    sentences = [{"words": ["goods", "movies", "plot"], "tags": ["B-PER", "O", "O"]},
                 {"words": ["bads", "fun", "the", "acting", "was", "boring"], "tags": ["B-ORG", "O", "O", "O", "O", "O"]}]
    batch = TokenCollator(tokenizer, CONLL2003_TAGS, 32)(sentences)
    model = tiny_tagger()  # eval mode: no dropout, so both paths are deterministic
    joint = weighted_exit_loss([model.task_loss(o, batch["labels"]) for o in all_exit_outputs(model, batch)],
                               exit_weights(model.config.exit_weights, model.num_stages))
    at_zero = self_sampling_loss(model, batch, threshold=0.0, window=1).detach()
    assert float(at_zero) == pytest.approx(float(joint.detach()), rel=1e-5)
    layers = token_exit(model, batch, threshold=0.5, window=0).exit_layer[batch["attention_mask"].bool()]
    assert 1 < int(layers.max()) and int(layers.min()) < int(layers.max())  # some tokens halt, some go on
    self_sampling_loss(model, batch, threshold=0.5, window=0).backward()
    for k in range(int(layers.max())):  # every layer that still has active tokens is trained
        grad = model.adapter.layer(k).attention.self.key.weight.grad
        assert grad is not None and float(grad.abs().sum()) > 0
    for k in range(int(layers.max()), model.num_stages):  # layers after the last token halted run nothing
        assert model.adapter.layer(k).intermediate.dense.weight.grad is None or \
            float(model.adapter.layer(k).intermediate.dense.weight.grad.abs().sum()) == 0


def test_self_sample_cli_writes_a_new_run(conll_run, capsys):
    out = conll_run / "ss"
    assert main(["self-sample", "--model", str(conll_run / "run" / "model"), "--output", str(out), "--steps", "3",
                 "--batch-size", "4"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["steps"] == 3 and (out / "model" / "config.json").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["run_dir"] == str(out)
    history = json.loads((out / "self_sampling.json").read_text())["history"]
    assert history[-1]["step"] == 3
    tuned, _ = load_text_model(out / "model")
    original, _ = load_text_model(conll_run / "run" / "model")
    assert not torch.equal(tuned.classifiers[0].weight, original.classifiers[0].weight)
    assert main(["self-sample", "--model", str(conll_run / "run" / "model"), "--output", str(conll_run / "run")]) == 2
    assert "must be a new run folder" in capsys.readouterr().err

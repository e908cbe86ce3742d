"""Decoder-only language models (GPT-2, Llama, Qwen2/3, Mistral, Gemma2, Phi-3) as early-exit
classifiers: layer by layer with their own causal/sliding masks, rotary positions and
grouped-query attention, pooled at the last real token; compaction, left/right padding and
converted classifiers change nothing but depth."""
import pytest
import torch
import transformers

from adaptive_exit.runtime.runner import EarlyExitRunner
from adaptive_exit.runtime.staged import all_exit_outputs
from adaptive_exit.text.modeling import EarlyExitConfig, EarlyExitForSequenceClassification

from .helpers import TINY_DECODERS, random_batch

FAMILIES = sorted(TINY_DECODERS)


def backbone(arch, seed=0):
    torch.manual_seed(seed)
    return transformers.AutoModel.from_config(TINY_DECODERS[arch]()).eval()


def classifier(arch, seed=0, **kwargs):
    base = backbone(arch, seed)
    torch.manual_seed(seed + 1)
    config = EarlyExitConfig(backbone=base.config.to_dict(), num_labels=3, **kwargs)
    model = EarlyExitForSequenceClassification(config, backbone=base).eval()
    with torch.no_grad():  # make exits disagree between layers, so policies exit at different depths
        for head in model.classifiers:
            head.weight.mul_(50)
    return model


def left_padded(batch):
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"].clone()
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        ids[i] = torch.cat([ids[i, n:], ids[i, :n]])
        mask[i] = torch.cat([mask[i, n:], mask[i, :n]])
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_layer_equals_the_models_own_hidden_states(arch):
    reference = backbone(arch)
    model = classifier(arch)
    assert model.adapter.causal and model.config.pooling == "last"
    batch = random_batch(4, 9, seed=1)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        expected = reference(**batch, position_ids=positions, output_hidden_states=True, use_cache=False).hidden_states
        state = model.begin(batch)
        real = batch["attention_mask"].bool()
        for k in range(model.num_stages):
            state = model.run_stage(k, state)
            mine = model.exit_hidden(state) if k == model.num_stages - 1 else state["hidden"]  # + the final norm
            torch.testing.assert_close(mine[real], expected[k + 1][real], rtol=0, atol=0)


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("policy", ["patience:1", "entropy:1.0", "full"])
def test_a_padded_batch_with_compaction_equals_each_sample_alone(arch, policy):
    model = classifier(arch)
    batch = random_batch(6, 10, seed=3)
    batched = EarlyExitRunner(model, policy)(batch)
    for i in range(6):
        n = int(batch["attention_mask"][i].sum())
        single = EarlyExitRunner(model, policy)({k: v[i:i + 1, :n] for k, v in batch.items()})
        assert int(batched.exit_stage[i]) == int(single.exit_stage[0])
        torch.testing.assert_close(batched.output[i], single.output[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", FAMILIES)
def test_left_and_right_padding_give_the_same_answers(arch):
    model = classifier(arch)
    right = random_batch(5, 9, seed=4)
    with torch.no_grad():
        a = torch.stack(all_exit_outputs(model, right), 1)
        b = torch.stack(all_exit_outputs(model, left_padded(right)), 1)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert torch.equal(EarlyExitRunner(model, "patience:1")(right).exit_stage,
                       EarlyExitRunner(model, "patience:1")(left_padded(right)).exit_stage)


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("padding", ["right", "left"])
def test_a_converted_classifier_keeps_its_logits_at_the_last_exit(arch, padding, tmp_path):
    torch.manual_seed(0)
    config = TINY_DECODERS[arch]()
    config.num_labels = 3
    original = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    original.save_pretrained(tmp_path / "cls")
    model = EarlyExitForSequenceClassification.from_classifier(str(tmp_path / "cls")).eval()
    batch = random_batch(5, 9, seed=6)
    if padding == "left":
        batch = left_padded(batch)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        expected = original(**batch, position_ids=positions).logits
        last = all_exit_outputs(model, batch)[-1]
        full = EarlyExitRunner(model, "full")(batch).output
    torch.testing.assert_close(last, expected, rtol=0, atol=0)
    torch.testing.assert_close(full, expected, rtol=0, atol=0)


def test_encoder_decoder_models_stay_refused_with_the_reason():
    bart = transformers.AutoModel.from_config(transformers.BartConfig(
        encoder_layers=1, decoder_layers=1, d_model=16, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=16, decoder_ffn_dim=16, vocab_size=32))
    with pytest.raises(ValueError, match="encoder-decoder"):
        EarlyExitForSequenceClassification(EarlyExitConfig(backbone=bart.config.to_dict()), backbone=bart)


def test_a_converted_decoder_classifier_runs_convert_predict_and_export(tmp_path, capsys):
    """The commands a user runs, on a (tiny) Llama sequence classifier: convert trains the new
    exits, predict answers with exit layers, export runs the folder on onnxruntime."""
    import json

    from adaptive_exit.app.cli import main
    from adaptive_exit.app.domain import load_any_model

    from .helpers import WORDS, tiny_tokenizer

    torch.manual_seed(0)
    config = TINY_DECODERS["llama"]()
    config.num_labels, config.id2label = 2, {0: "neg", 1: "pos"}
    config.label2id = {"neg": 0, "pos": 1}
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "cls")
    tiny_tokenizer(tmp_path / "cls").save_pretrained(tmp_path / "cls")
    gen = torch.Generator().manual_seed(1)
    for split, n in (("train", 48), ("dev", 24)):
        rows = [json.dumps({"text": " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (5,), generator=gen).tolist()),
                            "label": ["neg", "pos"][i % 2]}) for i in range(n)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["convert", "--model", str(tmp_path / "cls"), "--train", str(tmp_path / "train.jsonl"), "--dev",
                 str(tmp_path / "dev.jsonl"), "--output", str(run), "--steps", "6", "--batch-size", "8",
                 "train.progress=false", "eval.timing_repeats=1", "-q"]) == 0
    capsys.readouterr()
    (tmp_path / "in.txt").write_text("a good movie\nbad acting and boring plot\n")
    assert main(["predict", "--model", str(run / "model"), "--input", str(tmp_path / "in.txt"), "--policy", "patience:1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] in ("neg", "pos") for r in records] == [True, True]
    assert main(["export", "--model", str(run / "model"), "--output", str(tmp_path / "onnx")]) == 0
    onnx, _, _ = load_any_model(tmp_path / "onnx")
    model, _, _ = load_any_model(run / "model")
    batch = random_batch(4, 8, seed=2)
    torch.testing.assert_close(EarlyExitRunner(onnx, "full")(batch).output, EarlyExitRunner(model, "full")(batch).output,
                               rtol=0, atol=1e-4)

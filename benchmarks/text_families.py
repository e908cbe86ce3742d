"""Overhead of the layer-by-layer runner at full depth vs each model's own forward.

For every encoder family the runner supports, and every decoder-only family run as a
classifier (GPT-2, Llama, Qwen2, Qwen3, Mistral, Gemma2, Phi-3; no KV cache, positions
counted over real tokens), a randomly initialised model of MiniLM-like size (6 layers,
hidden 384, 12 heads, FFN 1536) runs the same batch
(32 inputs of up to 128 tokens, some padded) two ways:

* ``own``: ``backbone(input_ids, attention_mask).last_hidden_state``;
* ``layerwise``: the runner's capture pass (embeddings and each layer's arguments,
  from the model's own forward with its layers recording), every layer called one by
  one, and the final norm; the last hidden states are checked equal to ``own``.

The two are timed alternately (median of the repeats) so machine load hits both alike.

    python benchmarks/text_families.py [--threads 2] [--repeats 7] [--save]

Prints a table; writes benchmarks/results/text_families.json with --save (else under
runs/benchmarks/).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import results_path, add_save_flag  # noqa: E402

SIZE = dict(hidden_size=384, num_attention_heads=12, intermediate_size=1536, num_hidden_layers=6, vocab_size=1000,
            pad_token_id=0)

FAMILIES = {
    "bert": ("BertConfig", {}),
    "roberta": ("RobertaConfig", {}),
    "xlm-roberta": ("XLMRobertaConfig", {}),
    "camembert": ("CamembertConfig", {}),
    "data2vec-text": ("Data2VecTextConfig", {}),
    "ernie": ("ErnieConfig", {}),
    "megatron-bert": ("MegatronBertConfig", {}),
    "xlm-roberta-xl": ("XLMRobertaXLConfig", {}),
    "electra": ("ElectraConfig", {"embedding_size": 128}),
    "albert": ("AlbertConfig", {"embedding_size": 128, "num_hidden_groups": 1}),
    "distilbert": ("DistilBertConfig", {}),
    "mpnet": ("MPNetConfig", {}),
    "roformer": ("RoFormerConfig", {"embedding_size": 384}),
    "deberta": ("DebertaConfig", {"relative_attention": True, "pos_att_type": ["p2c", "c2p"]}),
    "deberta-v2": ("DebertaV2Config", {"relative_attention": True, "position_buckets": 256, "pos_att_type": ["p2c", "c2p"]}),
    "modernbert": ("ModernBertConfig", {"global_attn_every_n_layers": 3, "local_attention": 64, "bos_token_id": 2,
                                        "eos_token_id": 3, "cls_token_id": 2, "sep_token_id": 3}),
    "gpt2": ("GPT2Config", {}),
    "llama": ("LlamaConfig", {"num_key_value_heads": 4}),
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 4}),
    "qwen3": ("Qwen3Config", {"num_key_value_heads": 4, "head_dim": 32}),
    "mistral": ("MistralConfig", {"num_key_value_heads": 4, "sliding_window": 64}),
    "gemma2": ("Gemma2Config", {"num_key_value_heads": 4, "head_dim": 32, "sliding_window": 64, "query_pre_attn_scalar": 32}),
    "phi3": ("Phi3Config", {"num_key_value_heads": 4}),
}
DECODERS = ("gpt2", "llama", "qwen2", "qwen3", "mistral", "gemma2", "phi3")


def build(family: str):
    name, extra = FAMILIES[family]
    kwargs = dict(SIZE, **extra)
    if family == "distilbert":
        kwargs = dict(vocab_size=1000, dim=384, n_layers=6, n_heads=12, hidden_dim=1536, pad_token_id=0)
    if family == "gpt2":
        kwargs = dict(vocab_size=1000, n_embd=384, n_layer=6, n_head=12, n_inner=1536, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    if family in DECODERS and family != "gpt2":
        kwargs.update(bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return transformers.AutoModel.from_config(getattr(transformers, name)(**kwargs)).eval()


def batch(size: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (size, length), generator=gen)
    mask = torch.ones(size, length, dtype=torch.long)
    for i, n in enumerate(torch.randint(length // 2, length + 1, (size,), generator=gen).tolist()):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    add_save_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from adaptive_exit.text.encoder import LayerwiseEncoder

    inputs = batch(args.batch, args.length)
    real = inputs["attention_mask"].bool()
    rows = []
    for family in args.families:
        model = build(family)
        runner = LayerwiseEncoder(model)

        if runner.causal:  # the runner's decoder inputs: no cache, positions over real tokens
            positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)
            own_inputs = {**inputs, "position_ids": positions, "use_cache": False}
        else:
            own_inputs = inputs

        def own():
            return model(**own_inputs).last_hidden_state

        def layerwise():
            captured = runner.capture(inputs)
            hidden, state = captured.hidden, {"embeddings": captured.hidden, "mask2d": inputs["attention_mask"]}
            for k in range(runner.num_layers):
                hidden = runner.run_layer(k, hidden, captured, state)
            return runner.post(hidden)

        with torch.no_grad():
            same = torch.equal(own()[real], layerwise()[real])
            times = {"own": [], "layerwise": []}
            for _ in range(args.repeats):
                for name, fn in (("own", own), ("layerwise", layerwise)):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        own_s, mine_s = statistics.median(times["own"]), statistics.median(times["layerwise"])
        rows.append({"family": family, "model": type(model).__name__, "own_ms": 1000 * own_s, "layerwise_ms": 1000 * mine_s,
                     "overhead": mine_s / own_s - 1, "equal": same})
        print(f"{family:15s} own {1000 * own_s:8.1f} ms  layerwise {1000 * mine_s:8.1f} ms  "
              f"overhead {100 * (mine_s / own_s - 1):+5.1f}%  equal={same}", flush=True)
    print("\n| family | model | own forward (ms) | layer by layer (ms) | overhead | outputs equal |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['model']} | {r['own_ms']:.1f} | {r['layerwise_ms']:.1f} | {100 * r['overhead']:+.1f}% | {r['equal']} |")
    out = results_path("text_families.json", args.save)
    if out.exists():  # a run over some families keeps the others' rows
        earlier = [r for r in json.loads(out.read_text()).get("rows", []) if r["family"] not in args.families]
        rows = earlier + rows
    out.write_text(json.dumps({"threads": args.threads, "batch": args.batch, "length": args.length, "repeats": args.repeats,
                               "size": SIZE, "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                               "transformers": transformers.__version__, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Tiny random encoders and an offline WordPiece tokenizer for text tests."""
from pathlib import Path

import torch
import transformers

from adaptive_exit.text.modeling import EarlyExitConfig, EarlyExitForSequenceClassification

WORDS = "the a movie film good bad great awful not very is was it and of to plot acting fun boring".split()

_COMMON = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=48, pad_token_id=0)


def _config(name: str, **kwargs):
    return getattr(transformers, name)(**kwargs)


# Tiny random configs of every encoder family the layer-by-layer runner is tested on.
TINY = {
    "bert": lambda: _config("BertConfig", **_COMMON, num_hidden_layers=4),
    "roberta": lambda: _config("RobertaConfig", **_COMMON, num_hidden_layers=3),
    "xlm-roberta": lambda: _config("XLMRobertaConfig", **_COMMON, num_hidden_layers=3),
    "camembert": lambda: _config("CamembertConfig", **_COMMON, num_hidden_layers=3),
    "data2vec-text": lambda: _config("Data2VecTextConfig", **_COMMON, num_hidden_layers=3),
    "ernie": lambda: _config("ErnieConfig", **_COMMON, num_hidden_layers=3),
    "megatron-bert": lambda: _config("MegatronBertConfig", **_COMMON, num_hidden_layers=3),  # pre-LN: a final LayerNorm
    "xlm-roberta-xl": lambda: _config("XLMRobertaXLConfig", **_COMMON, num_hidden_layers=3),  # pre-LN: a final LayerNorm
    "electra": lambda: _config("ElectraConfig", **_COMMON, embedding_size=16, num_hidden_layers=3),
    "albert": lambda: _config("AlbertConfig", **_COMMON, embedding_size=16, num_hidden_layers=4, num_hidden_groups=2),
    "distilbert": lambda: _config("DistilBertConfig", vocab_size=64, dim=32, n_layers=3, n_heads=4, hidden_dim=48, pad_token_id=0),
    "mpnet": lambda: _config("MPNetConfig", **_COMMON, num_hidden_layers=3),  # relative position bias built by the encoder
    "roformer": lambda: _config("RoFormerConfig", **_COMMON, embedding_size=32, num_hidden_layers=3),  # sinusoidal rotary positions
    "deberta": lambda: _config("DebertaConfig", **_COMMON, num_hidden_layers=3, relative_attention=True,
                               pos_att_type=["p2c", "c2p"]),
    "deberta-v2": lambda: _config("DebertaV2Config", **_COMMON, num_hidden_layers=3, relative_attention=True,
                                  position_buckets=8, pos_att_type=["p2c", "c2p"]),  # DeBERTa-v3 style
    "deberta-v2-conv": lambda: _config("DebertaV2Config", **_COMMON, num_hidden_layers=3, relative_attention=True,
                                       conv_kernel_size=3, pos_att_type=["p2c", "c2p"]),  # a conv after layer 1 (override)
    "modernbert": lambda: _config("ModernBertConfig", **_COMMON, num_hidden_layers=3, global_attn_every_n_layers=2,
                                  local_attention=4, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3),
}


def tiny_backbone(arch: str, seed: int = 0):
    from transformers import AutoModel

    torch.manual_seed(seed)
    config = TINY[arch]() if arch in TINY else TINY_DECODERS[arch]()
    return AutoModel.from_config(config).eval()


def tiny_model(arch: str = "bert", seed: int = 0, **kwargs) -> EarlyExitForSequenceClassification:
    backbone = tiny_backbone(arch, seed)
    config = EarlyExitConfig(backbone=backbone.config.to_dict(), **kwargs)
    torch.manual_seed(seed + 1)
    return EarlyExitForSequenceClassification(config, backbone=backbone).eval()


def tiny_tokenizer(tmp_path: Path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return transformers.BertTokenizerFast(vocab=str(path))  # transformers 5: `vocab` (vocab_file is ignored)


def random_batch(batch: int, max_len: int, seed: int, pad_id: int = 0, vocab: int = 64):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, max_len + 1, (batch,), generator=gen)
    ids = torch.randint(5, vocab, (batch, int(lengths.max())), generator=gen)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = pad_id
    return {"input_ids": ids, "attention_mask": mask}


_DECODER = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0)

# Tiny random configs of the decoder-only families that run as early-exit classifiers.
TINY_DECODERS = {
    "gpt2": lambda: _config("GPT2Config", vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=64, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2),
    "llama": lambda: _config("LlamaConfig", **_DECODER, num_key_value_heads=2),  # grouped-query attention
    "qwen2": lambda: _config("Qwen2Config", **_DECODER, num_key_value_heads=2),
    "qwen3": lambda: _config("Qwen3Config", **_DECODER, num_key_value_heads=2, head_dim=8),
    "mistral": lambda: _config("MistralConfig", **_DECODER, num_key_value_heads=2, sliding_window=4),  # sliding window
    "gemma2": lambda: _config("Gemma2Config", **_DECODER, num_key_value_heads=2, head_dim=8, sliding_window=4,
                              query_pre_attn_scalar=8),  # alternating local/global layers, soft-capping
    "phi3": lambda: _config("Phi3Config", **_DECODER, num_key_value_heads=2),
}

"""Tiny random encoders and an offline WordPiece tokenizer for text tests."""
from pathlib import Path

import torch
from transformers import (AlbertConfig, AutoModel, BertConfig, BertTokenizerFast, DistilBertConfig, ElectraConfig,
                          RobertaConfig, XLMRobertaConfig)

from adaptive_exit.text.modeling import EarlyExitConfig, EarlyExitForSequenceClassification

WORDS = "the a movie film good bad great awful not very is was it and of to plot acting fun boring".split()

TINY = {
    "bert": lambda: BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48),
    "roberta": lambda: RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48, pad_token_id=0),
    "xlm-roberta": lambda: XLMRobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48, pad_token_id=0),
    "electra": lambda: ElectraConfig(vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48),
    "albert": lambda: AlbertConfig(vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=4, num_hidden_groups=2, num_attention_heads=4, intermediate_size=48),
    "distilbert": lambda: DistilBertConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, hidden_dim=48),
}


def tiny_backbone(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    config = TINY[arch]()
    config.hidden_dropout_prob = getattr(config, "hidden_dropout_prob", 0.0)
    return AutoModel.from_config(config).eval()


def tiny_model(arch: str = "bert", seed: int = 0, **kwargs) -> EarlyExitForSequenceClassification:
    backbone = tiny_backbone(arch, seed)
    config = EarlyExitConfig(backbone=backbone.config.to_dict(), **kwargs)
    torch.manual_seed(seed + 1)
    return EarlyExitForSequenceClassification(config, backbone=backbone).eval()


def tiny_tokenizer(tmp_path: Path) -> BertTokenizerFast:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=str(path))  # transformers 5: `vocab` (vocab_file is ignored)


def random_batch(batch: int, max_len: int, seed: int, pad_id: int = 0, vocab: int = 64):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, max_len + 1, (batch,), generator=gen)
    ids = torch.randint(5, vocab, (batch, int(lengths.max())), generator=gen)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = pad_id
    return {"input_ids": ids, "attention_mask": mask}

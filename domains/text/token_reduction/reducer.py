"""Dynamic token reduction inside the layer-by-layer encoder runner.

At a few selection points (before given layers) each row keeps only some of its tokens;
the kept tokens of every row are packed to the front and the batch is cut to the longest
kept row, so later layers really run on fewer tokens (rows may keep different numbers:
the padding that packing adds is counted by the benchmark, not hidden). ``[CLS]`` (the
first token) is always kept, padding never.

Two ways to decide what to keep:

* ``trbert`` (Ye et al., NAACL 2021): a small policy network per selection point
  (Linear(H, 32), GELU, Linear(32, 1), sigmoid) gives each token a keep probability; at
  inference a token is kept when it is >= 0.5. Trained with REINFORCE (see
  :mod:`.token_reduction_training`).
* ``ltp`` (Learned Token Pruning, Kim et al., KDD 2022): a token's importance is the
  attention it receives in the layer before the selection point (mean over heads and
  real query tokens), times the number of tokens, so that 1 is an average token at any
  length (a deviation: LTP thresholds the raw mean, which shrinks as 1 / length and so
  prunes long inputs harder); it is kept when the importance is >= a learned per-layer
  threshold.
  Trained in one pass with soft masks sigmoid((importance - threshold) / T) and a penalty
  on the kept share. Needs BERT-style attention modules (``attention.self.query/key``).

Token reduction needs layers that see token positions only through the embeddings (or
``position_ids``): a probe on first use checks that dropping a masked-out token and
packing gives the same hidden states as keeping it, and refuses the model otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("trbert", "ltp")
MODES = ("off", "hard", "sample", "soft")


@dataclass
class TokenReductionConfig:
    """Saved in the model config as ``token_reduction`` (a dict)."""

    method: str = "trbert"
    selection_layers: list = field(default_factory=list)  # 0-based layers tokens are selected before; [] = default
    keep_threshold: float = 0.5  # trbert: keep when p >= this at inference
    policy_hidden: int = 32  # trbert: width of the policy network
    soft_temperature: float = 0.1  # ltp: temperature of the soft masks in training (importance 1 = an average token)
    init_threshold: float = 0.0  # ltp: initial importance thresholds

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"token_reduction.method must be one of {METHODS}, got {self.method!r}")
        if not 0 < self.keep_threshold < 1:
            raise ValueError(f"token_reduction.keep_threshold must be in (0, 1), got {self.keep_threshold}")

    def layers_for(self, num_layers: int) -> list[int]:
        """The selection points: given, or TR-BERT's default (before layer 2 and before the
        middle layer: [1, L // 2] for L layers); LTP's default is every layer but the first."""
        if self.selection_layers:
            layers = sorted({int(k) for k in self.selection_layers})
        elif self.method == "ltp":
            layers = list(range(1, num_layers))
        else:
            layers = sorted({1, num_layers // 2})
        bad = [k for k in layers if not 0 < k < num_layers]
        if bad:
            raise ValueError(f"token_reduction.selection_layers must be within 1..{num_layers - 1}, got {bad}")
        return layers


class TokenPolicy(nn.Module):
    """TR-BERT's policy network: the keep probability of each token from its hidden state."""

    def __init__(self, hidden: int, width: int = 32):
        super().__init__()
        self.linear_1 = nn.Linear(hidden, width)
        self.linear_2 = nn.Linear(width, 1)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.sigmoid(self.linear_2(F.gelu(self.linear_1(hidden)))).squeeze(-1)


def attention_modules(layer: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The self-attention module and its query and key projections (BERT-style layers only)."""
    try:
        attn = layer.get_submodule("attention.self")
        return attn, attn.query, attn.key
    except AttributeError:
        raise ValueError(f"ltp token pruning needs BERT-style attention (attention.self.query/key); "
                         f"{type(layer).__name__} has none") from None


def attention_received(layer: nn.Module, query: Tensor, key: Tensor, mask2d: Tensor) -> Tensor:
    """(B, T): the attention each token receives in ``layer``, averaged over heads and real
    query tokens, times the row's number of real tokens (1 = an average token, whatever the
    length). ``query`` and ``key`` are the layer's own projections of its input (captured
    while it ran, so nothing is projected twice).

    Row by row over the real tokens only: a padded (B, heads, T, T) score tensor, masked,
    softmaxed and reduced in separate passes, cost about as much as the layer itself; one
    row's unpadded scores stay in cache (``benchmarks/token_reduction.py``: LTP went from
    0.59x to 1.10x the unpruned model's wall-clock at full depth)."""
    attn = attention_modules(layer)[0]
    b, t, h = query.shape
    heads = attn.num_attention_heads
    size = h // heads
    real = mask2d.bool()
    rows = []
    for i in range(b):
        index = real[i].nonzero().squeeze(1)
        n = index.numel()
        q = query[i, index].view(n, heads, size).transpose(0, 1)
        k = key[i, index].view(n, heads, size).transpose(0, 1)
        probs = ((q @ k.transpose(-1, -2)) * (1 / math.sqrt(size))).softmax(-1)  # (heads, n queries, n keys)
        received = probs.sum((0, 1)) / heads  # mean over queries times n: 1 = an average token
        rows.append(query.new_zeros(t).index_put((index,), received))
    return torch.stack(rows)


class TokenReducer(nn.Module):
    """The selection networks or thresholds of a model, and the selection itself."""

    def __init__(self, cfg: TokenReductionConfig, hidden: int, num_layers: int):
        super().__init__()
        self.cfg = cfg
        self.layers = cfg.layers_for(num_layers)
        if cfg.method == "trbert":
            self.policies = nn.ModuleDict({str(k): TokenPolicy(hidden, cfg.policy_hidden) for k in self.layers})
        else:
            self.thresholds = nn.Parameter(torch.full((len(self.layers),), float(cfg.init_threshold)))
        self.mode = "hard"

    def keep_probability(self, k: int, hidden: Tensor, state: dict[str, Any], previous_layer: nn.Module | None) -> Tensor:
        """(B, T) probability-like keep scores at selection point k (before layer k)."""
        if self.cfg.method == "trbert":
            return self.policies[str(k)](hidden)
        importance = state.get("importance")
        if importance is None:
            importance = attention_received(previous_layer, state["layer_query"], state["layer_key"], state["mask2d"])
        threshold = self.thresholds[self.layers.index(k)]
        if self.mode == "soft":
            return torch.sigmoid((importance - threshold) / self.cfg.soft_temperature)
        return (importance >= threshold).to(hidden.dtype)

    def policy_parameters(self):
        return self.policies.parameters() if self.cfg.method == "trbert" else [self.thresholds]


def pack(keep: Tensor) -> tuple[Tensor, Tensor]:
    """Indices (B, W) of each row's kept tokens in order, packed to the front, and the
    validity mask (B, W); W is the longest kept row."""
    counts = keep.sum(1)
    width = max(int(counts.max()), 1)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=keep.device)[None, :] < counts[:, None]
    return order, valid


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[b, index[b]] for (B, T, ...) x and (B, W) index."""
    shape = index.shape + x.shape[2:]
    expanded = index.reshape(index.shape + (1,) * (x.dim() - 2)).expand(shape)
    return x.gather(1, expanded)

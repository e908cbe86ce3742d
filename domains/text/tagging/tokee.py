"""Token-level early exit (TOKEE, Li et al., ACL 2021) for BERT-family taggers.

After layer k every still-active token gets an uncertainty u (normalised entropy of
its layer-k tag distribution). A token halts when the largest uncertainty within a
window of +-w tokens is below the threshold. A halted token is *halted and copied*:
its hidden state is frozen and still serves as key/value for the tokens that go on,
but its query, attention output and feed-forward are no longer computed. Each layer
is run here with the layer's own weights on the active tokens only (packed per
sentence), so compute really falls with the number of active tokens.

Padding tokens are never active (they cost nothing and are masked out as keys) and
have zero uncertainty, so they never keep a neighbour alive. Given the collator's
``first_piece``, a word's continuation pieces share its first piece's uncertainty
and special tokens count as certain. With threshold 0 no token halts and the
result equals the full model.

Supported: BERT, RoBERTa, XLM-R and MiniLM layers (``attention.self.query/key/value``,
``attention.output``, ``intermediate``, ``output``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adaptive_exit.policies import entropy


@dataclass
class TokenExitResult:
    """``logits`` (B, T, C) from each token's exit layer; ``exit_layer`` (B, T) 1..L
    (0 for padding); ``flops`` spent on the batch and ``full_flops`` of the full model;
    ``hidden`` the final states (a halted token's is its state at its exit layer)."""

    logits: Tensor
    exit_layer: Tensor
    flops: float
    full_flops: float
    hidden: Tensor

    @property
    def flops_speedup(self) -> float:
        return self.full_flops / self.flops


BERT_LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")


def check_layer(layer: nn.Module) -> None:
    """Token-level exit computes a layer by hand from these BERT-family parts."""
    for path in BERT_LAYER_PARTS:
        try:
            layer.get_submodule(path)
        except AttributeError:
            raise ValueError(f"token-level exit supports BERT-family layers; {type(layer).__name__} has no {path}") from None


def layer_flops(hidden: int, intermediate: int, real: int | Tensor, active: int | Tensor) -> float:
    """FLOPs of one halted-and-copied layer: K/V for every real token, the rest for active
    ones. ``real``/``active`` are token counts of one sentence or (B,) tensors of them,
    summed over the batch."""
    real, active = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(active, dtype=torch.float64)
    kv = 2 * 2 * real * hidden * hidden
    q_out = 2 * 2 * active * hidden * hidden
    attention = 2 * 2 * active * real * hidden
    ffn = 2 * 2 * active * hidden * intermediate
    return float((kv + q_out + attention + ffn).sum())


def _pack(active: Tensor) -> tuple[Tensor, Tensor]:
    """Indices (B, A) of each row's active tokens, in order, and their validity mask."""
    counts = active.sum(1)
    width = max(int(counts.max()), 1)
    order = torch.sort((~active).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=active.device)[None, :] < counts[:, None]
    return order, valid


def halted_layer(layer: nn.Module, hidden: Tensor, key_mask: Tensor, active: Tensor) -> Tensor:
    """One encoder layer computed for ``active`` tokens only; the others are copied."""
    attn = layer.attention.self
    b, t, h = hidden.shape
    heads, size = attn.num_attention_heads, attn.attention_head_size
    index, valid = _pack(active)
    gathered = hidden.gather(1, index[..., None].expand(-1, -1, h))  # (B, A, H)
    q = attn.query(gathered).view(b, -1, heads, size).transpose(1, 2)
    k = attn.key(hidden).view(b, t, heads, size).transpose(1, 2)
    v = attn.value(hidden).view(b, t, heads, size).transpose(1, 2)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], scale=attn.scaling)
    context = context.transpose(1, 2).reshape(b, -1, h)
    attended = layer.attention.output.LayerNorm(layer.attention.output.dense(context) + gathered)
    out = layer.output.LayerNorm(layer.output.dense(layer.intermediate(attended)) + attended)
    updated = hidden.clone()
    rows = torch.arange(b, device=hidden.device)[:, None].expand_as(index)
    updated[rows[valid], index[valid]] = out[valid]
    return updated


def normalized_entropy(logits: Tensor) -> Tensor:
    return entropy(logits, normalized=True).float()


def _shared_uncertainty(own: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """The uncertainty each token's halting looks at: a word's pieces share the
    uncertainty of its first piece (only first pieces are scored; the heads are not
    trained elsewhere); special tokens and padding count as certain. Without word
    information (raw input ids) every real token uses its own."""
    if "first_piece" in batch:
        first = batch["first_piece"].to(own.device)
        return torch.where(first >= 0, own.gather(1, first.clamp_min(0)), torch.zeros_like(own))
    return torch.where(batch["attention_mask"].bool().to(own.device), own, torch.zeros_like(own))


def halting(own: Tensor, batch: dict[str, Tensor], active: Tensor, threshold: float, window: int) -> Tensor:
    """(B, T) the active tokens that halt now: the largest (shared) uncertainty within
    +-window tokens is below the threshold."""
    neighbourhood = F.max_pool1d(_shared_uncertainty(own, batch)[:, None, :], 2 * window + 1, stride=1,
                                 padding=window)[:, 0]
    return active & (neighbourhood < threshold)


@torch.no_grad()
def token_exit(model, batch: dict[str, Tensor], threshold: float, window: int = 1) -> TokenExitResult:
    """TOKEE inference of an ``EarlyExitForTokenClassification`` model (eval mode).

    The exit heads run on active tokens only; halted tokens keep the logits of
    their exit layer."""
    if threshold < 0 or window < 0:
        raise ValueError(f"threshold and window must be >= 0, got {threshold}, {window}")
    adapter = model.adapter
    mask2d = batch["attention_mask"].bool()
    hidden = adapter.embed(batch["input_ids"], batch.get("token_type_ids"), batch["attention_mask"])
    b, t, h = hidden.shape
    for k in range(model.num_stages):
        check_layer(adapter.layer(k))
    intermediate = model.backbone.config.intermediate_size
    num_labels = model.config.num_labels
    real_counts = mask2d.sum(1)
    active = mask2d.clone()
    own = torch.zeros(b, t, device=hidden.device)
    logits_out = torch.zeros(b, t, num_labels, device=hidden.device, dtype=hidden.dtype)
    exit_layer = torch.zeros(b, t, dtype=torch.long, device=hidden.device)
    head_flops = 2.0 * h * num_labels  # per token
    full = model.num_stages * (layer_flops(h, intermediate, real_counts, real_counts) + head_flops * float(mask2d.sum()))
    flops = 0.0
    last = model.num_stages - 1
    for k in range(model.num_stages):
        layer = adapter.layer(k)
        active_counts = active.sum(1)
        alive = active_counts > 0  # a sentence with no active token is done: it costs nothing
        flops += layer_flops(h, intermediate, real_counts[alive], active_counts[alive])
        rows = alive.nonzero().flatten()
        hidden[rows] = halted_layer(layer, hidden[rows], mask2d[rows], active[rows])
        where = active.nonzero(as_tuple=True)
        logits = model.classifiers[k](hidden[where])  # (active tokens, C)
        flops += head_flops * logits.shape[0]
        own[where] = normalized_entropy(logits)
        done = halting(own, batch, active, threshold, window) if k < last else active
        halting_now = done[where]
        logits_out[where[0][halting_now], where[1][halting_now]] = logits[halting_now]
        exit_layer[done] = k + 1
        active = active & ~done
        if not bool(active.any()):
            break
    return TokenExitResult(logits_out, exit_layer, flops, full, hidden)

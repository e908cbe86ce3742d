"""Token selection at a selection point: which tokens each row keeps, packing them to the
front, and the one-time check that packing is exact for the backbone."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..encoder import Captured
from .reducer import gather_rows, pack


def select_tokens(model: Any, k: int, state: dict[str, Any]) -> dict[str, Any]:
    """Token selection before layer k: each row keeps some tokens (``[CLS]`` always), which
    are packed to the front; the layers' arguments are prepared again for the packed rows
    with their original positions. Modes of ``model.reducer``: ``hard`` (inference),
    ``sample`` (REINFORCE: Bernoulli draws, their negative log-likelihood accumulated per
    row; rows with ``imitate`` follow the guide scores' top-k), ``soft`` (LTP training:
    tokens are scaled by their keep probability, none dropped)."""
    reducer = model.reducer
    if not getattr(model, "_packing_verified", False):
        verify_packing(model)
    hidden, mask2d = state["hidden"], state["mask2d"]
    real = mask2d.bool()
    previous = model.adapter.layer(k - 1) if reducer.cfg.method == "ltp" else None
    prob = reducer.keep_probability(k, hidden, state, previous)
    state["counts_before_selection"] = mask2d.sum(1)
    if state.get("forced_keep") is not None:  # verify_packing: drop exactly the given tokens
        keep = state.pop("forced_keep") & real
        return _packed(model, state, keep)
    if reducer.mode == "soft":
        soft = torch.where(real, prob, torch.zeros_like(prob))
        soft = torch.cat([real[:, :1].to(soft.dtype), soft[:, 1:]], 1)  # [CLS] stays whole
        state["soft_mask"] = soft if state.get("soft_mask") is None else state["soft_mask"] * soft
        state["soft_masks"].append((soft * real).sum(1) / real.sum(1).clamp_min(1))
        state["kept_fractions"].append(state["soft_mask"].sum(1).detach() / state["original_counts"])
        return state
    if reducer.mode == "sample":
        draw = prob.detach().clone()
        guide = state.get("guide")
        if guide is not None and state.get("imitate") is not None and bool(state["imitate"].any()):
            draw = imitation_draw(draw, guide[reducer.layers.index(k)], state, real)
        draw[:, 0] = 1.0
        selected = torch.bernoulli(draw.clamp(0, 1)) * real
        selected[:, 0] = real[:, 0].to(selected.dtype)
        nll = -(selected * torch.log(prob + 1e-6) + (1 - selected) * torch.log(1 - prob + 1e-6)) * real
        state["select_nll"] = state["select_nll"] + nll.sum(1) / real.sum(1).clamp_min(1)
        keep = selected.bool()
    else:
        keep = (prob >= reducer.cfg.keep_threshold) & real
        keep[:, 0] = real[:, 0]
    return _packed(model, state, keep)


def _packed(model: Any, state: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    """The state with only the ``keep`` tokens of each row, packed to the front."""
    hidden, mask2d = state["hidden"], state["mask2d"]
    state["kept_fractions"].append(keep.sum(1) / state["original_counts"])
    index, valid = pack(keep)
    hidden = gather_rows(hidden, index) * valid.unsqueeze(-1).to(hidden.dtype)
    positions = gather_rows(state["positions"], index)
    captured = state["captured"]
    inputs = {name: gather_rows(value, index) for name, value in captured.inputs.items() if name != "position_ids"}
    inputs["attention_mask"] = valid.to(mask2d.dtype)
    inputs["input_ids"] = inputs["input_ids"] * valid
    if "position_ids" in model.adapter.accepted_inputs:
        inputs["position_ids"] = positions * valid
    fresh = model.adapter.capture(inputs)
    for name in ("guide_positions",):
        if state.get(name) is not None:
            state[name] = gather_rows(state[name], index)
    return {**state, "hidden": hidden, "mask2d": inputs["attention_mask"], "positions": positions,
            "captured": Captured(hidden, fresh.calls, fresh.inputs), "importance": None}


@torch.no_grad()
def verify_packing(model: Any) -> None:
    """Token reduction is exact only if a layer sees token positions through the embeddings
    or ``position_ids``: then dropping a token nobody attends to (masked out) and packing the
    rest changes no hidden state. Checked once per model on a probe with such a token."""
    model._packing_verified = True
    length, hole = 10, 4
    vocab = int(getattr(model.backbone.config, "vocab_size", 100))
    ids = torch.randint(5, max(6, vocab), (2, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length - 2:] = 0  # padding, so both layouts have masks
    mask[:, hole] = 0  # masked out: no token attends to it
    device = next(model.parameters()).device
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if "position_ids" in model.adapter.accepted_inputs:  # as the packed layout will pass them
        batch["position_ids"] = torch.arange(length, device=device)[None, :].expand(2, length)
    was_training, mode = model.training, model.reducer.mode
    model.eval()
    try:
        model.reducer.mode = "off"
        state = model.begin(batch)
        for k in range(model.num_stages):
            state = model.run_stage(k, state)
        expected = [state["hidden"][r, mask[r].bool()] for r in range(2)]
        model.reducer.mode = "hard"
        state = model.begin(batch)
        for k in range(model.num_stages):
            if k == model.reducer.layers[0]:
                state["forced_keep"] = mask.bool().to(device)
            state = model.run_stage(k, state)
            if k == model.reducer.layers[0]:
                model.reducer.mode = "off"  # one packing is what is checked; later selection points stay out
                packed_args = state["captured"]
        got = [state["hidden"][r, : int(mask[r].sum())] for r in range(2)]
        model.reducer.mode = "off"
        unpacked_args = model.begin(batch)["captured"]
    except Exception:
        model._packing_verified = False
        raise
    finally:
        model.reducer.mode = mode
        model.train(was_training)
    same_args = _arguments_match_without(unpacked_args, packed_args, dropped=hole, length=length,
                                         counts=[int(c) for c in mask.sum(1)])
    same_hidden = all(g.shape == e.shape and torch.allclose(g, e, atol=1e-5, rtol=1e-5) for g, e in zip(got, expected))
    if not (same_args and same_hidden):
        model._packing_verified = False
        raise ValueError(f"token reduction cannot run on {type(model.backbone).__name__}: dropping tokens and packing the rest "
                         "changes what its layers compute (its layers see token positions other than through the embeddings "
                         "or position_ids, e.g. relative positions)")


def _arguments_match_without(unpacked: Captured, packed: Captured, dropped: int, length: int,
                             counts: list[int]) -> bool:
    """Do the layers' arguments for the packed batch equal the unpacked ones with token
    ``dropped`` removed, over each row's real tokens (``counts``), along every dimension
    of the sequence's length? This catches positions computed from slots (relative
    positions, sliding windows) whatever the weights, where comparing hidden states of a
    random model might not."""
    from ..encoder import _leaves

    keep = [i for i in range(length) if i != dropped]

    def trimmed(x: Tensor, width: int, full: int) -> Tensor:
        for dim in range(x.dim()):
            if x.shape[dim] == full:
                x = x.narrow(dim, 0, min(width, full))
        return x

    for a, b in zip(unpacked.calls, packed.calls):
        for (_, x), (_, y) in zip(_leaves((a.args[1:], a.kwargs)), _leaves((b.args[1:], b.kwargs))):
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                if isinstance(x, Tensor) != isinstance(y, Tensor):
                    return False
                continue
            index = torch.tensor(keep, device=x.device)
            for dim in range(x.dim()):
                if x.shape[dim] == length:
                    x = x.index_select(dim, index)
            batched = x.dim() > 0 and x.shape[0] == len(counts) == y.shape[0]
            pairs = ([(trimmed(x[r], n, length - 1), trimmed(y[r], n, y.shape[-1] if y.dim() else 0)) for r, n in enumerate(counts)]
                     if batched else [(trimmed(x, max(counts), length - 1), trimmed(y, max(counts), length - 1))])
            for u, v in pairs:
                if u.shape != v.shape:
                    return False
                same = torch.equal(u, v) if (u.dtype == torch.bool or not u.is_floating_point()) else \
                    torch.allclose(u, v, atol=1e-6, rtol=1e-5)
                if not same:
                    return False
    return True


def imitation_draw(draw: Tensor, guide: Tensor, state: dict[str, Any], real: Tensor) -> Tensor:
    """TR-BERT's imitation: rows marked ``imitate`` keep the top-k tokens by the residual
    guide score, k being the number of tokens the policy expects to keep (round(sum p))."""
    scores = gather_rows(guide, state["positions"])  # guides are in original token positions
    scores = torch.where(real, scores, torch.full_like(scores, -1.0))
    k = (draw * real).sum(1).add(0.5).long().clamp_min(1)
    order = scores.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    top = (ranks < k[:, None]).to(draw.dtype) * real
    imitate = state["imitate"][:, None]
    return torch.where(imitate, top, draw)

"""Sentence-level (SENTEE) vs token-level (TOKEE) early exit for sequence labeling:
entity F1 against FLOPs, on one split, in one table.

Every operating point is costed with the same analytic FLOPs (``tokee.layer_flops``
plus the tag head): a sentence that exits at layer k pays k full layers for its
real tokens; under TOKEE a layer costs K/V for every real token and the rest only
for the active ones. Padding costs nothing in either. SENTEE, static truncation
and the oracle are replayed from the recorded trace; TOKEE runs the model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from adaptive_exit.evaluation import oracle_exit_stage
from adaptive_exit.runtime.runner import EarlyExitRunner, pad_cat
from adaptive_exit.runtime.timing import median_time
from adaptive_exit.runtime.traces import Trace, replay

from .conll import IGNORE
from .tokee import layer_flops, token_exit
from .token_metrics import entity_scores


@dataclass
class TokenExitRow:
    """One operating point: entity scores, FLOPs and the mean layers per scored token."""

    name: str
    family: str  # full, static, sentee, tokee, oracle
    param: Any
    f1: float
    precision: float
    recall: float
    flops: float
    full_flops: float
    mean_layers: float  # per scored (first sub-) token

    @property
    def flops_speedup(self) -> float:
        return self.full_flops / self.flops

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flops_speedup": self.flops_speedup}


def sentence_flops(model, sizes: Tensor, layers: Tensor) -> Tensor:
    """(N,) FLOPs of running each sentence's ``sizes`` real tokens through ``layers``
    (1..L) whole layers and their tag heads."""
    hidden = model.backbone.config.hidden_size
    intermediate = model.backbone.config.intermediate_size
    per_layer = torch.tensor([layer_flops(hidden, intermediate, n, n) + 2.0 * n * hidden * model.config.num_labels
                              for n in sizes.tolist()], dtype=torch.float64)
    return per_layer * layers.double()


def _row_from_stages(name: str, family: str, param: Any, model, trace: Trace, sizes: Tensor, exit_stage: Tensor) -> TokenExitRow:
    scores = entity_scores(trace.stage_output(exit_stage), trace.targets)
    flops = sentence_flops(model, sizes, exit_stage + 1)
    full = sentence_flops(model, sizes, torch.full_like(exit_stage, trace.num_stages))
    scored = (trace.targets != IGNORE).sum(1).double()
    mean_layers = float(((exit_stage + 1).double() * scored).sum() / scored.sum())
    return TokenExitRow(name, family, param, scores["f1"], scores["precision"], scores["recall"],
                        float(flops.sum()), float(full.sum()), mean_layers)


def sentence_level_rows(model, trace: Trace, sizes: Tensor, sweeps: dict[str, Iterable[Any]]) -> list[TokenExitRow]:
    """Full model, static truncation at every depth, SENTEE sweeps and the oracle."""
    last = trace.num_stages - 1
    rows = [_row_from_stages("full", "full", None, model, trace, sizes, torch.full((trace.num_samples,), last))]
    for k in range(trace.num_stages - 1):
        rows.append(_row_from_stages(f"static:{k + 1}", "static", k + 1, model, trace, sizes,
                                     torch.full((trace.num_samples,), k)))
    for family, values in sweeps.items():
        for value in values:
            spec = f"{family}:{value}"
            rows.append(_row_from_stages(spec, "sentee", spec, model, trace, sizes, replay(trace, spec).exit_stage))
    rows.append(_row_from_stages("oracle", "oracle", None, model, trace, sizes, oracle_exit_stage(trace, "entity_f1")))
    return rows


def token_level_row(model, batches: Sequence[dict[str, Tensor]], threshold: float, window: int) -> TokenExitRow:
    """TOKEE at one threshold and window, run over every batch."""
    logits, targets, layers = [], [], []
    flops = full = 0.0
    for batch in batches:
        result = token_exit(model, batch, threshold, window)
        logits.append(result.logits.float().cpu())
        targets.append(batch["labels"])
        layers.append(result.exit_layer[batch["labels"] != IGNORE].double())
        flops, full = flops + result.flops, full + result.full_flops
    scores = entity_scores(pad_cat(logits), pad_cat(targets, value=IGNORE))
    return TokenExitRow(f"tokee:{threshold}:w{window}", "tokee", {"threshold": threshold, "window": window},
                        scores["f1"], scores["precision"], scores["recall"], flops, full, float(torch.cat(layers).mean()))


def sentee_f1_at(rows: list[TokenExitRow], speedup: float) -> float | None:
    """SENTEE's entity F1 at a FLOPs speed-up (see ``envelope_f1_at``)."""
    return envelope_f1_at(rows, speedup, ("sentee", "full"))


def envelope_f1_at(rows: list[TokenExitRow], speedup: float, families: Sequence[str]) -> float | None:
    """The best entity F1 these families reach at a FLOPs speed-up, linearly interpolated
    along their upper envelope; None beyond their fastest point."""
    points = sorted((r.flops_speedup, r.f1) for r in rows if r.family in families)
    envelope: list[tuple[float, float]] = []
    for s, f in reversed(points):  # from fastest to slowest: keep points better than every faster one
        if not envelope or f > envelope[-1][1]:
            envelope.append((s, f))
    envelope.reverse()
    if not envelope or speedup > envelope[-1][0]:
        return None
    if speedup <= envelope[0][0]:
        return envelope[0][1]
    for (s0, f0), (s1, f1) in zip(envelope, envelope[1:]):
        if s0 <= speedup <= s1:
            return f0 + (f1 - f0) * (speedup - s0) / (s1 - s0) if s1 > s0 else max(f0, f1)
    return None


def rows_from_json(rows: list[dict[str, Any]]) -> list[TokenExitRow]:
    """Rows as written by ``benchmarks/conll_token_exit.py`` (extra keys ignored)."""
    names = {f for f in TokenExitRow.__dataclass_fields__}
    return [TokenExitRow(**{k: v for k, v in row.items() if k in names}) for row in rows]


def best_within(rows: list[TokenExitRow], family: str, reference_f1: float, max_drop: float) -> TokenExitRow | None:
    """The fastest row of a family whose F1 is at most ``max_drop`` below the reference."""
    ok = [r for r in rows if r.family == family and reference_f1 - r.f1 <= max_drop]
    return max(ok, key=lambda r: (r.flops_speedup, r.f1)) if ok else None


def wall_clock(model, batches: Sequence[dict[str, Tensor]], sentee_policy: str | None, tokee: dict | None,
               repeats: int = 3) -> dict[str, float]:
    """Median seconds over the batches: full model, SENTEE (compaction) and TOKEE."""

    def timed(fn) -> float:
        return median_time(lambda: fn(batches), repeats, warmup=lambda: fn(batches[:1]))[0]

    with torch.no_grad():
        out = {"full_s": timed(EarlyExitRunner(model, "full").run_batches)}
        if sentee_policy:
            out["sentee_s"] = timed(EarlyExitRunner(model, sentee_policy).run_batches)
        if tokee:
            out["tokee_s"] = timed(lambda bs: [token_exit(model, b, tokee["threshold"], tokee["window"]) for b in bs])
    return out

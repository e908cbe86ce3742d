"""Risk-controlled calibration: the cheapest policy whose quality drop against the full model
is at most ``max_drop`` with probability at least ``confidence`` (Learn-then-Test,
Angelopoulos et al. 2021; as CALM applies it to early exit, Schuster et al. 2022).

Each candidate's null hypothesis is "its expected per-sample drop exceeds ``max_drop``". A
p-value comes from the Waudby-Smith–Ramdas betting martingale (valid for i.i.d. bounded
losses, tight when most samples lose nothing, as with early exits); the candidates of
each family are tested in a fixed sequence from the most to the least expensive, stopping
at the first that fails, at level ε / (number of families) (Bonferroni across families).
Every policy that passes is certified at once; the cheapest one is chosen. If none passes,
the full model (drop 0) is.

Valid when test samples come from the calibration data's distribution (exchangeable). The
drop is of the metric's per-sample mean (accuracy, PESQ, STOI, token accuracy), bounded by
the metric's declared per-sample range.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from adaptive_exit.evaluation.scoring import metric_for, per_sample_quality
from adaptive_exit.policies import ExitPolicy, build_policy
from adaptive_exit.runtime.traces import Trace, replay


def wsr_p_value(losses: np.ndarray, alpha: float, level: float = 0.1) -> float:
    """p-value of H0: E[loss] >= alpha for i.i.d. losses in [0, 1] (betting on the losses
    being lower; Ville's inequality). ``level`` only tunes the bets' size."""
    x = np.asarray(losses, dtype=np.float64)
    if x.size == 0 or alpha >= 1:
        return 1.0 if x.size == 0 else 0.0
    t = np.arange(1, x.size + 1)
    mean = (0.5 + np.cumsum(x)) / (t + 1)
    var = (0.25 + np.cumsum((x - mean) ** 2)) / (t + 1)
    var_before = np.concatenate([[0.25], var[:-1]])  # predictable: bet i sees only samples < i
    # 1 + bet (alpha - x) >= 0.25 for every x <= 1: a sample that loses everything costs 3/4 of the wealth
    bet = np.minimum(np.sqrt(2 * math.log(1 / level) / (x.size * var_before)), 0.75 / (1 - alpha))
    log_wealth = np.cumsum(np.log1p(bet * (alpha - x)))
    return float(min(1.0, math.exp(-max(0.0, log_wealth.max()))))


def wsr_upper_bound(losses: np.ndarray, confidence: float) -> float:
    """The smallest alpha the test rejects at 1 - confidence: an upper confidence bound on E[loss]."""
    level = 1 - confidence
    lo, hi = float(np.mean(losses)), 1.0
    if wsr_p_value(losses, lo, level) <= level:
        return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if wsr_p_value(losses, mid, level) <= level else (mid, hi)
    return hi


@dataclass
class Certified:
    """The chosen policy with its guarantee: with probability >= ``confidence`` over the
    calibration data, its expected drop is <= ``max_drop``; ``bound`` is its own upper
    confidence bound on the drop, ``drop`` the drop measured on the calibration data."""

    policy: str
    budget: str
    metric: str
    max_drop: float
    confidence: float
    bound: float
    drop: float
    cost_fraction: float
    speedup: float
    num_samples: int
    certified: int
    tested: int
    heldout: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DropLosses:
    """Per-sample drops against the full model, mapped into [0, 1] for the test."""

    def __init__(self, trace: Trace, metric: str):
        found = metric_for(trace, metric)
        if found.bounds is None:
            raise ValueError(f"metric {metric!r} declares no per-sample range, so a drop bound cannot be certified; "
                             "use accuracy, token_accuracy, pesq or stoi (or register the metric with bounds=...)")
        lo, hi = found.bounds
        self.range = hi - lo
        self.quality = per_sample_quality(trace, metric).clamp(min=lo if found.higher_is_better else -hi,
                                                              max=hi if found.higher_is_better else -lo)
        self.trace = trace

    def drops(self, exit_stage: torch.Tensor) -> np.ndarray:
        chosen = self.quality[torch.arange(self.trace.num_samples), exit_stage]
        return (self.quality[:, -1] - chosen).numpy()

    def to_unit(self, drops: np.ndarray) -> np.ndarray:
        return (drops + self.range) / (2 * self.range)

    def threshold(self, max_drop: float) -> float:
        return (max_drop + self.range) / (2 * self.range)

    def from_unit(self, value: float) -> float:
        return value * 2 * self.range - self.range


def certify(trace: Trace, families: Sequence[Sequence[str | dict | ExitPolicy]], metric: str, max_drop: float,
            confidence: float = 0.9, heldout: Trace | None = None, seed: int = 0,
            exits: Mapping[str, torch.Tensor] | None = None) -> Certified:
    """Learn-then-Test over ``families`` (each a list of policies of one monotone family,
    e.g. entropy thresholds): the cheapest certified policy.

    ``exits`` optionally maps a policy's spec to its exit stages on ``trace``, already
    replayed: per-sample policies exit each sample alone, so a caller that certifies many
    random splits of one trace replays each policy once (``benchmarks/learned_exit.py``)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not max_drop >= 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    if trace.num_samples < 2:
        raise ValueError("risk-controlled calibration needs a calibration set of at least two samples")
    losses = DropLosses(trace, metric)
    order = torch.randperm(trace.num_samples, generator=torch.Generator().manual_seed(seed)).numpy()
    families = [list(f) for f in families if len(f)]
    level = (1 - confidence) / max(1, len(families))
    alpha = losses.threshold(max_drop)
    certified: list[tuple[float, ExitPolicy, np.ndarray]] = []
    tested = 0
    def replayed(policy: ExitPolicy):
        known = exits.get(policy.spec()) if exits is not None else None
        return replay(trace, policy) if known is None else trace.result(known, with_output=False)

    for family in families:
        runs = [(p, replayed(p)) for p in (build_policy(c) for c in family)]
        runs.sort(key=lambda item: -item[1].cost_fraction)  # most expensive first: the fixed sequence
        for policy, result in runs:
            tested += 1
            unit = losses.to_unit(losses.drops(result.exit_stage))[order]
            if wsr_p_value(unit, alpha, level) > level:
                break
            certified.append((result.cost_fraction, policy, unit))
    if certified:
        cost, policy, unit = min(certified, key=lambda item: item[0])
        result = replayed(policy)
    else:
        policy = build_policy("full")
        result = replay(trace, policy)
        unit = None
    # the full model's drop against itself is exactly zero: nothing to bound
    bound = 0.0 if unit is None else losses.from_unit(wsr_upper_bound(unit, 1 - level))
    report = None
    if heldout is not None:
        held = replay(heldout, policy)
        held_drops = DropLosses(heldout, metric).drops(held.exit_stage)
        report = {"drop": float(held_drops.mean()), "cost_fraction": held.cost_fraction, "speedup": held.speedup,
                  "num_samples": heldout.num_samples}
    return Certified(policy=policy.spec(), budget=f"drop:{max_drop:g}", metric=metric, max_drop=max_drop, confidence=confidence, bound=bound,
                     drop=float(losses.drops(result.exit_stage).mean()), cost_fraction=result.cost_fraction,
                     speedup=result.speedup, num_samples=trace.num_samples, certified=len(certified),
                     tested=tested, heldout=report)

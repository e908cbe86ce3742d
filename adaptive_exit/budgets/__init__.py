"""Compute budgets and calibration of an exit policy to a budget on traces.

A budget is written ``KIND:VALUE``:

* ``mean:0.5``   - mean cost at most 50% of the full model (cost model units);
* ``stages:3``   - mean number of stages used at most 3;
* ``max:0.5``    - every sample at most 50% of the full cost: a hard cap
  (the chosen policy is combined with a :class:`~adaptive_exit.policies.Budget`);
* ``flops:2.5G`` - mean FLOPs per sample (suffixes K, M, G, T);
* ``ms:15``      - mean latency per request (one sample at a time) in milliseconds;
* ``p95:20ms``   - the 95th percentile of that latency (any ``pNN``);
* ``rtf:0.3``    - mean real-time factor per utterance (processing time / audio duration).

``flops``, ``ms``, ``pNN`` and ``rtf`` are measured with a cost model
(:mod:`adaptive_exit.budgets.costs`): calibration gets an (N, L) table of each sample's
cumulative cost after each stage in that unit.

Units (:mod:`.units`), kinds (:mod:`.kinds`), calibration (:mod:`.calibration`), the
model folder's table (:mod:`.table`), cost models (:mod:`.costs`).

Risk-controlled calibration (:mod:`.risk`) answers the converse question: the cheapest
policy whose quality drop against the full model is at most a given value, with a stated
confidence (Learn-then-Test).

Calibration replays candidate policies on development traces, keeps those that
meet the budget and picks the best quality (ties: the cheaper one). The report
gives the achieved cost and quality on a held-out part next to the target.
"""
from __future__ import annotations

from .calibration import Calibration, calibrate, candidate_policies, split_indices, split_trace
from .risk import Certified, certify
from .kinds import BudgetKind, BudgetSpec, budget_kind, known_budget_kinds, register_budget_kind
from .table import BUDGET_TABLE_FILE, BudgetTable, check_request_options, policy_for_request
from .units import CostUnit, cost_unit, register_cost_unit

__all__ = ["BUDGET_TABLE_FILE", "BudgetKind", "BudgetSpec", "BudgetTable", "Calibration", "Certified", "certify", "CostUnit", "budget_kind",
           "calibrate", "candidate_policies", "check_request_options", "cost_unit", "known_budget_kinds", "policy_for_request",
           "register_budget_kind", "register_cost_unit", "split_indices", "split_trace"]

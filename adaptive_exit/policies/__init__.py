"""Exit policies: per-sample rules that decide when a sample may stop.

A policy is stateless between batches. For each batch it creates a per-sample
state with ``init``; ``step(k, output, state)`` updates the state with stage k's
exit output and returns a boolean mask of the rows that may exit now. The runner
drops exited rows from the batch and calls ``select`` to keep the policy state
aligned. Every decision is a function of one sample's own outputs, which is why
a replay over recorded traces gives exactly the runner's decisions.

The last stage always exits; the runner enforces that, not the policies.

Parsing and writing specs: :mod:`.grammar`; the base class, registry and composition:
:mod:`.base`; one module per policy family.
"""
from __future__ import annotations

from .base import AllOf, AnyOf, ExitPolicy, PolicyState, known_policies, register_policy, registered
from .cap import Budget
from .confidence import CONFIDENCE_MEASURES, Confidence
from .grammar import build_policy
from .learned import Learned
from .patience import Patience
from .reference import Never, Oracle
from .signals import DISTANCES, abs_distance, entropy, l2_distance, relative_distance

__all__ = ["AllOf", "AnyOf", "Budget", "CONFIDENCE_MEASURES", "Confidence", "DISTANCES", "ExitPolicy", "Learned", "Never", "Oracle",
           "Patience", "PolicyState", "abs_distance", "build_policy", "entropy", "known_policies", "l2_distance",
           "register_policy", "registered", "relative_distance"]

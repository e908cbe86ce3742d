"""adaptive_exit.text: early exit for Hugging Face encoders (PABEE, DeeBERT, FastBERT),
and for sequence labeling with sentence- (SENTEE) and token-level (TOKEE) exits.

Names are imported on first use (transformers is heavy; a command's ``--help`` needs none of it).
"""
from __future__ import annotations

from adaptive_exit.lazy import lazy_exports

_EXPORTS = {
    "architectures": ["OVERRIDES", "Override"],
    "encoder": ["LayerwiseEncoder"],
    "data": ["TASKS", "TextCollator", "read_glue_tsv"],
    "modeling": ["EarlyExitConfig", "EarlyExitForSequenceClassification", "EarlyExitOutput"],
    "token_model": ["EarlyExitForTokenClassification"],
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)

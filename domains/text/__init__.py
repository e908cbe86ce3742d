"""adaptive_exit.text: early exit for Hugging Face encoders (PABEE, DeeBERT, FastBERT),
and for sequence labeling with sentence- (SENTEE) and token-level (TOKEE) exits."""
from .architectures import ARCHITECTURES, EncoderAdapter
from .data import TASKS, TextCollator, read_glue_tsv
from .modeling import EarlyExitConfig, EarlyExitForSequenceClassification, EarlyExitOutput
from .token_model import EarlyExitForTokenClassification

__all__ = [
    "ARCHITECTURES", "EncoderAdapter", "TASKS", "TextCollator", "read_glue_tsv",
    "EarlyExitConfig", "EarlyExitForSequenceClassification", "EarlyExitOutput", "EarlyExitForTokenClassification",
]

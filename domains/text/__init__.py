"""adaptive_exit.text: early exit for Hugging Face encoders (PABEE, DeeBERT, FastBERT)."""
from .architectures import ARCHITECTURES, EncoderAdapter
from .data import TASKS, TextCollator, read_glue_tsv
from .modeling import EarlyExitConfig, EarlyExitForSequenceClassification, EarlyExitOutput

__all__ = [
    "ARCHITECTURES", "EncoderAdapter", "TASKS", "TextCollator", "read_glue_tsv",
    "EarlyExitConfig", "EarlyExitForSequenceClassification", "EarlyExitOutput",
]

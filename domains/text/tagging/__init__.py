"""Sequence labeling with early exit: CoNLL data, the token classifier, sentence-level
exits and TOKEE's token-level exits, self-sampling fine-tuning, entity-level metrics."""

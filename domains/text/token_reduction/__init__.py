"""Dynamic token reduction inside the text runner: TR-BERT (a policy network trained with
REINFORCE) and LTP (learned attention-based pruning), with FLOPs counted from kept tokens.

The reducer and its settings: :mod:`.reducer`; selection and packing: :mod:`.selection`;
per-row FLOPs: :mod:`.flops`; what it adds to a classifier: :mod:`.mixin`; its training
phases: :mod:`.training`.
"""
from .reducer import TokenReducer, TokenReductionConfig, gather_rows, pack

__all__ = ["TokenReducer", "TokenReductionConfig", "gather_rows", "pack"]

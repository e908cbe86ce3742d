"""Family-specific help for the layer-by-layer encoder runner (:mod:`.encoder`): overrides only.

The runner needs no table for a family whose forward builds the layers' arguments and
calls them one after another (BERT, RoBERTa, XLM-R, CamemBERT, ERNIE, Data2VecText,
ELECTRA, ALBERT, DistilBERT, MPNet, RoFormer, DeBERTa, ModernBERT, XLM-RoBERTa-XL,
MegatronBERT, ...). An override covers what runs *between* layers; a family listed in
``UNSUPPORTED`` cannot be split into per-layer stages at all and is refused with the reason.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class Override:
    """Hooks for a family the generic runner cannot reproduce on its own."""

    def after_layer(self, backbone: nn.Module, k: int, hidden: Tensor, state: dict[str, Any]) -> Tensor:
        """Applied to layer k's output (``state`` holds ``embeddings`` and ``mask2d``)."""
        return hidden

    def handles_between(self, backbone: nn.Module, module: nn.Module) -> bool:
        """Does :meth:`after_layer` take care of ``module``, which the encoder calls between layers?"""
        return False


class DebertaV2Conv(Override):
    """DeBERTa-v2 (with ``conv_kernel_size``) adds a convolution over the embeddings to the
    first layer's output (``DebertaV2Encoder.forward``: ``if i == 0 and self.conv``)."""

    def _conv(self, backbone: nn.Module) -> nn.Module | None:
        return getattr(getattr(backbone, "encoder", None), "conv", None)

    def after_layer(self, backbone, k, hidden, state):
        conv = self._conv(backbone)
        if k != 0 or conv is None:
            return hidden
        return conv(state["embeddings"], hidden, state["mask2d"])

    def handles_between(self, backbone, module):
        conv = self._conv(backbone)
        return conv is not None and any(module is m for m in conv.modules())


OVERRIDES: dict[str, Override] = {"deberta-v2": DebertaV2Conv()}

UNSUPPORTED: dict[str, str] = {
    "funnel": "Funnel Transformer pools the sequence between blocks (its length shrinks) and upsamples it in a "
              "decoder, so a layer's output is not the input of the next exit-able stage",
}

_NONE = Override()


def override_for(model_type: str) -> Override:
    return OVERRIDES.get(model_type, _NONE)

"""Where each Hugging Face encoder keeps its parts, so one adapter runs them all layer by layer.

Architecture differences live only in this table: the layer list, an optional
projection after the embeddings, the pooler's dense layer, whether the
embeddings take token type ids, and whether layers are shared (ALBERT). Layers
are called as ``layer(hidden_states, attention_mask)`` and return a Tensor
(transformers 5). Attention masks come from
``transformers.masking_utils.create_bidirectional_mask``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class Architecture:
    layers: str  # dotted path to the nn.ModuleList of layers (or ALBERT layer groups)
    projection: str | None = None  # module applied to the embeddings before layer 0, if present
    pooler_dense: str | None = None  # the pooler's Linear (applied to the first token, then tanh)
    pooler_parent: tuple[str, ...] = ()  # attributes set to None once the pooler is taken over
    token_type_ids: bool = True
    shared_groups: bool = False  # ALBERT: num_hidden_layers applications of num_hidden_groups groups


_BERT_LIKE = Architecture(layers="encoder.layer", pooler_dense="pooler.dense", pooler_parent=("pooler",))

ARCHITECTURES: dict[str, Architecture] = {
    "bert": _BERT_LIKE,  # also MiniLM, all-MiniLM-L6-v2
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": Architecture(layers="encoder.layer", projection="embeddings_project"),
    "albert": Architecture(
        layers="encoder.albert_layer_groups",
        projection="encoder.embedding_hidden_mapping_in",
        pooler_dense="pooler",
        pooler_parent=("pooler", "pooler_activation"),
        shared_groups=True,
    ),
    "distilbert": Architecture(layers="transformer.layer", token_type_ids=False),
}


def get_path(module: nn.Module, path: str | None) -> nn.Module | None:
    if path is None:
        return None
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


class EncoderAdapter:
    """Runs a backbone's embeddings and layers one at a time, using its own modules."""

    def __init__(self, backbone: nn.Module):
        config = backbone.config
        model_type = getattr(config, "model_type", None)
        if model_type not in ARCHITECTURES:
            raise ValueError(
                f"unsupported encoder architecture {model_type!r} ({type(backbone).__name__}); "
                f"supported: {', '.join(sorted(ARCHITECTURES))}. Add an entry to adaptive_exit.text.architectures.ARCHITECTURES."
            )
        if getattr(config, "is_decoder", False):
            raise ValueError(f"{type(backbone).__name__} is configured as a decoder; early exit here needs a bidirectional encoder")
        self.arch = ARCHITECTURES[model_type]
        self.backbone = backbone
        self.embeddings = getattr(backbone, "embeddings", None)
        self.layers = get_path(backbone, self.arch.layers)
        missing = [name for name, part in (("embeddings", self.embeddings), (self.arch.layers, self.layers)) if part is None]
        if missing:
            raise ValueError(f"{type(backbone).__name__} has no {', '.join(missing)}: cannot run it layer by layer")
        self.projection = get_path(backbone, self.arch.projection)
        self.num_layers = int(config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layers)

    def layer(self, k: int) -> nn.Module:
        if self.arch.shared_groups:
            groups = self.backbone.config.num_hidden_groups
            return self.layers[int(k / (self.num_layers / groups))]
        return self.layers[k]

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        if self.arch.token_type_ids and token_type_ids is not None:
            hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        else:
            hidden = self.embeddings(input_ids=input_ids)
        return self.projection(hidden) if self.projection is not None else hidden

    def attention_mask(self, hidden: Tensor, mask2d: Tensor) -> Tensor | None:
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=self.backbone.config, inputs_embeds=hidden, attention_mask=mask2d)

    def take_pooler(self) -> nn.Linear | None:
        """Detach the backbone's pooler dense layer (so no parameter goes unused)."""
        dense = get_path(self.backbone, self.arch.pooler_dense)
        if dense is None:
            return None
        for name in self.arch.pooler_parent:
            setattr(self.backbone, name, None)
        return dense

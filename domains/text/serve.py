"""The text endpoint of ``adaptive-exit serve``: ``POST /predict`` with JSON
``{"text": "..."}``, ``{"texts": [...]}`` and optionally ``text_pair`` / ``text_pairs``."""
from __future__ import annotations

from typing import Any

import torch

from adaptive_exit.deploy.serving import RequestError, ServeAdapter
from adaptive_exit.io import parse_json
from adaptive_exit.limits import limit

from .data import TextCollator


class TextServeAdapter(ServeAdapter):
    path = "/predict"
    content_types = ("application/json",)
    limit_name = "request_bytes_text"

    def __init__(self, model: Any):
        self.model = model
        self.collator = TextCollator(model.tokenizer, model.config.max_seq_length)
        self.labels = model.config.label_names

    def parse(self, body: bytes, content_type: str) -> list[dict[str, Any]]:
        try:
            data = parse_json(body.decode("utf-8"), "the request body")
        except UnicodeDecodeError as exc:
            raise RequestError(f"the body is not UTF-8 (byte {exc.start})") from None
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        max_texts, max_chars = int(limit("request_texts")), int(limit("text_chars"))
        if not isinstance(data, dict):
            raise RequestError('expected a JSON object like {"text": "..."} or {"texts": ["...", ...]}')
        unknown = set(data) - {"text", "texts", "text_pair", "text_pairs"}
        if unknown:
            raise RequestError(f"unknown fields {sorted(unknown)}; expected text/texts and optionally text_pair/text_pairs")
        texts = [data["text"]] if "text" in data else data.get("texts")
        pairs = [data["text_pair"]] if "text_pair" in data else data.get("text_pairs")
        if not isinstance(texts, list) or not texts:
            raise RequestError('"texts" must be a non-empty list of strings (or give "text")')
        if len(texts) > max_texts:
            raise RequestError(f"{len(texts)} texts in one request; at most {max_texts}", 413)
        if pairs is not None and (not isinstance(pairs, list) or len(pairs) != len(texts)):
            raise RequestError('"text_pairs" must be a list as long as "texts"')
        items = []
        for i, text in enumerate(texts):
            pair = pairs[i] if pairs is not None else None
            for what, value in (("text", text), ("text_pair", pair)):
                if value is None and what == "text_pair":
                    continue
                if not isinstance(value, str) or not value.strip():
                    raise RequestError(f"{what} {i} must be a non-empty string")
                if len(value) > max_chars:
                    raise RequestError(f"{what} {i} has {len(value)} characters; at most {max_chars}", 413)
            items.append({"text": text, "text_pair": pair, "label": None})
        if len({item["text_pair"] is None for item in items}) > 1:
            raise RequestError("either every text has a pair or none does")
        return items

    def batch_key(self, item: dict[str, Any]) -> bool:
        return item["text_pair"] is None  # single texts and pairs are tokenized in separate batches

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.collator(items)

    def item_result(self, item: dict[str, Any], output: torch.Tensor, stage: int, num_stages: int) -> dict[str, Any]:
        record: dict[str, Any] = {"exit_layer": stage + 1, "num_layers": num_stages}
        if self.model.config.task == "regression":
            record["score"] = float(output[0])
        else:
            probs = torch.softmax(output.double(), -1)
            label = int(probs.argmax())
            record["label"] = self.labels[label] if self.labels else label
            record["score"] = float(probs[label])
        return record

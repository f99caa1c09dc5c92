"""Mean pooling over the last hidden states, then a linear head.

Self-contained on purpose: ``train_final`` copies this file next to a saved model, so that
``AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)`` rebuilds the
exact model that was tuned (Hugging Face's classifiers pool the first token instead).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPoolForSequenceClassification(PreTrainedModel):
    """Any encoder ``AutoModel`` knows, classifying the masked mean of its last hidden states."""

    config_class = PreTrainedConfig
    base_model_prefix = "encoder"
    # Attention happens inside the wrapped encoder, which brings its own implementations.
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: PreTrainedConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config)
        self.dropout = nn.Dropout(float(getattr(config, "hpo_head_dropout", 0.1)))
        self.classifier = nn.Linear(config.hidden_size, int(config.num_labels or 2))
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        inputs: dict[str, torch.Tensor] = {}
        if input_ids is not None:
            inputs["input_ids"] = input_ids
        if attention_mask is None and input_ids is not None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state
        assert attention_mask is not None
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

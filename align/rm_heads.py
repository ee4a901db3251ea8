"""A mean-pooling scalar head for BERT-family encoders (``pooling: mean`` in ``wandao rm train``).

all-MiniLM-L6-v2 was trained (by sentence-transformers) to embed text as the attention-masked mean
of its last hidden states; its ``[CLS]`` state and pooler were never tuned for that. This class
reads that mean (padding excluded) through dropout and a linear layer, with the same parameter
names as ``BertForSequenceClassification`` minus the pooler (``bert.*``, ``classifier.*``), so it
loads the shipped encoder's weights as they are.

The RM folder carries this file and an ``auto_map`` entry, so plain transformers loads the model
with its head::

    AutoModelForSequenceClassification.from_pretrained(rm_dir, trust_remote_code=True)

This module imports only torch and transformers: it is copied into RM folders and must stand alone.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class BertMeanPoolingForSequenceClassification(BertPreTrainedModel):
    """BERT encoder → masked mean of the last hidden states → dropout → ``Linear(hidden, num_labels)``."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, **kwargs):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           position_ids=position_ids, inputs_embeds=inputs_embeds).last_hidden_state  # (B, T, H)
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, H)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:  # regression on the scalar, as BertForSequenceClassification does for num_labels=1
            loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)

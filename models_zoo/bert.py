"""BERT-style encoder classifier, written from scratch with Hugging Face's module names.

Separate query/key/value Linears and the attributes num_attention_heads, attention_head_size and
all_head_size mirror `transformers.BertSelfAttention`, so rules written for this model apply to HF
BERT checkpoints too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings -> LayerNorm -> dropout."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_positions: int,
        type_vocab_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("position_ids", torch.arange(max_positions)[None], persistent=False)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    """Multi-head attention with separate query/key/value Linears and an additive mask."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of {num_heads} heads")
        self.num_attention_heads = num_heads
        self.attention_head_size = hidden_size // num_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(hidden_size, self.all_head_size)
        self.key = nn.Linear(hidden_size, self.all_head_size)
        self.value = nn.Linear(hidden_size, self.all_head_size)
        self.dropout_prob = dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, all_head_size) -> (B, heads, L, head_size)."""
        batch, length, _ = x.shape
        shape = (batch, length, self.num_attention_heads, self.attention_head_size)
        return x.reshape(shape).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape
        query = self.split_heads(self.query(hidden))
        key = self.split_heads(self.key(hidden))
        value = self.split_heads(self.value(hidden))
        dropout = self.dropout_prob if self.training else 0.0
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=additive_mask, dropout_p=dropout
        )
        return context.transpose(1, 2).reshape(batch, length, -1)


class BertDenseResidual(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): BertSelfOutput and BertOutput in HF."""

    def __init__(self, in_features: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    """Self-attention followed by its output projection, residual add and LayerNorm."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden_size, num_heads, dropout)
        self.output = BertDenseResidual(hidden_size, hidden_size, dropout)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, additive_mask), hidden)


class BertIntermediate(nn.Module):
    """dense(hidden -> intermediate) -> GELU."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class BertLayer(nn.Module):
    """attention -> intermediate -> output (dense + residual + LayerNorm)."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, dropout: float):
        super().__init__()
        self.attention = BertAttention(hidden_size, num_heads, dropout)
        self.intermediate = BertIntermediate(hidden_size, intermediate_size)
        self.output = BertDenseResidual(intermediate_size, hidden_size, dropout)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        attended = self.attention(hidden, additive_mask)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    """A stack of BertLayers (`layer.0`, `layer.1`, ... as in HF)."""

    def __init__(self, layers: list[BertLayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, additive_mask)
        return hidden


class BertPooler(nn.Module):
    """dense -> tanh on the first ([CLS]) token."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) with 1 = token, 0 = padding -> (B, 1, 1, L) of 0 / dtype-min, added to the scores."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


class BertModel(nn.Module):
    """embeddings -> encoder -> pooler; returns (sequence_output, pooled_output) like HF."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        c = config
        self.embeddings = BertEmbeddings(
            c.vocab_size, c.hidden_size, c.max_positions, c.type_vocab_size, c.dropout
        )
        layers = [
            BertLayer(c.hidden_size, c.num_heads, c.intermediate_size, c.dropout)
            for _ in range(c.num_layers)
        ]
        self.encoder = BertEncoder(layers)
        self.pooler = BertPooler(c.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)
        mask = additive_attention_mask(attention_mask, hidden.dtype)
        sequence = self.encoder(hidden, mask)
        return sequence, self.pooler(sequence)


@dataclass(frozen=True)
class BertConfig:
    """Sizes of a BERT encoder (the subset of HF BertConfig this model uses)."""

    vocab_size: int = 100
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 64
    max_positions: int = 16
    type_vocab_size: int = 2
    dropout: float = 0.1


class BertForSequenceClassification(nn.Module):
    """BertModel -> dropout -> classifier on the pooled [CLS] token.

    forward(input_ids, attention_mask=None, token_type_ids=None) -> (B, num_classes) logits.
    Position embeddings cover max(seq_len, max_positions or 0) tokens.

    >>> model = BertForSequenceClassification().eval()
    >>> model(torch.zeros(2, 16, dtype=torch.long)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        vocab_size: int = 100,
        hidden_size: int = 32,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: int = 64,
        seq_len: int = 16,
        max_positions: int | None = None,
        type_vocab_size: int = 2,
        dropout: float = 0.1,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            intermediate_size=intermediate_size,
            max_positions=max(seq_len, max_positions or 0),
            type_vocab_size=type_vocab_size,
            dropout=dropout,
        )
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _, pooled = self.bert(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(pooled))

"""ML-Decoder: a classification head that decodes the backbone's spatial tokens with class queries.

Ridnik et al., "ML-Decoder: Scalable and Versatile Classification Head" (Alibaba-MIIL/ML_Decoder,
``src_files/ml_decoder/ml_decoder.py``). The last feature map ``(B, C, H, W)`` becomes ``H*W`` tokens,
projected to ``embed_dim`` (768) and passed through a ReLU. A fixed set of query embeddings (not learned;
``min(100, num_classes)`` of them) attends to the tokens in one transformer decoder layer that has no
self-attention: the queries are the same for every image, so attending to each other would be a constant.
Each decoded query then gives ``k = ceil(num_classes / queries)`` logits through its own ``[embed_dim, k]``
projection ("group fully-connected"), the outputs are cut to ``num_classes`` and a per-class bias is added.

Parameter names follow the official code (``decoder.embed_standart``, ``decoder.query_embed.weight``,
``decoder.layers.0.*``, ``decoder.duplicate_pooling``, ``decoder.duplicate_pooling_bias``), so the
published checkpoints' ``head.*`` tensors load as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_MAX_QUERIES = 100  # the paper's group decoding: at most 100 queries, several classes per query
MARKER = "head.decoder.duplicate_pooling"  # a key only a model with an ML-Decoder head has


def default_num_queries(num_classes: int) -> int:
    """The paper's number of queries for ``num_classes``: ``min(100, num_classes)``."""
    return min(DEFAULT_MAX_QUERIES, num_classes)


class QueryEmbedding(nn.Module):
    """The fixed query embeddings, ``(num_queries, embed_dim)``: a buffer, so no optimiser ever updates it.

    Stored as ``weight`` (the official code's frozen ``nn.Embedding``), drawn from N(0, 1) like it.
    """

    weight: torch.Tensor  # a buffer

    def __init__(self, num_queries: int, embed_dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.empty(num_queries, embed_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)


class CrossAttentionDecoderLayer(nn.Module):
    """One post-norm transformer decoder layer whose self-attention is replaced by ``norm1(q + dropout(q))``.

    The official layer keeps the residual add and ``norm1`` of the removed self-attention block; they are
    kept here too so published weights (``norm1``) give the published outputs. Then cross-attention to the
    image tokens (``multihead_attn``) and a ReLU feed-forward (``linear1``, ``linear2``), each followed by
    a residual add and a LayerNorm (``norm2``, ``norm3``).
    """

    def __init__(self, embed_dim: int, num_heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim)
        self.multihead_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.linear1 = nn.Linear(embed_dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, embed_dim)
        self.norm3 = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``queries`` (B, Q, D) attend to ``tokens`` (B, T, D); returns (B, Q, D)."""
        x = self.norm1(queries + self.dropout1(queries))
        attended = self.multihead_attn(x, tokens, tokens, need_weights=False)[0]
        x = self.norm2(x + self.dropout2(attended))
        fed = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm3(x + self.dropout3(fed))


class _Decoder(nn.Module):
    """The official ``head.decoder`` container: projection, queries, decoder layers and group FC weights."""

    def __init__(self, in_features: int, num_classes: int, num_queries: int, embed_dim: int, num_heads: int,
                 ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.group_size = math.ceil(num_classes / num_queries)
        self.embed_standart = nn.Linear(in_features, embed_dim)  # the official name, misspelt
        self.query_embed = QueryEmbedding(num_queries, embed_dim)
        self.layers = nn.ModuleList([CrossAttentionDecoderLayer(embed_dim, num_heads, ff_dim, dropout)])
        self.duplicate_pooling = nn.Parameter(torch.empty(num_queries, embed_dim, self.group_size))
        self.duplicate_pooling_bias = nn.Parameter(torch.empty(num_classes))


class MLDecoderHead(nn.Module):
    """The ML-Decoder classification head: a feature map ``(B, in_features, H, W)`` -> logits ``(B, num_classes)``.

    ``num_queries`` defaults to ``min(100, num_classes)`` (the paper's group decoding; the official
    OpenImages model uses 200); each query gives ``ceil(num_classes / num_queries)`` classes. The other
    defaults are the paper's: ``embed_dim`` 768, 8 heads, feed-forward 2048, dropout 0.1.

    Raises :class:`ValueError` for fewer than one class, or a number of queries outside ``1..num_classes``.
    """

    def __init__(self, in_features: int, num_classes: int, *, num_queries: int | None = None,
                 embed_dim: int = 768, num_heads: int = 8, ff_dim: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"an ML-Decoder head needs at least one class, got num_classes={num_classes}")
        num_queries = default_num_queries(num_classes) if num_queries is None else num_queries
        if not 1 <= num_queries <= num_classes:
            raise ValueError(f"num_queries={num_queries} must lie in 1..num_classes ({num_classes})")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be a multiple of num_heads={num_heads}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.embed_dim = embed_dim
        self.decoder = _Decoder(in_features, num_classes, num_queries, embed_dim, num_heads, ff_dim, dropout)
        self.reset_parameters()

    @property
    def group_size(self) -> int:
        """Classes per query, ``k = ceil(num_classes / num_queries)``."""
        return self.decoder.group_size

    def reset_parameters(self) -> None:
        """The official initialisation: PyTorch's defaults for the projection and the decoder layer, N(0, 1)
        queries, Xavier-normal group weights and a zero class bias."""
        decoder = self.decoder
        decoder.embed_standart.reset_parameters()
        decoder.query_embed.reset_parameters()
        for layer in decoder.layers:
            for module in layer.modules():
                if isinstance(module, (nn.Linear, nn.LayerNorm)):
                    module.reset_parameters()
            cast(CrossAttentionDecoderLayer, layer).multihead_attn._reset_parameters()
        nn.init.xavier_normal_(decoder.duplicate_pooling)
        nn.init.zeros_(decoder.duplicate_pooling_bias)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for a feature map ``(B, in_features, H, W)`` (or tokens ``(B, T, in_features)``).

        With ``pre_logits`` the decoded queries ``(B, num_queries, embed_dim)`` are returned instead,
        before the group fully-connected projection.
        """
        decoder = self.decoder
        tokens = x.flatten(2).transpose(1, 2) if x.dim() == 4 else x
        tokens = F.relu(decoder.embed_standart(tokens))
        queries = decoder.query_embed.weight.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        for layer in decoder.layers:
            queries = layer(queries, tokens)
        if pre_logits:
            return queries
        # Group FC: query q gives classes q*k .. q*k + k - 1 through its own [embed_dim, k] weights.
        grouped = torch.matmul(queries.transpose(0, 1), decoder.duplicate_pooling)  # (Q, B, k)
        logits = grouped.transpose(0, 1).flatten(1)[:, :self.num_classes]
        return logits + decoder.duplicate_pooling_bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"num_queries={self.num_queries}, group_size={self.group_size}, embed_dim={self.embed_dim}")


def ml_decoder_options(shapes: Mapping[str, object], prefix: str = "head.") -> dict:
    """The :class:`MLDecoderHead` sizes a state dict's ML-Decoder tensors have (values: tensors or shapes).

    Returns ``{"num_classes", "num_queries", "embed_dim", "ff_dim"}``, or an empty dict when there is no
    ML-Decoder under ``prefix``. The number of attention heads is not visible in the shapes (8 is assumed).
    """
    def shape(key: str) -> tuple[int, ...] | None:
        value = shapes.get(prefix + key)
        if value is None:
            return None
        return tuple(value.shape) if hasattr(value, "shape") else tuple(cast(Sequence[int], value))

    pooling, bias = shape("decoder.duplicate_pooling"), shape("decoder.duplicate_pooling_bias")
    linear1 = shape("decoder.layers.0.linear1.weight")
    if pooling is None or bias is None or len(pooling) != 3:
        return {}
    options = dict(num_classes=bias[0], num_queries=pooling[0], embed_dim=pooling[1])
    if linear1 is not None:
        options["ff_dim"] = linear1[0]
    return options


__all__ = ["DEFAULT_MAX_QUERIES", "MARKER", "CrossAttentionDecoderLayer", "MLDecoderHead", "QueryEmbedding",
           "default_num_queries", "ml_decoder_options"]

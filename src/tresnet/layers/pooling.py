"""Fast global average pooling: a mean over the flattened spatial dimensions."""

from __future__ import annotations

import torch
from torch import nn


class FastGlobalAvgPool(nn.Module):
    """``(N, C, H, W) -> (N, C)`` (or ``(N, C, 1, 1)`` with ``flatten=False``)."""

    def __init__(self, flatten: bool = True) -> None:
        super().__init__()
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=not self.flatten)

"""Squeeze-and-excitation, in TResNet's optimised form (1x1 convs with bias, fast mean)."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """``x * sigmoid(fc2(relu(fc1(mean(x)))))`` with ``fc1``/``fc2`` as 1x1 convs with bias."""

    def __init__(self, channels: int, reduction_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduction_channels, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduction_channels, channels, kernel_size=1, bias=True)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel scale ``(N, C, 1, 1)`` that :meth:`forward` multiplies ``x`` by."""
        s = x.mean((2, 3), keepdim=True)
        return self.fc2(self.act(self.fc1(s))).sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

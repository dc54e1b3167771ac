"""SpaceToDepth stem of TResNet, in the channel order of the official release."""

from __future__ import annotations

import torch
from torch import nn

BLOCK_SIZE = 4


def space_to_depth(x: torch.Tensor, block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """Fold each ``block_size x block_size`` patch into channels, in one copy.

    Output channel ``(row * block_size + col) * C + c``: colour is the fastest index, as in the
    official TResNet (this is not ``F.pixel_unshuffle``'s order). A channels-last input gives a
    channels-last output.
    """
    n, c, h, w = x.shape
    b = block_size
    if c > 1 and not torch.jit.is_tracing() and x.is_contiguous(memory_format=torch.channels_last):
        y = x.permute(0, 2, 3, 1).reshape(n, h // b, b, w // b, b, c)
        y = y.permute(0, 1, 3, 2, 4, 5).reshape(n, h // b, w // b, b * b * c)
        return y.permute(0, 3, 1, 2)
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, b * b * c, h // b, w // b)


class SpaceToDepth(nn.Module):
    """Module form of :func:`space_to_depth`."""

    def __init__(self, block_size: int = BLOCK_SIZE) -> None:
        super().__init__()
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return space_to_depth(x, self.block_size)

"""GENet's fused parts: its residual blocks (XX, BL and DW) with the last conv, the add and the ReLU in one step.

Every GENet unit is a plain conv (full, 1x1 or depthwise) + BatchNorm + ReLU or nothing; folded, each is a
:class:`~tresnet.deploy.folding.FusedConvAct` (on CPU one oneDNN conv with the ReLU as a post-op). A block
becomes :class:`FusedGENetBlock`: ``relu(last(branch(x)) + shortcut(x))``, whose last conv adds the shortcut
and applies the ReLU to its accumulator where oneDNN runs it. Drop path is the identity in eval.
"""

from __future__ import annotations

import torch
from torch import nn

from tresnet.deploy.folding import FusedConvAct, conv_add_relu, fused_tail
from tresnet.layers import ConvNormAct
from tresnet.models.genet import BottleneckBlock, GENet, XXBlock

# The branch's units of each block type, in forward order (the last one ends in the residual add).
_BRANCH = {"XXBlock": ("conv1_kxk", "conv2_kxk"), "BottleneckBlock": ("conv1_1x1", "conv2_kxk", "conv3_1x1")}


class FusedGENetBlock(nn.Module):
    """A folded :class:`~tresnet.models.genet.XXBlock` or :class:`~tresnet.models.genet.BottleneckBlock`.

    ``branch`` holds the folded units but the last (3x3 convs, or 1x1 and 3x3 / depthwise 3x3, with their
    ReLU), ``last`` the last one (no activation), ``shortcut`` the folded 1x1 projection or None for the
    identity. The block's input is never written to (a features-only model returns it).
    """

    def __init__(self, block: XXBlock | BottleneckBlock) -> None:
        super().__init__()
        kind = "XXBlock" if isinstance(block, XXBlock) else "BottleneckBlock"
        units = [getattr(block, name) for name in _BRANCH[kind]]
        self.branch = nn.Sequential(*(FusedConvAct(unit) for unit in units[:-1]))
        self.last = fused_tail(units[-1], kind)
        self.shortcut = FusedConvAct(block.shortcut) if isinstance(block.shortcut, ConvNormAct) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return conv_add_relu(self.branch(x), self.last.conv, shortcut)


def fuse_genet_stem(model: nn.Module, channels_last: bool) -> None:
    """Fold a GENet's stem in place; with ``channels_last`` it also makes the image channels-last."""
    if isinstance(model, GENet) and isinstance(model.stem, ConvNormAct):
        model.stem = FusedConvAct(model.stem, channels_last_input=channels_last)


BLOCKS = (XXBlock, BottleneckBlock)

__all__ = ["BLOCKS", "FusedGENetBlock", "fuse_genet_stem"]

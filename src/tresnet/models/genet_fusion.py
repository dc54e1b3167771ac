"""GENet's fusion rules: its stem, and its residual blocks (XX, BL and DW) with the last conv, the add and the
ReLU in one step.

Every GENet unit is a plain conv (full, 1x1 or depthwise) + BatchNorm + ReLU or nothing; folded, each is a
:class:`~tresnet.layers.fused.FusedConvAct` (on CPU one oneDNN conv with the ReLU as a post-op). A block
becomes :class:`FusedGENetBlock`: ``relu(last(branch(x)) + shortcut(x))``, whose last conv adds the shortcut
and applies the ReLU to its accumulator where oneDNN runs it. Drop path is the identity in eval.

:func:`fusion_rules` gives them to the family (:data:`tresnet.models.genet.FAMILY`), which passes its network
and block classes in (this module does not import them: genet.py imports this).
"""

from __future__ import annotations

import functools
from typing import cast

import torch
from torch import nn

from tresnet.layers.conv_norm_act import ConvNormAct
from tresnet.layers.fused import FusedConvAct, FusionRule, FusionWalk, conv_add_relu, fused_tail


class FusedGENetBlock(nn.Module):
    """A folded :class:`~tresnet.models.genet.XXBlock` or :class:`~tresnet.models.genet.BottleneckBlock`.

    ``branch`` holds the folded units but the last (the block's ``branch_units``, in forward order: 3x3 convs,
    or 1x1 and 3x3 / depthwise 3x3, with their ReLU), ``last`` the last one (no activation), ``shortcut`` the
    folded 1x1 projection or None for the identity. The block's input is never written to (a features-only
    model returns it).
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        units = [getattr(block, name) for name in cast(tuple[str, ...], block.branch_units)]
        self.branch = nn.Sequential(*(FusedConvAct(unit) for unit in units[:-1]))
        self.last = fused_tail(units[-1], type(block).__name__)
        self.shortcut = FusedConvAct(block.shortcut) if isinstance(block.shortcut, ConvNormAct) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return conv_add_relu(self.branch(x), self.last.conv, shortcut)


def _fuse_block(module: nn.Module, walk: FusionWalk, *, blocks: tuple[type[nn.Module], ...]) -> nn.Module | None:
    return FusedGENetBlock(module) if isinstance(module, blocks) else None


def _fuse_stem(module: nn.Module, walk: FusionWalk, *, network: type[nn.Module]) -> nn.Module | None:
    """The GENet ``module`` with its stem folded (taking the image channels-last when the walk is) and its other
    parts fused; None for any other module."""
    if not isinstance(module, network) or not isinstance(module.stem, ConvNormAct):
        return None
    module.stem = FusedConvAct(module.stem, channels_last_input=walk.channels_last)
    return walk.fuse_children(module)


def fusion_rules(network: type[nn.Module], blocks: tuple[type[nn.Module], ...]) -> tuple[FusionRule, ...]:
    """GENet's rules: the stem of a ``network`` folded, its residual ``blocks`` (each naming its
    ``branch_units``) as :class:`FusedGENetBlock`."""
    return (functools.partial(_fuse_block, blocks=blocks), functools.partial(_fuse_stem, network=network))


__all__ = ["FusedGENetBlock", "fusion_rules"]

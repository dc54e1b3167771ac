"""TResNet's fusion rules: the SpaceToDepth stem as one conv, the residual blocks in one step.

- the SpaceToDepth stem and ``conv1`` are one :class:`FusedStem`: a 12x12 conv with stride 4 on the
  image, which sums exactly the products that ``conv1`` (3x3 on the 4x4-folded image) sums;
- each residual block (:class:`FusedBlock`) ends in one step: ``relu(branch + shortcut)``, with the SE
  multiply (Basic block) or the last conv (Bottleneck) folded into it; its squeeze-and-excitation is a
  :class:`~tresnet.layers.fused.FusedSqueezeExcite` (``linear`` on the pooled vector).

:func:`fusion_rules` gives them to the family (:data:`tresnet.models.tresnet.FAMILY`), which passes its
block classes in (this module does not import the network's: that one imports this).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from tresnet.errors import ConfigError
from tresnet.layers.conv_norm_act import ConvNormAct
from tresnet.layers.fused import (
    FusedConvAct,
    FusedSqueezeExcite,
    FusionRule,
    FusionWalk,
    conv_act,
    conv_add_relu,
    fold_batchnorm,
    fused_tail,
)
from tresnet.layers.squeeze_excite import SqueezeExcite
from tresnet.layers.stem import SpaceToDepth


class FusedStem(nn.Module):
    """SpaceToDepth(4) then ``conv1`` (3x3, padding 1) as one 12x12 conv with stride 4 and padding 4.

    Output pixel (i, j) of ``conv1`` sums its weights times the image pixels of rows ``4i-4 .. 4i+7``
    and the same columns; the 12x12 kernel holds those weights at those offsets, and one folded
    pixel of zero padding is four image pixels of zeros: the products summed are the same.
    The input is made channels-last here when the model is.
    """

    def __init__(self, s2d: SpaceToDepth, unit: ConvNormAct, channels_last: bool = True) -> None:
        super().__init__()
        conv = fold_batchnorm(unit.conv, unit.bn)
        b = s2d.block_size
        out_ch, folded_ch, k, _ = conv.weight.shape
        if (conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1
                or conv.dilation != (1, 1) or folded_ch % (b * b)):
            raise ConfigError("FusedStem needs a 3x3 conv with stride 1 and padding 1 after SpaceToDepth")
        in_ch = folded_ch // (b * b)
        # Folded channel (row * b + col) * in_ch + c at kernel tap (di, dj) is image pixel
        # (b * di + row, b * dj + col) of colour c, relative to the window's corner.
        w = conv.weight.detach().reshape(out_ch, b, b, in_ch, k, k)
        w = w.permute(0, 3, 4, 1, 5, 2).reshape(out_ch, in_ch, k * b, k * b)
        self.conv = nn.Conv2d(in_ch, out_ch, k * b, stride=b, padding=b, bias=True, device=w.device,
                              dtype=w.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(w)
            cast(torch.Tensor, self.conv.bias).copy_(cast(torch.Tensor, conv.bias))  # both convs have a bias
        self.activation: str = unit.bn.activation
        self.activation_param: float = float(unit.bn.activation_param)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return conv_act(x, self.conv, self.activation, self.activation_param)


class _ResidualBlockParts(Protocol):
    """What :class:`FusedBlock` reads of a TResNet block (``conv3`` only where the block has one)."""

    conv1: ConvNormAct
    conv2: ConvNormAct
    conv3: ConvNormAct
    se: SqueezeExcite | None
    downsample: nn.Module | None


class FusedBlock(nn.Module):
    """A folded TResNet ``BasicBlock`` or ``Bottleneck`` (drop-path is the identity in eval; the block classes are
    the family's, handed in by :func:`fusion_rules`, so this module does not import the network).

    Basic: ``relu(shortcut + conv2(conv1(x)) * gate)``; Bottleneck:
    ``relu(conv3(se(conv2(conv1(x)))) + shortcut)``, the last step one fused conv where possible.
    A block with a ``conv3`` is a Bottleneck. The block's input is never written to (a features-only model
    returns it). ``fuse_module`` folds the downsample path (:meth:`~tresnet.layers.fused.FusionWalk.fuse`).
    """

    def __init__(self, block: nn.Module, fuse_module: Callable[[nn.Module], nn.Module]) -> None:
        super().__init__()
        parts = cast(_ResidualBlockParts, block)
        self.conv1 = FusedConvAct(parts.conv1)
        self.conv2 = FusedConvAct(parts.conv2)
        self.conv3 = fused_tail(parts.conv3, "Bottleneck") if hasattr(block, "conv3") else None
        self.se = FusedSqueezeExcite(parts.se) if parts.se is not None else None
        self.downsample = fuse_module(parts.downsample) if parts.downsample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        if self.conv3 is not None:
            if self.se is not None:
                out = self.se(out)
            return conv_add_relu(out, self.conv3.conv, shortcut)
        if self.se is None:
            return F.relu_(out.add_(shortcut))
        if torch.jit.is_tracing():
            # The ONNX exporter's addcmul promotes fp16 to fp32; the two ops export as they are.
            return F.relu_(out * self.se.gate(out) + shortcut)
        return F.relu_(torch.addcmul(shortcut, out, self.se.gate(out)))


def fuse_stem(module: nn.Module, walk: FusionWalk) -> nn.Module | None:
    """Rule: a Sequential holding a SpaceToDepth followed by a blur-free ``ConvNormAct`` (TResNet's body), with
    each such pair as one :class:`FusedStem` and its other children fused; None for any other module.

    The conv's slot becomes an identity, so ``body.conv1(body.s2d(x))`` still means the stem's output.
    """
    if not isinstance(module, nn.Sequential):
        return None
    names = list(module._modules)
    pairs = [(first, second) for first, second in zip(names, names[1:], strict=False)
             if isinstance(module._modules[first], SpaceToDepth)
             and isinstance(module._modules[second], ConvNormAct) and module._modules[second].aa is None]
    if not pairs:
        return None
    for first, second in pairs:
        s2d, unit = cast(SpaceToDepth, module._modules[first]), cast(ConvNormAct, module._modules[second])
        module._modules[first] = FusedStem(s2d, unit, walk.channels_last)
        module._modules[second] = nn.Identity()
    return walk.fuse_children(module)


def _fuse_block(module: nn.Module, walk: FusionWalk, *, blocks: tuple[type[nn.Module], ...]) -> FusedBlock | None:
    return FusedBlock(module, walk.fuse) if isinstance(module, blocks) else None


def fusion_rules(blocks: tuple[type[nn.Module], ...]) -> tuple[FusionRule, ...]:
    """TResNet's rules: its residual ``blocks`` (BasicBlock, Bottleneck) as :class:`FusedBlock`, its stem as
    :class:`FusedStem`."""
    return (functools.partial(_fuse_block, blocks=blocks), fuse_stem)


__all__ = ["FusedBlock", "FusedStem", "fuse_stem", "fusion_rules"]

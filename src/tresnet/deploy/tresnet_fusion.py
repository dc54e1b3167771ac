"""TResNet's fused parts: the SpaceToDepth stem as one conv, SE on vectors, the residual blocks in one step.

- the SpaceToDepth stem and ``conv1`` are one :class:`FusedStem`: a 12x12 conv with stride 4 on the
  image, which sums exactly the products that ``conv1`` (3x3 on the 4x4-folded image) sums;
- squeeze-and-excitation is a :class:`FusedSqueezeExcite` (``linear`` on the pooled vector instead of
  1x1 convs on a 1x1 map);
- each residual block (:class:`FusedBlock`) ends in one step: ``relu(branch + shortcut)``, with the SE
  multiply (Basic block) or the last conv (Bottleneck) folded into it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tresnet.deploy.folding import FusedConvAct, conv_act, conv_add_relu, fold_batchnorm, fused_tail
from tresnet.errors import ConfigError
from tresnet.layers import ConvNormAct, SpaceToDepth, SqueezeExcite
from tresnet.models.tresnet import BasicBlock, Bottleneck


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
            self.conv.bias.copy_(conv.bias)
        self.activation: str = unit.bn.activation
        self.activation_param: float = float(unit.bn.activation_param)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return conv_act(x, self.conv, self.activation, self.activation_param)


class FusedSqueezeExcite(nn.Module):
    """Squeeze-and-excitation with the 1x1 convs as ``linear`` on the pooled ``(N, C)`` vector.

    :meth:`gate` gives ``sigmoid(fc2(relu(fc1(mean(x)))))`` shaped ``(N, C, 1, 1)``; ``forward``
    multiplies it in.
    """

    def __init__(self, se: SqueezeExcite) -> None:
        super().__init__()
        self.fc1 = _conv1x1_to_linear(se.fc1)
        self.fc2 = _conv1x1_to_linear(se.fc2)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu_(self.fc1(x.mean((2, 3))))
        return torch.sigmoid(self.fc2(s))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def _conv1x1_to_linear(conv: nn.Conv2d) -> nn.Linear:
    linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.detach().flatten(1))
        if conv.bias is not None:
            linear.bias.copy_(conv.bias.detach())
    return linear


class FusedBlock(nn.Module):
    """A folded :class:`BasicBlock` or :class:`Bottleneck` (drop-path is the identity in eval).

    Basic: ``relu(shortcut + conv2(conv1(x)) * gate)``; Bottleneck:
    ``relu(conv3(se(conv2(conv1(x)))) + shortcut)``, the last step one fused conv where possible.
    The block's input is never written to (a features-only model returns it). ``fuse_module`` folds
    the downsample path (the walker of :mod:`tresnet.deploy.fusion`).
    """

    def __init__(self, block: BasicBlock | Bottleneck, fuse_module: Callable[[nn.Module], nn.Module]) -> None:
        super().__init__()
        self.conv1 = FusedConvAct(block.conv1)
        self.conv2 = FusedConvAct(block.conv2)
        self.conv3 = fused_tail(block.conv3, "Bottleneck") if isinstance(block, Bottleneck) else None
        self.se = FusedSqueezeExcite(block.se) if block.se is not None else None
        self.downsample = fuse_module(block.downsample) if block.downsample is not None else None

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


def fuse_stem_pair(child: nn.Module, following: nn.Module | None, channels_last: bool) -> FusedStem | None:
    """The :class:`FusedStem` of a SpaceToDepth followed (in a Sequential) by a blur-free ``ConvNormAct``, else None."""
    if isinstance(child, SpaceToDepth) and isinstance(following, ConvNormAct) and following.aa is None:
        return FusedStem(child, following, channels_last)
    return None


BLOCKS = (BasicBlock, Bottleneck)

__all__ = ["BLOCKS", "FusedBlock", "FusedSqueezeExcite", "FusedStem", "fuse_stem_pair"]

"""Inference-time fusion of a TResNet: every BatchNorm folded into the conv before it, plus other exact rewrites.

:func:`fuse` returns a deep copy in which

- every ``ConvNormAct`` (conv -> BN + activation -> blur) is a :class:`FusedConvAct`: one conv with
  bias (the BN folded in) -> the same activation, in place -> the same blur, when there is one;
- the SpaceToDepth stem and ``conv1`` are one :class:`FusedStem`: a 12x12 conv with stride 4 on the
  image, which sums exactly the products that ``conv1`` (3x3 on the 4x4-folded image) sums;
- squeeze-and-excitation is a :class:`FusedSqueezeExcite` (``linear`` on the pooled vector instead of
  1x1 convs on a 1x1 map);
- each residual block adds its shortcut and applies its ReLU in place.

Each rewrite is exact in real arithmetic; in fp32 the fused model differs from the eval-mode
original only by rounding (about 1e-6 relative at the logits).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from tresnet.errors import ConfigError
from tresnet.layers import AntiAliasDownsample, ConvNormAct, SpaceToDepth, SqueezeExcite
from tresnet.layers.inplace_abn import InPlaceABN, activate_, invertible_scale
from tresnet.models.tresnet import BasicBlock, Bottleneck


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv with bias that computes ``bn(conv(x))`` of the eval-mode ``bn`` (activation excluded).

    Folds with the plain BatchNorm formula ``scale = weight / sqrt(running_var + eps)``, in float64;
    for In-Place ABN the weight is first clamped as its forward does (``|weight| >= eps``).
    Raises :class:`~tresnet.errors.ConfigError` when ``bn`` has no running statistics (it then
    normalises with batch statistics, which no conv can express).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError(f"cannot fold {type(bn).__name__} without running statistics "
                          f"(track_running_stats=False): it normalises with batch statistics")
    if isinstance(bn, InPlaceABN):
        gamma = invertible_scale(bn.weight, bn.eps).double()
    elif bn.weight is not None:
        gamma = bn.weight.detach().double()
    else:
        gamma = torch.ones_like(bn.running_var, dtype=torch.float64)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(gamma)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = beta - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double() * scale
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight.detach().double() * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bias)
    return fused


class BlurDownsample(nn.Module):
    """TResNet's anti-alias blur (reflect pad 1, fixed 3x3 binomial, stride 2), export-friendly.

    Same arithmetic as :class:`tresnet.layers.AntiAliasDownsample`. While exporting to ONNX the
    reflect padding is written as slices and concatenations, which every runtime supports.
    """

    def __init__(self, aa: AntiAliasDownsample) -> None:
        super().__init__()
        self.channels = aa.channels
        self.stride = aa.stride
        self.register_buffer("filt", aa.filt.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            x = torch.cat([x[:, :, 1:2], x, x[:, :, -2:-1]], dim=2)
            x = torch.cat([x[:, :, :, 1:2], x, x[:, :, :, -2:-1]], dim=3)
        else:
            x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.filt.to(dtype=x.dtype), stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}"


class FusedConvAct(nn.Module):
    """``conv`` (BatchNorm folded in) -> activation in place -> optional blur: a folded ``ConvNormAct``."""

    def __init__(self, unit: ConvNormAct) -> None:
        super().__init__()
        self.conv = fold_batchnorm(unit.conv, unit.bn)
        self.activation: str = unit.bn.activation
        self.activation_param: float = float(unit.bn.activation_param)
        self.aa = BlurDownsample(unit.aa) if unit.aa is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = activate_(self.conv(x), self.activation, self.activation_param)
        if self.aa is not None:
            x = self.aa(x)
        return x

    def extra_repr(self) -> str:
        return f"activation={self.activation}, activation_param={self.activation_param}"


class FusedStem(nn.Module):
    """SpaceToDepth(4) then ``conv1`` (3x3, padding 1) as one 12x12 conv with stride 4 and padding 4.

    Output pixel (i, j) of ``conv1`` sums its weights times image pixels of rows ``4i-4 .. 4i+7`` and
    the same columns; the 12x12 kernel holds those weights at those offsets, and the zero padding of
    one folded pixel is four image pixels of zeros. So the products summed are the same.
    """

    def __init__(self, s2d: SpaceToDepth, unit: ConvNormAct) -> None:
        super().__init__()
        conv = fold_batchnorm(unit.conv, unit.bn)
        b = s2d.block_size
        out_ch, folded_ch, k, _ = conv.weight.shape
        if k != 3 or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1 or folded_ch % (b * b):
            raise ConfigError("FusedStem needs a 3x3 conv with stride 1 and padding 1 after SpaceToDepth")
        in_ch = folded_ch // (b * b)
        # folded channel (row * b + col) * in_ch + c at kernel tap (di, dj) is image pixel
        # (b * di + row, b * dj + col) of colour c.
        w = conv.weight.detach().view(out_ch, b, b, in_ch, k, k)
        w = w.permute(0, 3, 4, 1, 5, 2).reshape(out_ch, in_ch, k * b, k * b)
        self.conv = nn.Conv2d(in_ch, out_ch, k * b, stride=b, padding=b, bias=True,
                              device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(w)
            self.conv.bias.copy_(conv.bias)
        self.activation: str = unit.bn.activation
        self.activation_param: float = float(unit.bn.activation_param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activate_(self.conv(x), self.activation, self.activation_param)


class FusedSqueezeExcite(nn.Module):
    """``x * sigmoid(fc2(relu(fc1(mean(x)))))`` with the 1x1 convs as ``linear`` on ``(N, C)``."""

    def __init__(self, se: SqueezeExcite) -> None:
        super().__init__()
        self.fc1 = _conv1x1_to_linear(se.fc1)
        self.fc2 = _conv1x1_to_linear(se.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu_(self.fc1(x.mean((2, 3))))
        s = torch.sigmoid(self.fc2(s))
        return x * s[:, :, None, None]


def _conv1x1_to_linear(conv: nn.Conv2d) -> nn.Linear:
    linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.detach().flatten(1))
        if conv.bias is not None:
            linear.bias.copy_(conv.bias.detach())
    return linear


class FusedBlock(nn.Module):
    """A folded :class:`BasicBlock` or :class:`Bottleneck`: the branch, then ``relu_(branch + shortcut)``."""

    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        super().__init__()
        self.conv1 = FusedConvAct(block.conv1)
        self.conv2 = FusedConvAct(block.conv2)
        self.conv3 = FusedConvAct(block.conv3) if isinstance(block, Bottleneck) else None
        self.se = FusedSqueezeExcite(block.se) if block.se is not None else None
        self.downsample = _fuse_children(block.downsample) if block.downsample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        if self.se is not None:
            out = self.se(out)
        if self.conv3 is not None:
            out = self.conv3(out)
        return F.relu_(out.add_(shortcut))


def _fuse_children(module: nn.Module) -> nn.Module:
    """Replace, in place and recursively, every fusable child of ``module``; return ``module``."""
    if isinstance(module, (BasicBlock, Bottleneck)):
        return FusedBlock(module)
    if isinstance(module, ConvNormAct):
        return FusedConvAct(module)
    if isinstance(module, SqueezeExcite):
        return FusedSqueezeExcite(module)
    names = list(module._modules)
    for i, name in enumerate(names):
        child = module._modules[name]
        if child is None:
            continue
        nxt = module._modules[names[i + 1]] if i + 1 < len(names) else None
        if isinstance(module, nn.Sequential) and isinstance(child, SpaceToDepth) and isinstance(nxt, ConvNormAct):
            module._modules[name] = FusedStem(child, nxt)
            module._modules[names[i + 1]] = nn.Identity()
            continue
        if isinstance(child, nn.Identity):
            continue
        module._modules[name] = _fuse_children(child)
    return module


def fuse(model: nn.Module) -> nn.Module:
    """An eval-mode inference copy of ``model`` with every BatchNorm folded into the conv before it.

    ``model`` (a TResNet, a features-only TResNet, or any module built from tresnet layers and
    blocks) is left untouched. The copy computes the same function as ``model.eval()`` up to fp32
    rounding; its parameters do not require gradients. Raises :class:`~tresnet.errors.ConfigError`
    for a BatchNorm without running statistics.
    """
    fused = copy.deepcopy(model)
    fused = _fuse_children(fused)
    fused.eval()
    fused.requires_grad_(False)
    return fused


__all__ = ["BlurDownsample", "FusedBlock", "FusedConvAct", "FusedSqueezeExcite", "FusedStem", "fold_batchnorm",
           "fuse"]

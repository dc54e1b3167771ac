"""Inference-time fusion of a TResNet: every BatchNorm folded into the conv before it, plus other exact rewrites.

:func:`fuse` returns a deep copy in which

- every ``ConvNormAct`` (conv -> BN + activation -> blur) is a :class:`FusedConvAct`: one conv with
  bias (the BN folded in) -> the same activation -> the same blur, when there is one (a copy of the
  :class:`~tresnet.layers.AntiAliasDownsample` with ``export_friendly`` on, so that an ONNX export
  has no ``Pad`` node);
- the SpaceToDepth stem and ``conv1`` are one :class:`FusedStem`: a 12x12 conv with stride 4 on the
  image, which sums exactly the products that ``conv1`` (3x3 on the 4x4-folded image) sums;
- squeeze-and-excitation is a :class:`FusedSqueezeExcite` (``linear`` on the pooled vector instead of
  1x1 convs on a 1x1 map);
- each residual block ends in one step: ``relu(branch + shortcut)``, with the SE multiply (Basic
  block) or the last conv (Bottleneck) folded into it;
- weights and activations are channels-last (a memory layout: the values are the same).

On CPU, in fp32 and without autograd, the convs run as oneDNN convolutions with the activation
(leaky ReLU) or the residual add and ReLU applied to the accumulator as a post-op, which gives the
same bits as the conv followed by the separate op. Elsewhere (GPU, other dtypes, tracing for
TorchScript or ONNX) the same modules run plain PyTorch ops. Every rewrite is exact in real
arithmetic; in fp32 the fused model differs from the eval-mode original only by rounding (about
1e-6 of the largest logit).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from tresnet.errors import ConfigError
from tresnet.layers import ConvNormAct, SpaceToDepth, SqueezeExcite
from tresnet.layers.inplace_abn import InPlaceABN, activate_, invertible_scale
from tresnet.models.tresnet import BasicBlock, Bottleneck

# Activations that oneDNN applies to the conv accumulator (post-op), by our name -> oneDNN's.
_POST_OPS = {"leaky_relu": "leaky_relu", "identity": "none"}


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


def _use_onednn(x: torch.Tensor) -> bool:
    """Whether the oneDNN fused-conv path applies: fp32 on CPU, eager, no autograd."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not (torch.is_grad_enabled() and x.requires_grad))


def _conv_act(x: torch.Tensor, conv: nn.Conv2d, activation: str, param: float) -> torch.Tensor:
    """``activation(conv(x))``, as one oneDNN kernel where :func:`_use_onednn` allows."""
    if activation in _POST_OPS and _use_onednn(x):
        scalars = [param] if activation == "leaky_relu" else []
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups,
            _POST_OPS[activation], scalars, "")
    return activate_(conv(x), activation, param)


def _conv_add_relu(x: torch.Tensor, conv: nn.Conv2d, shortcut: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x) + shortcut)``, as one oneDNN kernel where :func:`_use_onednn` allows."""
    if _use_onednn(x) and shortcut.dtype == x.dtype:
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, shortcut, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups,
            "add", 1.0, "relu", [None], None)
    return F.relu_(conv(x).add_(shortcut))


class FusedConvAct(nn.Module):
    """``conv`` (BatchNorm folded in) -> activation -> optional blur: a folded ``ConvNormAct``."""

    def __init__(self, unit: ConvNormAct) -> None:
        super().__init__()
        self.conv = fold_batchnorm(unit.conv, unit.bn)
        self.activation: str = unit.bn.activation
        self.activation_param: float = float(unit.bn.activation_param)
        self.aa = copy.deepcopy(unit.aa)
        if self.aa is not None:
            self.aa.export_friendly = True  # no Pad node in an ONNX export

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _conv_act(x, self.conv, self.activation, self.activation_param)
        if self.aa is not None:
            x = self.aa(x)
        return x

    def extra_repr(self) -> str:
        return f"activation={self.activation}, activation_param={self.activation_param}"


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
        return _conv_act(x, self.conv, self.activation, self.activation_param)


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
    The block's input is never written to (a features-only model returns it).
    """

    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        super().__init__()
        self.conv1 = FusedConvAct(block.conv1)
        self.conv2 = FusedConvAct(block.conv2)
        self.conv3 = FusedConvAct(block.conv3) if isinstance(block, Bottleneck) else None
        if self.conv3 is not None and (self.conv3.activation != "identity" or self.conv3.aa is not None):
            raise ConfigError("a Bottleneck's conv3 must have no activation and no blur to be fused")
        self.se = FusedSqueezeExcite(block.se) if block.se is not None else None
        self.downsample = _fuse_children(block.downsample) if block.downsample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        if self.conv3 is not None:
            if self.se is not None:
                out = self.se(out)
            return _conv_add_relu(out, self.conv3.conv, shortcut)
        if self.se is None:
            return F.relu_(out.add_(shortcut))
        if torch.jit.is_tracing():
            # The ONNX exporter's addcmul promotes fp16 to fp32; the two ops export as they are.
            return F.relu_(out * self.se.gate(out) + shortcut)
        return F.relu_(torch.addcmul(shortcut, out, self.se.gate(out)))


def _fuse_children(module: nn.Module, channels_last: bool = True) -> nn.Module:
    """``module`` with every fusable part replaced (containers are changed in place)."""
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
        following = module._modules[names[i + 1]] if i + 1 < len(names) else None
        if isinstance(module, nn.Sequential) and isinstance(child, SpaceToDepth) and \
                isinstance(following, ConvNormAct) and following.aa is None:
            # The stem: SpaceToDepth and conv1 become one conv; conv1's slot becomes an identity, so
            # ``body.conv1(body.s2d(x))`` still means the stem's output.
            module._modules[name] = FusedStem(child, following, channels_last)
            module._modules[names[i + 1]] = nn.Identity()
            continue
        if not isinstance(child, nn.Identity):
            module._modules[name] = _fuse_children(child, channels_last)
    return module


def fuse(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """An eval-mode inference copy of ``model`` with every BatchNorm folded into the conv before it.

    ``model`` (a TResNet, a features-only TResNet, or any module built from tresnet's layers and
    blocks) is left untouched. The copy computes what ``model.eval()`` computes, up to fp32
    rounding, with the other exact rewrites listed in :mod:`tresnet.deploy.fusion`; its parameters do
    not require gradients. With ``channels_last`` (the default; fastest on CPU) its weights are
    channels-last and a stem converts its input, so feature maps (and ``features_only`` outputs)
    are channels-last tensors holding the same values.

    Raises :class:`~tresnet.errors.ConfigError` for a BatchNorm without running statistics.
    """
    fused = _fuse_children(copy.deepcopy(model), channels_last)
    fused.eval()
    fused.requires_grad_(False)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return fused


__all__ = ["FusedBlock", "FusedConvAct", "FusedSqueezeExcite", "FusedStem", "fold_batchnorm", "fuse"]

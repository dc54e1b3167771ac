"""The inference forms of the layers (BatchNorm folded, fused conv kernels) and what a fusion rule is.

:func:`fold_batchnorm` gives the conv with bias that computes ``bn(conv(x))``; :class:`FusedConvAct` is a
folded ``ConvNormAct``, :class:`FusedSqueezeExcite` a ``SqueezeExcite`` on vectors. On CPU, in fp32 and
without autograd, :func:`conv_act` and :func:`conv_add_relu` run one oneDNN convolution with the activation
(ReLU, leaky ReLU) or the residual add and ReLU applied to the accumulator as a post-op, which gives the same
bits as the conv followed by the separate op. Elsewhere (GPU, other dtypes, tracing for TorchScript, ONNX or
``torch.export``) they run plain PyTorch ops.

A fusion rule (:data:`FusionRule`) turns a module it knows into its fused form; :func:`fuse_layer` is the
rule of these layers, and each model family declares the rules of its own blocks
(:attr:`tresnet.models.family.Family.fusion_rules`). :func:`tresnet.deploy.fuse` walks a model and asks them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from tresnet.errors import ConfigError
from tresnet.layers.conv_norm_act import ConvNormAct
from tresnet.layers.inplace_abn import InPlaceABN, activate_, invertible_scale
from tresnet.layers.squeeze_excite import SqueezeExcite

# Activations that oneDNN applies to the conv accumulator (post-op), by our name -> oneDNN's.
_POST_OPS = {"leaky_relu": "leaky_relu", "relu": "relu", "identity": "none"}


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv with bias that computes ``bn(conv(x))`` of the eval-mode ``bn`` (activation excluded).

    Folds with the plain BatchNorm formula ``scale = weight / sqrt(running_var + eps)``, in float64;
    for In-Place ABN the weight is first clamped as its forward does (``|weight| >= eps``). Grouped and
    depthwise convs fold the same way (one scale per output channel).
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
    # torch types a Conv2d's sizes as tuple[int, ...] and its constructor's as tuple[int, int]
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                      conv.padding, conv.dilation,  # type: ignore[arg-type]
                      conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight.detach().double() * scale.view(-1, 1, 1, 1))
        cast(torch.Tensor, fused.bias).copy_(bias)
    return fused


def use_onednn(x: torch.Tensor) -> bool:
    """Whether the oneDNN fused-conv path applies: fp32 on CPU, eager, no autograd."""
    # torch types mkldnn.enabled as its descriptor (ContextProp); read on the module it is a bool
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()  # type: ignore[return-value]
            and torch.backends.mkldnn.enabled
            and not torch.jit.is_tracing() and not torch.jit.is_scripting() and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and x.requires_grad))


def activate(x: torch.Tensor, activation: str, param: float) -> torch.Tensor:
    """``activation`` (ReLU, leaky ReLU, ELU or identity) applied in place to ``x``."""
    if activation == "relu":
        return F.relu_(x)
    return activate_(x, activation, param)


class _PackedWeight:
    """A reordered weight and the key it was made for; a copy or a pickle of the model leaves it behind (a
    oneDNN tensor can be neither), to be made again on the next call."""

    def __init__(self, key: tuple, tensor: torch.Tensor) -> None:
        self.key, self.tensor = key, tensor

    def __deepcopy__(self, memo) -> None:
        return None

    def __reduce__(self):
        return type(None), ()


def onednn_weight(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv``'s weight reordered once into oneDNN's blocked layout for inputs shaped like ``x``.

    Cached on the conv (a plain attribute, not in its state dict) for the last input shape, and redone when
    the weight changes (in place or by ``load_state_dict``; a write through ``weight.data`` is not seen). The oneDNN kernel would otherwise reorder the weight at every call; done once, the
    later stages (large weights, small feature maps) run 5-10% faster. The values are the same.
    """
    key = (tuple(x.shape), conv.weight.data_ptr(), conv.weight._version)
    cached = conv.__dict__.get("_onednn_weight")
    if cached is None or cached.key != key:
        # the stub lists fewer arguments than the op takes (padding, stride, dilation, groups, input size)
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
            conv.weight.detach().to_mkldnn(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            list(x.shape))
        cached = conv.__dict__["_onednn_weight"] = _PackedWeight(key, packed)
    return cached.tensor


def conv_act(x: torch.Tensor, conv: nn.Conv2d, activation: str, param: float) -> torch.Tensor:
    """``activation(conv(x))``, as one oneDNN kernel where :func:`use_onednn` allows."""
    if activation in _POST_OPS and use_onednn(x):
        scalars = [param] if activation == "leaky_relu" else []
        return torch.ops.mkldnn._convolution_pointwise(
            x, onednn_weight(conv, x), conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups,
            _POST_OPS[activation], scalars, "")
    return activate(conv(x), activation, param)


def conv_add_relu(x: torch.Tensor, conv: nn.Conv2d, shortcut: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x) + shortcut)``, as one oneDNN kernel where :func:`use_onednn` allows.

    Neither ``x`` nor ``shortcut`` is written to.
    """
    if use_onednn(x) and shortcut.dtype == x.dtype:
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, shortcut, onednn_weight(conv, x), conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups,
            "add", 1.0, "relu", [None], None)
    return F.relu_(conv(x).add_(shortcut))


class FusedConvAct(nn.Module):
    """``conv`` (BatchNorm folded in) -> activation -> optional blur: a folded ``ConvNormAct``.

    With ``channels_last_input`` (a network's first conv) a 4-D input is made channels-last first.
    """

    def __init__(self, unit: ConvNormAct, channels_last_input: bool = False) -> None:
        super().__init__()
        self.conv = fold_batchnorm(unit.conv, unit.bn)
        self.activation: str = unit.bn.activation
        self.activation_param: float = float(unit.bn.activation_param)
        self.aa = copy.deepcopy(unit.aa)
        if self.aa is not None:
            self.aa.export_friendly = True  # no Pad node in an ONNX export
        self.channels_last_input = channels_last_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_input and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        x = conv_act(x, self.conv, self.activation, self.activation_param)
        if self.aa is not None:
            x = self.aa(x)
        return x

    def extra_repr(self) -> str:
        return f"activation={self.activation}, activation_param={self.activation_param}"


def fused_tail(unit: ConvNormAct, block_name: str) -> FusedConvAct:
    """The folded last conv of a residual branch, which :func:`conv_add_relu` runs with the add.

    Raises :class:`~tresnet.errors.ConfigError` unless it has no activation and no blur.
    """
    fused = FusedConvAct(unit)
    if fused.activation != "identity" or fused.aa is not None:
        raise ConfigError(f"the last conv of a {block_name}'s branch must have no activation and no blur to be "
                          f"fused with the residual add")
    return fused


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


class FusionWalk(Protocol):
    """What :func:`tresnet.deploy.fuse` offers a fusion rule while it walks a model (a deep copy)."""

    channels_last: bool  # the fused model is channels-last: its first conv converts the image

    def fuse(self, module: nn.Module) -> nn.Module:
        """The fused form of ``module``: a rule's, else ``module`` with its children fused."""

    def fuse_children(self, module: nn.Module) -> nn.Module:
        """``module`` with each child replaced by its fused form (in place), returned."""


# A rule returns the fused form of a module it knows (asking the walk to fuse the module's other parts), or
# None for a module it does not know. A fused module matches no rule, so walking it again changes nothing.
FusionRule = Callable[[nn.Module, FusionWalk], "nn.Module | None"]


def fuse_layer(module: nn.Module, walk: FusionWalk) -> nn.Module | None:
    """The fusion rule of the shared layers: ``ConvNormAct`` and ``SqueezeExcite`` become their fused forms."""
    if isinstance(module, ConvNormAct):
        return FusedConvAct(module)
    if isinstance(module, SqueezeExcite):
        return FusedSqueezeExcite(module)
    return None


__all__ = ["FusedConvAct", "FusedSqueezeExcite", "FusionRule", "FusionWalk", "activate", "conv_act",
           "conv_add_relu", "fold_batchnorm", "fuse_layer", "fused_tail", "use_onednn"]

"""Inference-time fusion: every BatchNorm folded into the conv before it, plus other exact rewrites.

:func:`fuse` returns a deep copy of a model of any registered family (or any module built from tresnet's layers
and blocks) in which each module is rewritten by the first fusion rule that knows it: the shared layers' rule
(:func:`tresnet.layers.fused.fuse_layer`), then the rules each family declares
(:attr:`tresnet.models.family.Family.fusion_rules`); a module no rule knows keeps its type and has its
children rewritten. For TResNet and GENet:

- every ``ConvNormAct`` (conv -> BN + activation -> blur) is a
  :class:`~tresnet.layers.fused.FusedConvAct`: one conv with bias (the BN folded in) -> the same
  activation -> the same blur, when there is one (a copy of the
  :class:`~tresnet.layers.AntiAliasDownsample` with ``export_friendly`` on, so that an ONNX export has no
  ``Pad`` node); depthwise and grouped convs included;
- each residual block ends in one step, ``relu(branch + shortcut)``
  (:mod:`tresnet.models.tresnet_fusion` for TResNet's stem and blocks,
  :mod:`tresnet.models.genet_fusion` for GENet's stem and XX, BL and DW blocks);
- weights and activations are channels-last (a memory layout: the values are the same);
- a classifier head is kept as it is: ``head.fc``, or an ML-Decoder head
  (:class:`~tresnet.layers.MLDecoderHead`, whose linear layers and LayerNorms have nothing to fold).

On CPU, in fp32 and without autograd, the convs run as oneDNN convolutions with the activation (ReLU,
leaky ReLU) or the residual add and ReLU applied to the accumulator as a post-op, which gives the same
bits as the conv followed by the separate op. Elsewhere (GPU, other dtypes, tracing for TorchScript or
ONNX) the same modules run plain PyTorch ops. Every rewrite is exact in real arithmetic; in fp32 the
fused model differs from the eval-mode original only by rounding (about 1e-6 of the largest logit).
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from tresnet.errors import ConfigError
from tresnet.layers.fused import FusionRule, fuse_layer
from tresnet.models.registry import FAMILIES


class _FusionWalk:
    """One walk over a model: each module is rewritten by the first rule that knows it, else its children are
    (see :class:`~tresnet.layers.fused.FusionWalk`)."""

    def __init__(self, rules: tuple[FusionRule, ...], channels_last: bool) -> None:
        self.rules = rules
        self.channels_last = channels_last

    def fuse(self, module: nn.Module) -> nn.Module:
        for rule in self.rules:
            fused = rule(module, self)
            if fused is not None:
                return fused
        return self.fuse_children(module)

    def fuse_children(self, module: nn.Module) -> nn.Module:
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = self.fuse(child)
        return module


def fusion_rules() -> tuple[FusionRule, ...]:
    """The rules :func:`fuse` applies, in order: the shared layers', then each registered family's."""
    return (fuse_layer, *(rule for family in FAMILIES.values() for rule in family.fusion_rules))


LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)


def _cast_inputs(module: nn.Module, args: tuple, *, dtype: torch.dtype) -> tuple:
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _outputs_to_float(module: nn.Module, args: tuple, output):
    if isinstance(output, (list, tuple)):
        return type(output)(o.float() for o in output)
    return output.float()


def fuse(model: nn.Module, *, channels_last: bool = True, dtype: torch.dtype = torch.float32) -> nn.Module:
    """An eval-mode inference copy of ``model`` with every BatchNorm folded into the conv before it.

    ``model`` (a model of a registered family, features-only or not, or any module built from tresnet's layers
    and blocks) is left untouched. The copy computes what ``model.eval()`` computes, up to fp32 rounding,
    with the other exact rewrites listed in :mod:`tresnet.deploy.fusion`; its parameters do not require
    gradients. With ``channels_last`` (the default; fastest on CPU) its weights are channels-last and the
    stem converts its input, so feature maps (and ``features_only`` outputs) are channels-last tensors
    holding the same values.

    With ``dtype=torch.bfloat16`` (or ``torch.float16``) the folded weights and every activation are in
    that type, while the model still takes fp32 images and returns fp32 outputs (a cast on the way in and
    out, as forward hooks of the returned module: call it, not its ``forward``). On a CPU with AVX-512 BF16
    or AMX, bfloat16 in channels-last is the fastest exact-enough path of PyTorch; its outputs are within
    :data:`tresnet.deploy.exactness.BOUNDS` ``["bf16"]`` of the float64 result. The folding itself is done
    in fp32 (float64 for the BN statistics) before the cast.

    Raises :class:`~tresnet.errors.ConfigError` for a BatchNorm without running statistics and for a
    ``dtype`` other than float32, bfloat16 and float16.
    """
    if dtype != torch.float32 and dtype not in LOW_PRECISION_DTYPES:
        raise ConfigError(f"fuse(dtype={dtype}): choose torch.float32, torch.bfloat16 or torch.float16")
    fused = _FusionWalk(fusion_rules(), channels_last).fuse(copy.deepcopy(model))
    fused.eval()
    fused.requires_grad_(False)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    if dtype != torch.float32:
        cast_for_inference(fused, dtype)
    return fused


def cast_for_inference(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` (in place) with its weights in ``dtype``, taking fp32 inputs and returning fp32 outputs
    (casts as forward hooks); returned for chaining."""
    module.to(dtype)
    module.register_forward_pre_hook(functools.partial(_cast_inputs, dtype=dtype))
    module.register_forward_hook(_outputs_to_float)
    return module


__all__ = ["LOW_PRECISION_DTYPES", "cast_for_inference", "fuse", "fusion_rules"]

"""Inference-time fusion: every BatchNorm folded into the conv before it, plus other exact rewrites.

:func:`fuse` returns a deep copy of a TResNet or a GENet (or any module built from tresnet's layers and
blocks) in which

- every ``ConvNormAct`` (conv -> BN + activation -> blur) is a
  :class:`~tresnet.deploy.folding.FusedConvAct`: one conv with bias (the BN folded in) -> the same
  activation -> the same blur, when there is one (a copy of the
  :class:`~tresnet.layers.AntiAliasDownsample` with ``export_friendly`` on, so that an ONNX export has no
  ``Pad`` node); depthwise and grouped convs included;
- each residual block ends in one step, ``relu(branch + shortcut)``
  (:mod:`tresnet.deploy.tresnet_fusion` for TResNet's stem, SE and blocks,
  :mod:`tresnet.deploy.genet_fusion` for GENet's XX, BL and DW blocks);
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

from tresnet.deploy import genet_fusion, tresnet_fusion
from tresnet.deploy.folding import FusedConvAct, fold_batchnorm
from tresnet.deploy.genet_fusion import FusedGENetBlock
from tresnet.deploy.tresnet_fusion import FusedBlock, FusedSqueezeExcite, FusedStem
from tresnet.errors import ConfigError
from tresnet.layers import ConvNormAct, SqueezeExcite


def _fuse_block(module: nn.Module) -> nn.Module | None:
    """The fused form of a residual block of either family, or None for anything else."""
    if isinstance(module, tresnet_fusion.BLOCKS):
        return FusedBlock(module, _fuse_children)
    if isinstance(module, genet_fusion.BLOCKS):
        return FusedGENetBlock(module)
    return None


def _fuse_children(module: nn.Module, channels_last: bool = True) -> nn.Module:
    """``module`` with every fusable part replaced (containers are changed in place)."""
    block = _fuse_block(module)
    if block is not None:
        return block
    if isinstance(module, ConvNormAct):
        return FusedConvAct(module)
    if isinstance(module, SqueezeExcite):
        return FusedSqueezeExcite(module)
    genet_fusion.fuse_genet_stem(module, channels_last)
    names = list(module._modules)
    for i, name in enumerate(names):
        child = module._modules[name]
        if child is None or isinstance(child, (nn.Identity, FusedConvAct)):
            continue
        following = module._modules[names[i + 1]] if i + 1 < len(names) else None
        stem = tresnet_fusion.fuse_stem_pair(child, following, channels_last) \
            if isinstance(module, nn.Sequential) else None
        if stem is not None:
            # SpaceToDepth and conv1 become one conv; conv1's slot becomes an identity, so
            # ``body.conv1(body.s2d(x))`` still means the stem's output.
            module._modules[name] = stem
            module._modules[names[i + 1]] = nn.Identity()
            continue
        module._modules[name] = _fuse_children(child, channels_last)
    return module


LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)


def _cast_inputs(module: nn.Module, args: tuple, *, dtype: torch.dtype) -> tuple:
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _outputs_to_float(module: nn.Module, args: tuple, output):
    if isinstance(output, (list, tuple)):
        return type(output)(o.float() for o in output)
    return output.float()


def fuse(model: nn.Module, *, channels_last: bool = True, dtype: torch.dtype = torch.float32) -> nn.Module:
    """An eval-mode inference copy of ``model`` with every BatchNorm folded into the conv before it.

    ``model`` (a TResNet or a GENet, features-only or not, or any module built from tresnet's layers and
    blocks) is left untouched. The copy computes what ``model.eval()`` computes, up to fp32 rounding,
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
    fused = _fuse_children(copy.deepcopy(model), channels_last)
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


__all__ = ["LOW_PRECISION_DTYPES", "FusedBlock", "cast_for_inference", "FusedConvAct", "FusedGENetBlock", "FusedSqueezeExcite", "FusedStem", "fold_batchnorm",
           "fuse"]

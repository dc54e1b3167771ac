"""Norm layers frozen into a fixed per-channel affine step, as detectors train their backbones with small batches.

With two images per GPU, batch statistics are noise; torchvision's detectors therefore replace a pretrained
backbone's BatchNorm by ``FrozenBatchNorm2d``, whose statistics and affine parameters are buffers. Our norms carry
their activation (In-Place ABN, BatchNorm + activation), so :class:`FrozenNormAct` keeps it: the layer computes
exactly what the norm computed in eval mode, and nothing of it learns or updates.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from tresnet.layers.inplace_abn import InPlaceABN, activate_, invertible_scale


class FrozenNormAct(nn.Module):
    """An eval-mode norm with its activation, made of buffers: ``activation(batch_norm(x, running stats))``.

    The buffers keep the norm's names (``weight``, ``bias``, ``running_mean``, ``running_var``), so a state dict
    saved with frozen norms loads into trainable ones and back (``num_batches_tracked`` is dropped)."""

    weight: torch.Tensor  # buffers, all four
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, activation: str = "identity",
                 activation_param: float = 0.0) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.activation, self.activation_param = activation, activation_param
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def of(cls, norm: nn.BatchNorm2d) -> FrozenNormAct:
        """The frozen form of ``norm`` (a BatchNorm2d, In-Place ABN or BatchNorm + activation), computing what
        ``norm`` computes in eval mode; In-Place ABN's scale floor (``|weight| >= eps``) is applied once here."""
        frozen = cls(norm.num_features, norm.eps, getattr(norm, "activation", "identity"),
                     getattr(norm, "activation_param", 0.0))
        weight = norm.weight.detach() if norm.weight is not None else torch.ones(norm.num_features)
        if isinstance(norm, InPlaceABN):
            weight = invertible_scale(weight, norm.eps, weight.dtype)
        with torch.no_grad():
            frozen.weight.copy_(weight)
            if norm.bias is not None:
                frozen.bias.copy_(norm.bias.detach())
            if norm.running_mean is not None:
                frozen.running_mean.copy_(norm.running_mean)
                frozen.running_var.copy_(cast(torch.Tensor, norm.running_var))  # kept with running_mean
        return frozen.to(weight.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # a trainable norm's counter has nothing to set here
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if self.activation == "relu":
            return F.relu(out)
        if self.activation == "identity":
            return out
        return activate_(out, self.activation, self.activation_param)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, activation={self.activation}, "
                f"activation_param={self.activation_param}")


def freeze_norms(module: nn.Module) -> int:
    """Replace every BatchNorm2d of ``module`` (In-Place ABN and BatchNorm + activation included) by its
    :class:`FrozenNormAct`, in place; the number replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenNormAct.of(child))
            count += 1
        else:
            count += freeze_norms(child)
    return count


__all__ = ["FrozenNormAct", "freeze_norms"]

"""Conv + norm/activation (+ optional anti-aliased downsampling), TResNet's building unit."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from tresnet.layers.anti_alias import AntiAliasDownsample
from tresnet.layers.inplace_abn import InPlaceABN
from tresnet.layers.norm_act import create_norm_act
from tresnet.layers.residual_tail import lean_tail, lean_tail_applies


class ConvNormAct(nn.Module):
    """``conv -> bn (norm + activation as one module) -> aa``.

    With ``anti_alias=True`` and stride 2, the conv runs at stride 1 and the blur downsamples,
    as in TResNet. ``groups`` as in ``nn.Conv2d`` (GENet's depthwise convs). Submodule names (``conv``, ``bn``, ``aa``) match timm's checkpoint keys.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 activation: str = "leaky_relu", activation_param: float = 0.01, norm: str = "inplace_abn",
                 anti_alias: bool = False, groups: int = 1) -> None:
        super().__init__()
        use_aa = anti_alias and stride == 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1 if use_aa else stride,
                              padding=kernel_size // 2, groups=groups, bias=False)
        self.bn = create_norm_act(norm, out_channels, activation, activation_param)
        self.aa = AntiAliasDownsample(out_channels, stride=2) if use_aa else None
        self._pointwise = kernel_size == 1 and stride == 1 and not use_aa and activation == "identity"
        self.memory_efficient = False  # a 1x1 conv + identity norm then keeps only its input for backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pointwise and lean_tail_applies(self, self.bn):
            # A 1x1 conv + BN with no activation: one op that keeps only the conv input for backward.
            return lean_tail(x, self.conv.weight, cast(InPlaceABN, self.bn))  # lean_tail_applies checked it
        x = self.bn(self.conv(x))
        if self.aa is not None:
            x = self.aa(x)
        return x

"""TResNet (Ridnik et al., arXiv 2003.13630): the blocks, the network, and its variants.

Variants are data (:data:`VARIANTS`); the builders in :mod:`tresnet.models.registry` read them.
Module and parameter names follow timm's ``tresnet.py``, so timm checkpoints load as they are.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from tresnet.errors import ConfigError, InputSizeError
from tresnet.layers import NORMS, ConvNormAct, InPlaceABN, SpaceToDepth, SqueezeExcite
from tresnet.layers.ml_decoder import MLDecoderHead
from tresnet.layers.residual_tail import lean_tail, lean_tail_applies
from tresnet.models import tresnet_formats, tresnet_fusion
from tresnet.models.common import (
    ClassifierSurface,
    checkpointed,
    run_until,
    stage_drop_path_rates,
)
from tresnet.models.family import CheckpointFormat, Family

# Smallest input side: after SpaceToDepth (/4) three blurred stride-2 stages need a side of at
# least 2 for their reflect padding, which gives 20 pixels.
MIN_INPUT_SIZE = 20
SIZE_MULTIPLE = 4


@dataclass(frozen=True)
class TResNetArch:
    """What distinguishes one TResNet from another."""

    layers: tuple[int, int, int, int]
    width_factor: float = 1.0
    v2: bool = False  # every stage Bottleneck, planes rounded down to a multiple of 8
    stem_slope: float = 1e-2  # leaky ReLU slope of conv1
    block_slope: float = 1e-3  # leaky ReLU slope inside the blocks


VARIANTS: dict[str, TResNetArch] = {
    "tresnet_m": TResNetArch(layers=(3, 4, 11, 3), width_factor=1.0),
    "tresnet_l": TResNetArch(layers=(4, 5, 18, 3), width_factor=1.2),
    "tresnet_xl": TResNetArch(layers=(4, 5, 24, 3), width_factor=1.3),
    # The official v2 code forces every leaky slope to 1e-6 (timm keeps 1e-2 / 1e-3).
    "tresnet_v2_l": TResNetArch(layers=(3, 4, 23, 3), width_factor=1.0, v2=True, stem_slope=1e-6,
                                block_slope=1e-6),
}


class _ResidualBlock(nn.Module):
    """What both blocks share: the shortcut's optional downsample, the branch, drop path, the ReLU after the add.

    Subclasses build their branch (``conv1``, ``conv2``, ``se``, ...) in :meth:`_build_branch`.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 use_se: bool = True, slope: float = 1e-3, norm: str = "inplace_abn",
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.downsample = downsample
        self._build_branch(inplanes, planes, stride, use_se, slope, norm)
        self.drop_path = StochasticDepth(drop_path_rate, "row") if drop_path_rate > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.memory_efficient = False  # set by TResNet.set_memory_efficient (used where a lean tail exists)

    def _build_branch(self, inplanes: int, planes: int, stride: int, use_se: bool, slope: float, norm: str) -> None:
        raise NotImplementedError

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The residual path: ``x``, or ``downsample(x)`` where the block changes width or stride."""
        return x if self.downsample is None else self.downsample(x)

    def last_norm(self) -> nn.Module:
        """The norm that ends the residual branch (zero-initialised, as in the paper)."""
        raise NotImplementedError


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs (the first anti-aliased when striding), SE, residual add, ReLU."""

    expansion = 1

    def _build_branch(self, inplanes: int, planes: int, stride: int, use_se: bool, slope: float, norm: str) -> None:
        self.conv1 = ConvNormAct(inplanes, planes, 3, stride, "leaky_relu", slope, norm, anti_alias=True)
        self.conv2 = ConvNormAct(planes, planes, 3, 1, "identity", 0.0, norm)
        self.se = SqueezeExcite(planes, max(planes // 4, 64)) if use_se else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        out = self.conv2(self.conv1(x))
        if self.se is None:
            return self.act(self.drop_path(out) + shortcut)
        # The SE product is a fresh tensor that no backward needs: add and activate in place.
        out = self.drop_path(self.se(out))
        return self.act(out.add_(shortcut))

    def last_norm(self) -> nn.Module:
        return self.conv2.bn


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (anti-aliased when striding), SE on the narrow width, 1x1 expand, add, ReLU."""

    expansion = 4

    def _build_branch(self, inplanes: int, planes: int, stride: int, use_se: bool, slope: float, norm: str) -> None:
        self.conv1 = ConvNormAct(inplanes, planes, 1, 1, "leaky_relu", slope, norm)
        self.conv2 = ConvNormAct(planes, planes, 3, stride, "leaky_relu", slope, norm, anti_alias=True)
        self.se = SqueezeExcite(planes, max(planes * self.expansion // 8, 64)) if use_se else None
        self.conv3 = ConvNormAct(planes, planes * self.expansion, 1, 1, "identity", 0.0, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        out = self.conv2(self.conv1(x))
        if lean_tail_applies(self, self.conv3.bn):
            return self._lean_tail(out, shortcut)
        if self.se is not None:
            out = self.se(out)
        out = self.conv3(out)
        return self.act(self.drop_path(out) + shortcut)

    def _lean_tail(self, out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        # SE, conv3, its norm, drop path, the residual add and the ReLU as one op that keeps only the
        # SE input and the block output for backward (see tresnet.layers.residual_tail).
        gate = self.se.gate(out) if self.se is not None else None
        keep = None
        if isinstance(self.drop_path, StochasticDepth) and self.drop_path.p > 0:
            survival = 1.0 - self.drop_path.p
            keep = torch.empty(out.shape[0], device=out.device).bernoulli_(survival)
            if survival > 0:
                keep.div_(survival)
        norm = cast(InPlaceABN, self.conv3.bn)  # lean_tail_applies checked it
        return lean_tail(out, self.conv3.conv.weight, norm, gate=gate, shortcut=shortcut, keep=keep)

    def last_norm(self) -> nn.Module:
        return self.conv3.bn


def _stem_width(arch: TResNetArch) -> int:
    """Channels after ``conv1``: ``64 * width_factor``, rounded down to a multiple of 8 for v2."""
    planes = int(64 * arch.width_factor)
    return planes // 8 * 8 if arch.v2 else planes


def _feature_table(planes: int, early_expansion: int) -> list[dict]:
    """Channels, reduction and module of the five feature maps (``conv1``, ``layer1`` .. ``layer4``)."""
    return [
        dict(num_chs=planes, reduction=4, module="body.conv1"),
        dict(num_chs=planes * early_expansion, reduction=4, module="body.layer1"),
        dict(num_chs=planes * 2 * early_expansion, reduction=8, module="body.layer2"),
        dict(num_chs=planes * 4 * Bottleneck.expansion, reduction=16, module="body.layer3"),
        dict(num_chs=planes * 8 * Bottleneck.expansion, reduction=32, module="body.layer4"),
    ]


class TResNet(ClassifierSurface, nn.Module):
    """TResNet: SpaceToDepth stem, ``conv1``, four stages, fast global pooling and ``head.fc``
    (or, with ``head="ml_decoder"``, an ML-Decoder head on the last feature map; ``head_options`` size it).

    ``memory_efficient=True`` trains with less activation memory (see :meth:`set_memory_efficient`).
    With ``features_only=True`` the head is dropped and ``forward`` returns the outputs of the
    stages in ``out_indices`` (0 = ``conv1``, 1..4 = ``layer1..layer4``), described by ``feature_info``.
    """

    def __init__(self, arch: TResNetArch, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm: str = "inplace_abn", features_only: bool = False,
                 out_indices: tuple[int, ...] = (1, 2, 3, 4), memory_efficient: bool = False, head: str = "fc",
                 head_options: dict | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.norm = norm
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.planes = self._inplanes = planes = _stem_width(arch)
        early_block = Bottleneck if arch.v2 else BasicBlock
        self.body = self._make_body(early_block, stage_drop_path_rates(arch.layers, drop_path_rate))
        all_features = _feature_table(planes, early_block.expansion)
        self.num_features = self.head_hidden_size = all_features[-1]["num_chs"]
        self._init_outputs(all_features, features_only, out_indices, "0 (conv1) to 4 (layer4)", head, num_classes, drop_rate,
                           head_options)
        self.pretrained_cfg: dict = {}
        self.reset_parameters()
        self.set_memory_efficient(memory_efficient)

    def _make_body(self, early_block: type[_ResidualBlock], stage_rates: list[list[float]]) -> nn.Sequential:
        """The SpaceToDepth stem, ``conv1`` and the four stages, named as in timm."""
        arch, planes = self.arch, self.planes
        conv1 = ConvNormAct(self.in_chans * 16, planes, 3, 1, "leaky_relu", arch.stem_slope, self.norm)
        stages = [
            self._make_stage(early_block, planes, arch.layers[0], 1, True, stage_rates[0]),
            self._make_stage(early_block, planes * 2, arch.layers[1], 2, True, stage_rates[1]),
            self._make_stage(Bottleneck, planes * 4, arch.layers[2], 2, True, stage_rates[2]),
            self._make_stage(Bottleneck, planes * 8, arch.layers[3], 2, False, stage_rates[3]),
        ]
        return nn.Sequential(OrderedDict([("s2d", SpaceToDepth()), ("conv1", conv1), ("layer1", stages[0]),
                                          ("layer2", stages[1]), ("layer3", stages[2]), ("layer4", stages[3])]))

    def _make_stage(self, block, planes: int, blocks: int, stride: int, use_se: bool,
                    drop_path_rates: list[float]) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            parts: list[nn.Module] = []
            if stride == 2:
                parts.append(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False))
            parts.append(ConvNormAct(self._inplanes, planes * block.expansion, 1, 1, "identity", 0.0, self.norm))
            downsample = nn.Sequential(*parts)
        layers = []
        for i in range(blocks):
            layers.append(block(self._inplanes, planes, stride if i == 0 else 1, downsample if i == 0 else None,
                                use_se, self.arch.block_slope, self.norm, drop_path_rates[i]))
            self._inplanes = planes * block.expansion
        return nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        """The paper's initialisation, with the last norm of each residual branch zeroed."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(cast(torch.Tensor, m.last_norm().weight))
        if isinstance(self.head, MLDecoderHead):
            self.head.reset_parameters()  # its own initialisation, as published (not the fc's)

    # --- the uniform surface -------------------------------------------------------------------

    @torch.jit.ignore
    def set_memory_efficient(self, enable: bool = True) -> None:
        """Train with the memory-lean Bottleneck tails and downsample convs (In-Place ABN norms only).

        About 0.54x the activation memory of plain BatchNorm instead of 0.75x, for a few percent more
        compute in backward; results are the same to rounding. See :mod:`tresnet.layers.residual_tail`.
        Raises :class:`ConfigError` for a network with plain BatchNorm, where the tails would not apply.
        """
        if enable and self.norm == "bn":
            raise ConfigError("memory_efficient needs the in-place ABN norms (norm='inplace_abn', TResNet's default): "
                              "plain BatchNorm keeps its inputs for backward, so the lean tails cannot apply")
        self.memory_efficient = enable
        for m in self.modules():
            if isinstance(m, (_ResidualBlock, ConvNormAct)):
                m.memory_efficient = enable

    def check_input_size(self, height: int, width: int) -> None:
        """Raise :class:`InputSizeError` unless the network can take ``height x width`` inputs."""
        for side in (height, width):
            if side % SIZE_MULTIPLE or side < MIN_INPUT_SIZE:
                raise InputSizeError(
                    f"input size {height}x{width} is not supported: each side must be a multiple of "
                    f"{SIZE_MULTIPLE} and at least {MIN_INPUT_SIZE} (e.g. 224, 256, 448)"
                )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, ``(N, num_features, H/32, W/32)``."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting()):
            self.check_input_size(x.shape[-2], x.shape[-1])
        if self.grad_checkpointing and torch.is_grad_enabled():
            body = self.body
            x = cast(nn.Module, body.conv1)(cast(nn.Module, body.s2d)(x))
            stages = cast(tuple[nn.Sequential, ...], (body.layer1, body.layer2, body.layer3, body.layer4))
            for stage in stages:
                for block in stage:
                    x = checkpointed(block, x)
            return x
        return self.body(x)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stages in ``out_indices`` (all five when the model has a head)."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting()):
            self.check_input_size(x.shape[-2], x.shape[-1])
        wanted = self.out_indices or (0, 1, 2, 3, 4)
        body = self.body
        parts = cast(tuple[nn.Module, ...], (body.conv1, body.layer1, body.layer2, body.layer3, body.layer4))
        return run_until(parts, wanted, cast(nn.Module, body.s2d)(x))


# --- the family: its registered models and checkpoint layouts --------------------------------------

# TResNet's preprocessing: RGB in [0, 1] with no mean/std normalisation (the official release's
# validation code, and timm's tresnet configs: mean 0, std 1). The 224 models are evaluated with a
# bilinear resize to 224 / 0.875 and a centre crop; the 448 ones squash the image to 448x448.
_NO_NORMALISATION = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
_CFG_224 = dict(input_size=(3, 224, 224), crop_pct=0.875, crop_mode="center", interpolation="bilinear",
                **_NO_NORMALISATION)
_CFG_448 = dict(input_size=(3, 448, 448), crop_pct=1.0, crop_mode="squash", interpolation="bilinear",
                **_NO_NORMALISATION)

# name -> network, preprocessing, published ImageNet-1k top-1 (paper, Tables 1 and 3; v2: the
# official model zoo, ImageNet-21k pretraining), and the published weights (tresnet.weights): per tag as timm
# names them, the first the default, with the names their files have in the official releases
# (Alibaba-MIIL/TResNet, Alibaba-MIIL/ImageNet21K) and in timm's older releases (rwightman/pytorch-image-models
# v0.1-tresnet). The ImageNet-21K-P paper (Ridnik et al., 2021, Table 3) gives 83.1 for TResNet-M fine-tuned on
# ImageNet-1k after ImageNet-21k; its ImageNet-21k heads have 11221 classes.
_IN21K = dict(num_classes=11221)
MODEL_CONFIGS: dict[str, dict] = {
    "tresnet_m": dict(arch="tresnet_m", **_CFG_224, top1=80.8, weights={
        "miil_in1k": dict(files=("tresnet_m_80_8*.pth",)),
        "miil_in21k_ft_in1k": dict(files=("tresnet_m_1k_miil_83_1*.pth",), top1=83.1),
        "miil_in21k": dict(files=("tresnet_m_miil_21k.pth", "tresnet_m_miil_in21k*.pth"), **_IN21K)}),
    "tresnet_l": dict(arch="tresnet_l", **_CFG_224, top1=81.5, weights={
        "miil_in1k": dict(files=("tresnet_l.pth", "tresnet_l_81_5*.pth"))}),
    "tresnet_xl": dict(arch="tresnet_xl", **_CFG_224, top1=82.0, weights={
        "miil_in1k": dict(files=("tresnet_xl.pth", "tresnet_xl_82_0*.pth"))}),
    "tresnet_v2_l": dict(arch="tresnet_v2_l", **_CFG_224, top1=83.9, weights={
        "miil_in21k_ft_in1k": dict(files=("tresnet_l_v2_83_9*.pth",)),
        "miil_in21k": dict(files=("tresnet_l_v2_miil_21k.pth",), **_IN21K)}),
    "tresnet_m_448": dict(arch="tresnet_m", **_CFG_448, top1=83.2, weights={
        "miil_in1k_448": dict(files=("tresnet_m_448.pth", "tresnet_m_448-*.pth"))}),
    "tresnet_l_448": dict(arch="tresnet_l", **_CFG_448, top1=83.8, weights={
        "miil_in1k_448": dict(files=("tresnet_l_448.pth", "tresnet_l_448-*.pth"))}),
    "tresnet_xl_448": dict(arch="tresnet_xl", **_CFG_448, top1=84.3, weights={
        "miil_in1k_448": dict(files=("tresnet_xl_448.pth", "tresnet_xl_448-*.pth"))}),
}

FAMILY = Family(
    name="tresnet",
    title="TResNet",
    paper="Ridnik et al., TResNet: High Performance GPU-Dedicated Architecture, arXiv 2003.13630",
    variants=VARIANTS,
    models=MODEL_CONFIGS,
    build=TResNet,
    formats=(
        CheckpointFormat("timm", tresnet_formats.TIMM_MARKER),
        CheckpointFormat("official", tresnet_formats.OFFICIAL_MARKER, tresnet_formats.convert_official,
                         tresnet_formats.official_key),
    ),
    infer_arch=functools.partial(tresnet_formats.infer_architecture, variants=VARIANTS),
    norms=NORMS,
    first_conv="body.conv1.conv",
    options={"memory_efficient": False},
    fusion_rules=tresnet_fusion.fusion_rules((BasicBlock, Bottleneck)),
)

__all__ = ["FAMILY", "MODEL_CONFIGS", "VARIANTS", "BasicBlock", "Bottleneck", "TResNet", "TResNetArch"]

"""GENet (Lin et al., "Neural Architecture Design for GPU-Efficient Networks", arXiv 2006.14090).

Full 3x3 convs (XX blocks) and 1x1-3x3-1x1 bottlenecks (BL) at high resolution, where a GPU is
compute-bound, and depthwise blocks (DW) only at low resolution. Variants are data (:data:`VARIANTS`,
the paper's architecture table); module and parameter names follow timm's ``byobnet.py`` (``gernet_s``,
``gernet_m``, ``gernet_l``), so timm checkpoints load as they are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from tresnet.errors import InputSizeError
from tresnet.layers import ConvNormAct
from tresnet.layers.ml_decoder import MLDecoderHead
from tresnet.models import genet_formats, genet_fusion
from tresnet.models.common import (
    ClassifierSurface,
    checkpointed,
    run_until,
    stage_drop_path_rates,
)
from tresnet.models.family import CheckpointFormat, Family

# Five stride-2 steps: below 32 pixels the last stages see a 1x1 map padded on every side.
MIN_INPUT_SIZE = 32
# Middle width of a block over its output width: XX keeps it, BL narrows to 1/4, DW widens to 3x.
BOTTLE_RATIO = {"xx": 1.0, "bl": 0.25, "dw": 3.0}


@dataclass(frozen=True)
class GENetStage:
    """One stage: ``depth`` blocks of ``block`` type (``"xx"``, ``"bl"``, ``"dw"``) to ``width`` channels."""

    block: str
    width: int
    depth: int
    stride: int


@dataclass(frozen=True)
class GENetArch:
    """What distinguishes one GENet from another: stem width, the five stages, the feature width."""

    stem_width: int
    stages: tuple[GENetStage, ...]
    num_features: int


def _stages(widths: tuple[int, ...], depths: tuple[int, ...]) -> tuple[GENetStage, ...]:
    blocks, strides = ("xx", "xx", "bl", "dw", "dw"), (2, 2, 2, 2, 1)
    return tuple(GENetStage(b, w, d, s) for b, w, d, s in zip(blocks, widths, depths, strides, strict=True))


# The paper's Table (GENet-light, -normal, -large): stem width, stage widths x depths, final 1x1 width.
VARIANTS: dict[str, GENetArch] = {
    "genet_light": GENetArch(13, _stages((48, 48, 384, 560, 256), (1, 3, 7, 2, 1)), 1920),
    "genet_normal": GENetArch(32, _stages((128, 192, 640, 640, 640), (1, 2, 6, 4, 1)), 2560),
    "genet_large": GENetArch(32, _stages((128, 192, 640, 640, 640), (1, 2, 6, 5, 4)), 2560),
}


class _GENetBlock(nn.Module):
    """What every block shares: a 1x1 projection shortcut where the shape changes, drop path, ReLU after the add."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_path_rate: float) -> None:
        super().__init__()
        needs_projection = stride != 1 or in_chs != out_chs
        self.shortcut = (ConvNormAct(in_chs, out_chs, 1, stride, "identity", 0.0, "bn") if needs_projection
                         else nn.Identity())
        self.drop_path = StochasticDepth(drop_path_rate, "row") if drop_path_rate > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def last_norm(self) -> nn.Module:
        """The norm that ends the residual branch (zero-initialised, as timm does)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop_path(self.branch(x)) + self.shortcut(x))


class XXBlock(_GENetBlock):
    """Two full 3x3 convs (the first strided), BN after each, ReLU between."""

    branch_units = ("conv1_kxk", "conv2_kxk")  # the branch's units in forward order (fusion reads them)

    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_chs, out_chs, stride, drop_path_rate)
        self.conv1_kxk = ConvNormAct(in_chs, out_chs, 3, stride, "relu", 0.0, "bn")
        self.conv2_kxk = ConvNormAct(out_chs, out_chs, 3, 1, "identity", 0.0, "bn")

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2_kxk(self.conv1_kxk(x))

    def last_norm(self) -> nn.Module:
        return self.conv2_kxk.bn


class BottleneckBlock(_GENetBlock):
    """1x1 to the middle width, a strided 3x3 (depthwise for DW blocks), 1x1 to the output width."""

    branch_units = ("conv1_1x1", "conv2_kxk", "conv3_1x1")  # the branch's units in forward order

    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_path_rate: float = 0.0, *,
                 bottle_ratio: float, depthwise: bool) -> None:
        super().__init__(in_chs, out_chs, stride, drop_path_rate)
        mid_chs = int(out_chs * bottle_ratio)
        self.conv1_1x1 = ConvNormAct(in_chs, mid_chs, 1, 1, "relu", 0.0, "bn")
        self.conv2_kxk = ConvNormAct(mid_chs, mid_chs, 3, stride, "relu", 0.0, "bn",
                                     groups=mid_chs if depthwise else 1)
        self.conv3_1x1 = ConvNormAct(mid_chs, out_chs, 1, 1, "identity", 0.0, "bn")

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3_1x1(self.conv2_kxk(self.conv1_1x1(x)))

    def last_norm(self) -> nn.Module:
        return self.conv3_1x1.bn


def _make_block(stage: GENetStage, in_chs: int, stride: int, drop_path_rate: float) -> _GENetBlock:
    if stage.block == "xx":
        return XXBlock(in_chs, stage.width, stride, drop_path_rate)
    return BottleneckBlock(in_chs, stage.width, stride, drop_path_rate, bottle_ratio=BOTTLE_RATIO[stage.block],
                           depthwise=stage.block == "dw")


def _feature_table(arch: GENetArch) -> list[dict]:
    """The five feature maps, one per reduction: stem, stages 0-2, and ``final_conv`` (after stages 3-4)."""
    widths = [s.width for s in arch.stages]
    return [
        dict(num_chs=arch.stem_width, reduction=2, module="stem"),
        dict(num_chs=widths[0], reduction=4, module="stages.0"),
        dict(num_chs=widths[1], reduction=8, module="stages.1"),
        dict(num_chs=widths[2], reduction=16, module="stages.2"),
        dict(num_chs=arch.num_features, reduction=32, module="final_conv"),
    ]


# Which module ends each feature map of _feature_table, in forward order.
_FEATURE_ENDS = ("stem", "stages.0", "stages.1", "stages.2", "final_conv")


class GENet(ClassifierSurface, nn.Module):
    """GENet: 3x3 s2 stem, five stages (XX, XX, BL, DW, DW), 1x1 ``final_conv``, global pool, ``head.fc``
    (or, with ``head="ml_decoder"``, an ML-Decoder head on the last feature map; ``head_options`` size it).

    Every norm is BatchNorm followed by ReLU (``norm="bn"``). With ``features_only=True`` the head is
    dropped and ``forward`` returns the feature maps in ``out_indices`` (0 = stem, stride 2; 1-3 = stages
    0-2, strides 4-16; 4 = ``final_conv``, stride 32), described by ``feature_info``.
    """

    def __init__(self, arch: GENetArch, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm: str = "bn", features_only: bool = False,
                 out_indices: tuple[int, ...] = (1, 2, 3, 4), head: str = "fc",
                 head_options: dict | None = None) -> None:
        super().__init__()
        if norm != "bn":
            raise ValueError(f"GENet uses plain BatchNorm with ReLU; norm {norm!r} is not available: use norm='bn'")
        self.arch = arch
        self.norm = norm
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stem = ConvNormAct(in_chans, arch.stem_width, 3, 2, "relu", 0.0, "bn")
        self.stages = self._make_stages(drop_path_rate)
        self.final_conv = ConvNormAct(arch.stages[-1].width, arch.num_features, 1, 1, "relu", 0.0, "bn")
        self.num_features = self.head_hidden_size = arch.num_features
        all_features = _feature_table(arch)
        self._init_outputs(all_features, features_only, out_indices, "0 (stem) to 4 (final_conv)", head, num_classes, drop_rate,
                           head_options)
        self.pretrained_cfg: dict = {}
        self.reset_parameters()

    def _make_stages(self, drop_path_rate: float) -> nn.Sequential:
        rates = stage_drop_path_rates([s.depth for s in self.arch.stages], drop_path_rate)
        stages, in_chs = [], self.arch.stem_width
        for stage, stage_rates in zip(self.arch.stages, rates, strict=True):
            blocks = []
            for i in range(stage.depth):
                blocks.append(_make_block(stage, in_chs, stage.stride if i == 0 else 1, stage_rates[i]))
                in_chs = stage.width
            stages.append(nn.Sequential(*blocks))
        return nn.Sequential(*stages)

    def reset_parameters(self) -> None:
        """timm's ``byobnet`` initialisation: He-normal convs (fan-out per group), the branch's last BN zeroed."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, _GENetBlock):
                nn.init.zeros_(cast(torch.Tensor, m.last_norm().weight))
        if isinstance(self.head, MLDecoderHead):
            self.head.reset_parameters()  # its own initialisation, as published (not the fc's)

    # --- the uniform surface -------------------------------------------------------------------

    def check_input_size(self, height: int, width: int) -> None:
        """Raise :class:`InputSizeError` unless the network can take ``height x width`` inputs."""
        if min(height, width) < MIN_INPUT_SIZE:
            raise InputSizeError(f"input size {height}x{width} is not supported: each side must be at least "
                                 f"{MIN_INPUT_SIZE} (GENet halves it five times; e.g. 192, 224, 256)")

    def _run_stages(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            for stage in self.stages:
                for block in cast(nn.Sequential, stage):
                    x = checkpointed(block, x)
            return x
        return self.stages(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map after ``final_conv``, ``(N, num_features, H/32, W/32)``."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting()):
            self.check_input_size(x.shape[-2], x.shape[-1])
        return self.final_conv(self._run_stages(self.stem(x)))

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps in ``out_indices`` (all five when the model has a head)."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting()):
            self.check_input_size(x.shape[-2], x.shape[-1])
        wanted = self.out_indices or tuple(range(len(_FEATURE_ENDS)))
        modules = [self.stem, self.stages[0], self.stages[1], self.stages[2],
                   nn.Sequential(self.stages[3], self.stages[4], self.final_conv)]
        return run_until(modules, wanted, x)


# --- the family: its registered models and checkpoint layouts --------------------------------------

# GENet's preprocessing: ImageNet mean/std normalisation. The official evaluation (the release's val.py)
# resizes the short side to ceil(size / 0.875), bilinear, and centre-crops ``size``: 192 for light and
# normal, 256 for large; ``top1`` is the paper's figure at that size. timm evaluates the same weights
# (``gernet_s/m/l.idstcv_in1k``) at 224 / 224 / 256 with floor rounding: ``timm_eval`` (timm's
# results/results-imagenet.csv, huggingface/pytorch-image-models at commit aa4b585, August 2026).
# ``weights``: the published weights (tresnet.weights), tagged as timm tags them, with their files' names in the
# official release and in timm's older release (rwightman/pytorch-image-models v0.1-ger-weights).
_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _official_eval(size: int) -> dict:
    return dict(input_size=(3, size, size), crop_pct=0.875, crop_mode="center", resize_rounding="ceil",
                interpolation="bilinear", **_IMAGENET)


MODEL_CONFIGS: dict[str, dict] = {
    "genet_light": dict(arch="genet_light", **_official_eval(192), top1=75.7, timm_name="gernet_s",
                        timm_eval=dict(img_size=224, top1=76.874),
                        weights={"idstcv_in1k": dict(files=("GENet_small.pth", "gernet_s-*.pth"))}),
    "genet_normal": dict(arch="genet_normal", **_official_eval(192), top1=80.0, timm_name="gernet_m",
                         timm_eval=dict(img_size=224, top1=80.702),
                         weights={"idstcv_in1k": dict(files=("GENet_normal.pth", "gernet_m-*.pth"))}),
    "genet_large": dict(arch="genet_large", **_official_eval(256), top1=81.3, timm_name="gernet_l",
                        timm_eval=dict(img_size=256, top1=81.354),
                        weights={"idstcv_in1k": dict(files=("GENet_large.pth", "gernet_l-*.pth"))}),
}

FAMILY = Family(
    name="genet",
    title="GENet",
    paper="Lin et al., Neural Architecture Design for GPU-Efficient Networks, arXiv 2006.14090",
    variants=VARIANTS,
    models=MODEL_CONFIGS,
    build=GENet,
    formats=(
        CheckpointFormat("timm", "stem.conv.weight"),
        CheckpointFormat("official", genet_formats.OFFICIAL_MARKER, genet_formats.convert_official,
                         genet_formats.official_key),
    ),
    infer_arch=functools.partial(genet_formats.infer_architecture, variants=VARIANTS),
    norms=("bn",),
    first_conv="stem.conv",
    fusion_rules=genet_fusion.fusion_rules(GENet, (XXBlock, BottleneckBlock)),
)

__all__ = ["FAMILY", "MODEL_CONFIGS", "VARIANTS", "BottleneckBlock", "GENet", "GENetArch", "GENetStage",
           "XXBlock"]

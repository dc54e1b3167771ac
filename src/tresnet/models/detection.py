"""Object detectors on our backbones: torchvision's FCOS and RetinaNet over a feature pyramid of a family's
stride-8/16/32 features.

The TResNet paper (Ridnik et al., arXiv 2003.13630, section 3.5) puts TResNet-M into FCOS in place of ResNet50
and reports COCO mAP 44.0 against 42.8; the official release never shipped that code (Alibaba-MIIL/TResNet issue
#14). Nothing here is a detector of our own: :class:`FeaturePyramid` hands torchvision's detectors what they ask of
a backbone (an ``out_channels`` and an ordered dict of feature maps), built as torchvision builds
``fcos_resnet50_fpn`` and ``retinanet_resnet50_fpn``: the stride 8/16/32 maps (ResNet's layers 2-4) into a
``FeaturePyramidNetwork`` with P6 and P7 computed from P5 (``LastLevelP6P7``).

What differs from torchvision's ResNet backbones, and is taken care of here:

- the input normalisation is the backbone's: none for TResNet (mean 0, std 1: it reads [0, 1]), ImageNet's for
  GENet; the detector's transform is given that mean and std, so images are normalised once;
- the norms carry their activation (In-Place ABN), so freezing them (:func:`tresnet.layers.freeze_norms`) keeps
  it; ``trainable_layers`` counts the backbone's five parts from the deepest, as torchvision's does
  (``conv1``, ``layer1`` .. ``layer4`` for TResNet; GENet's stem, stages and final conv).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeAlias, cast

import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from tresnet.errors import ConfigError
from tresnet.layers.frozen_norm import freeze_norms
from tresnet.models.common import FeatureInfo

DETECTOR_HEADS = ("fcos", "retinanet")
# What build_detector makes: torchvision's detectors (which ship no types).
Detector: TypeAlias = FCOS | RetinaNet
FEATURE_INDICES = (2, 3, 4)  # the stride 8, 16 and 32 feature maps of features_only: P3, P4 and P5
BACKBONE_PARTS = 5  # the feature points of every family: what trainable_layers counts
LEVELS = 5  # P3 .. P7
FCOS_NORM_GROUPS = 32  # torchvision's FCOS head: GroupNorm(32, channels) after each conv
# Each head's defaults in torchvision (FCOS: anchor size = the level's stride; RetinaNet: 32 .. 512 at three
# scales and three aspect ratios).
_DEFAULT_ANCHOR_SIZE = {"fcos": 8, "retinanet": 32}
_DEFAULT_THRESHOLDS = {"fcos": (0.2, 0.6), "retinanet": (0.05, 0.5)}  # (score, NMS IoU)


@dataclass(frozen=True)
class DetectorOptions:
    """How a detector is put together beyond its backbone, head and classes.

    ``min_size`` / ``max_size``: the detector's transform resizes each image so that its shorter side is
    ``min_size`` and its longer side at most ``max_size`` (None: ``min_size`` x 1333 / 800, torchvision's ratio).
    ``fpn_channels``: the pyramid's width (256 in torchvision). ``anchor_size``: the base size of level P3, each
    next level's twice the one before (FCOS gives a location of a level the objects whose largest centre-to-edge
    distance lies between 4x and 8x its size; RetinaNet adds two scales per size); None: torchvision's (FCOS 8,
    the stride; RetinaNet 32). ``trainable_layers``: how many of the backbone's five
    parts train, from the deepest (None: 3 when the backbone starts from weights, else 5: torchvision's defaults).
    ``train_norms``: whether the norms train (None: frozen when the backbone starts from weights, as torchvision
    does). ``score_threshold`` / ``nms_threshold``: the head's post-processing (None: torchvision's defaults);
    ``detections_per_image``: the most boxes kept per image."""

    min_size: int = 800
    max_size: int | None = None
    fpn_channels: int = 256
    anchor_size: int | None = None
    trainable_layers: int | None = None
    train_norms: bool | None = None
    score_threshold: float | None = None
    nms_threshold: float | None = None
    detections_per_image: int = 100

    def check(self) -> DetectorOptions:
        """Itself; :class:`ConfigError` naming the first bad value."""
        if self.min_size < 32 or (self.max_size is not None and self.max_size < self.min_size):
            raise ConfigError(f"detector sizes min {self.min_size}, max {self.max_size}: the shorter side must be "
                              f"at least 32 and the longer side limit at least the shorter side")
        if self.fpn_channels < 1 or self.detections_per_image < 1:
            raise ConfigError("fpn_channels and detections_per_image must be at least 1")
        if self.anchor_size is not None and self.anchor_size < 1:
            raise ConfigError(f"anchor_size must be at least 1 pixel, got {self.anchor_size}")
        if self.trainable_layers is not None and not 0 <= self.trainable_layers <= BACKBONE_PARTS:
            raise ConfigError(f"trainable_layers counts the backbone's {BACKBONE_PARTS} parts from the deepest: "
                              f"use 0 to {BACKBONE_PARTS}, got {self.trainable_layers}")
        for name in ("score_threshold", "nms_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {value}")
        return self

    def limit(self) -> int:
        """The longer-side limit of the detector's resize."""
        return self.max_size if self.max_size is not None else math.ceil(self.min_size * 1333 / 800)


@dataclass(frozen=True)
class DetectorConfig:
    """What rebuilds a detector's modules (its checkpoints record it, as ``network``): the head, the classes, the
    pyramid's width, the anchors, the transform's sizes and normalisation, and the post-processing."""

    head: str
    num_classes: int
    min_size: int
    max_size: int
    fpn_channels: int
    anchor_sizes: tuple[int, ...]
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    score_threshold: float
    nms_threshold: float
    detections_per_image: int

    @classmethod
    def of(cls, head: str, num_classes: int, options: DetectorOptions, pretrained_cfg: dict) -> DetectorConfig:
        """The configuration ``options`` give a ``head`` detector of ``num_classes`` on a backbone whose
        configuration is ``pretrained_cfg`` (its mean and std); :class:`ConfigError` for an unknown head."""
        if head not in DETECTOR_HEADS:
            raise ConfigError(f"unknown detector head {head!r}: use one of {', '.join(DETECTOR_HEADS)}")
        options.check()
        if head == "fcos" and (options.fpn_channels % FCOS_NORM_GROUPS or options.fpn_channels < 2 * FCOS_NORM_GROUPS):
            # GroupNorm needs two values per group: one channel each on P7's 1x1 map of a small image fails
            raise ConfigError(f"fpn_channels {options.fpn_channels}: FCOS's head normalises its channels in "
                              f"{FCOS_NORM_GROUPS} groups of at least two; use a multiple of {FCOS_NORM_GROUPS}, "
                              f"{2 * FCOS_NORM_GROUPS} or more")
        score, nms = _DEFAULT_THRESHOLDS[head]
        return cls(head, num_classes, options.min_size, options.limit(), options.fpn_channels,
                   tuple((options.anchor_size or _DEFAULT_ANCHOR_SIZE[head]) * 2 ** level for level in range(LEVELS)),
                   tuple(float(v) for v in pretrained_cfg.get("mean", (0.0, 0.0, 0.0))),
                   tuple(float(v) for v in pretrained_cfg.get("std", (1.0, 1.0, 1.0))),
                   score if options.score_threshold is None else options.score_threshold,
                   nms if options.nms_threshold is None else options.nms_threshold, options.detections_per_image)

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> DetectorConfig:
        """The configuration a checkpoint recorded; :class:`ConfigError` when an entry is missing."""
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ConfigError(f"the detector configuration lacks {', '.join(missing)}: was the file edited?")
        values: dict[str, Any] = {name: tuple(data[name]) if isinstance(data[name], list) else data[name] for name in names}
        return cls(**values)


class FeaturePyramid(nn.Module):
    """A backbone for torchvision's detectors: a ``features_only`` network's stride 8/16/32 maps through a
    ``FeaturePyramidNetwork`` with P6 and P7 from P5; ``out_channels`` is the pyramid's width."""

    def __init__(self, body: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(cast(FeatureInfo, body.feature_info).channels(), out_channels,
                                         extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(index), feature) for index, feature in enumerate(self.body(x))))


def parameter_parts(body: nn.Module) -> dict[str, int]:
    """The backbone part (0 .. 4: the feature point it computes towards) of each parameter of ``body``.

    Parameters are registered in the order they run, so one that lies in no feature point's module belongs to
    the next point (GENet's stages after the stride-16 point belong to the stride-32 one)."""
    points = [info["module"] for info in cast(FeatureInfo, body.all_feature_info)]
    parts, last = {}, -1
    for name, _ in body.named_parameters():
        part = next((index for index, point in enumerate(points) if name.startswith(point + ".")), None)
        if part is None:
            part = min(last + 1, len(points) - 1)
        else:
            last = part
        parts[name] = part
    return parts


def set_trainable_layers(body: nn.Module, trainable_layers: int) -> None:
    """Stop the gradients of all but the deepest ``trainable_layers`` of the backbone's five parts."""
    first_trained = BACKBONE_PARTS - trainable_layers
    parts = parameter_parts(body)
    for name, parameter in body.named_parameters():
        if parts[name] < first_trained:
            parameter.requires_grad_(False)


def _anchors(config: DetectorConfig) -> AnchorGenerator:
    if config.head == "fcos":  # one point per location, its size the level's scale
        return AnchorGenerator(tuple((size,) for size in config.anchor_sizes), ((1.0,),) * LEVELS)
    scales = tuple((size, int(size * 2 ** (1 / 3)), int(size * 2 ** (2 / 3))) for size in config.anchor_sizes)
    return AnchorGenerator(scales, ((0.5, 1.0, 2.0),) * LEVELS)


def build_detector(body: nn.Module, config: DetectorConfig) -> Detector:
    """torchvision's FCOS or RetinaNet (``config.head``) on ``body``'s feature pyramid; its transform resizes to
    ``config.min_size`` / ``max_size`` and normalises with the backbone's mean and std."""
    detector_class = FCOS if config.head == "fcos" else RetinaNet
    return detector_class(FeaturePyramid(body, config.fpn_channels), config.num_classes,
                          min_size=config.min_size, max_size=config.max_size, image_mean=list(config.image_mean),
                          image_std=list(config.image_std), anchor_generator=_anchors(config),
                          score_thresh=config.score_threshold, nms_thresh=config.nms_threshold,
                          detections_per_img=config.detections_per_image)


def prepare_backbone(body: nn.Module, options: DetectorOptions, from_weights: bool) -> None:
    """Freeze ``body``'s norms and early parts as ``options`` say (their defaults follow ``from_weights``: a
    backbone that starts from weights keeps its norms and first two parts fixed, as torchvision's detectors do)."""
    train_norms = (not from_weights) if options.train_norms is None else options.train_norms
    trainable = (3 if from_weights else BACKBONE_PARTS) if options.trainable_layers is None else options.trainable_layers
    if not train_norms:
        freeze_norms(body)
    set_trainable_layers(body, trainable)


__all__ = ["BACKBONE_PARTS", "DETECTOR_HEADS", "FEATURE_INDICES", "Detector", "DetectorConfig", "DetectorOptions",
           "FeaturePyramid", "build_detector", "parameter_parts", "prepare_backbone", "set_trainable_layers"]

"""The detector forms of the benchmark: ``NAME:fcos`` and ``NAME:retinanet`` measure torchvision's FCOS or RetinaNet
on NAME's backbone, as a detection run trains it from ImageNet weights (:func:`tresnet.create_detector`: norms
frozen, three of the five backbone parts trained, a 256-channel pyramid with P6/P7).

``resnet50:fcos`` (and ``resnet101``) is the reference, torchvision's own ``fcos_resnet50_fpn`` /
``retinanet_resnet50_fpn`` built the same way: ResNet with ``FrozenBatchNorm2d``, its layers 2-4 through
``BackboneWithFPN`` with ``LastLevelP6P7(256, 256)``, ``conv1`` and ``layer1`` not trained (torchvision's
``trainable_backbone_layers=3``). Every detector resizes to the benchmark's input side (``min_size`` = ``max_size``
= the side), so the synthetic square images go through at that size, and scores 80 classes (COCO's).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import get_model
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from tresnet.bench.specs import BuildOptions, ModelSpec
from tresnet.errors import ConfigError
from tresnet.factory import create_detector

COCO_CLASSES = 80
DEFAULT_DETECTION_SIDE = 800  # the COCO detectors' shorter side, when the run gives none
TORCHVISION_BACKBONES = {"resnet50": (512, 1024, 2048), "resnet101": (512, 1024, 2048)}  # layers 2-4's widths
TRAINED_PARTS = 3  # torchvision's trainable_backbone_layers default for a pretrained backbone
_TORCHVISION_PARTS = ("layer4", "layer3", "layer2", "layer1", "conv1")


def detection_side(options: BuildOptions) -> int:
    return options.img_size or DEFAULT_DETECTION_SIDE


def check_detector(spec: ModelSpec, options: BuildOptions) -> None:
    """:class:`ConfigError` for a timm model torchvision has no detection backbone of."""
    if spec.impl != "tresnet" and spec.name not in TORCHVISION_BACKBONES:
        raise ConfigError(f"{spec.label}: the detector reference is torchvision's ResNet ("
                          f"{', '.join(TORCHVISION_BACKBONES)}); other models must be ours")


def _torchvision_detector(name: str, head: str, side: int) -> nn.Module:
    """torchvision's ``{head}_{name}_fpn`` as its builder makes it around a pretrained backbone (frozen norms, three
    parts trained), with fresh weights."""
    body = get_model(name, weights=None, norm_layer=FrozenBatchNorm2d)
    trained = _TORCHVISION_PARTS[:TRAINED_PARTS]
    for parameter_name, parameter in body.named_parameters():
        if not parameter_name.startswith(trained):
            parameter.requires_grad_(False)
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, list(TORCHVISION_BACKBONES[name]),
                               256, extra_blocks=LastLevelP6P7(256, 256))
    detector = (FCOS if head == "fcos" else RetinaNet)(backbone, COCO_CLASSES, min_size=side, max_size=side)
    detector.num_classes = COCO_CLASSES
    detector.pretrained_cfg = {"input_size": (3, side, side), "task": "detection", "head": head}  # its side, as ours
    return detector


def detector_builder(head: str):
    """The build of the ``head`` form: ours through :func:`tresnet.create_detector`, ResNet through torchvision."""

    def build(spec: ModelSpec, options: BuildOptions) -> nn.Module:
        side = detection_side(options)
        if spec.impl != "tresnet":
            return _torchvision_detector(spec.name, head, side)
        return create_detector(spec.name, head=head, num_classes=COCO_CLASSES, min_size=side, max_size=side,
                               trainable_layers=TRAINED_PARTS, train_norms=False)

    return build


__all__ = ["COCO_CLASSES", "DEFAULT_DETECTION_SIDE", "TORCHVISION_BACKBONES", "check_detector", "detection_side",
           "detector_builder"]

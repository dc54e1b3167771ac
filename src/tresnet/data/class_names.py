"""Class labels: the 1000 ImageNet names or the 80 COCO names (shipped with torchvision, no download), or a
checkpoint's own."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

IMAGENET_NUM_CLASSES = 1000
COCO_NUM_CLASSES = 80


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in the usual index order (sorted synset ids)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@cache
def coco_class_names() -> tuple[str, ...]:
    """The 80 COCO category names in the usual index order: the categories of the instances files in
    their order (ids 1..90 with gaps), as multi-label COCO models number their outputs."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    # The detection list has 91 slots: a background class and "N/A" for the unused category ids.
    categories = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return tuple(name for name in categories if name not in ("__background__", "N/A"))


def class_labels(num_classes: int, class_names: Sequence[str] | None = None, *,
                 defaults: Sequence[str] | None = None) -> list[str]:
    """A label per class index: ``class_names`` when they fit, else ``defaults`` (the task's labels for a known
    class count, e.g. ImageNet's or COCO's names) when they fit, else the indices."""
    for names in (class_names, defaults):
        if names is not None and len(names) == num_classes:
            return [str(name) for name in names]
    return [str(index) for index in range(num_classes)]


__all__ = ["COCO_NUM_CLASSES", "IMAGENET_NUM_CLASSES", "class_labels", "coco_class_names", "imagenet_class_names"]

"""Class labels: the 1000 ImageNet names (shipped with torchvision, no download) or a checkpoint's own."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

IMAGENET_NUM_CLASSES = 1000


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in the usual index order (sorted synset ids)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def class_labels(num_classes: int, class_names: Sequence[str] | None = None) -> list[str]:
    """A label per class index: ``class_names`` when they fit, ImageNet's for 1000 classes, else indices."""
    if class_names is not None and len(class_names) == num_classes:
        return [str(name) for name in class_names]
    if num_classes == IMAGENET_NUM_CLASSES:
        return list(imagenet_class_names())
    return [str(index) for index in range(num_classes)]


__all__ = ["IMAGENET_NUM_CLASSES", "class_labels", "imagenet_class_names"]

"""``digits``: scikit-learn's bundled handwritten digits (1,797 greyscale 8x8 images, 10 classes) as an
RGB image data set at any size, with a fixed-seed stratified train/val split
(:func:`tresnet.data.splits.stratified_split`). No download needed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tresnet.data.splits import check_split, stratified_split
from tresnet.errors import ConfigError, MissingDependencyError

DIGITS_CLASSES = tuple(str(d) for d in range(10))
DIGITS_MAX_VALUE = 16  # pixel values of the bundled images are 0..16


@lru_cache(maxsize=4)
def load_digits_images(img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``uint8`` RGB tensors ``(N, 3, img_size, img_size)`` (bilinear upscaling,
    white ink on black as in the source) and their labels ``(N,)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise MissingDependencyError("the digits data set needs scikit-learn: pip install 'tresnet[train]'") from e
    if img_size < 8:
        raise ConfigError(f"digits images need a size of at least 8, got {img_size}")
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / DIGITS_MAX_VALUE)[:, None]
    images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, torch.from_numpy(bunch.target.astype(np.int64))


class DigitsDataset(Dataset):
    """One split of the digits: ``(transform(uint8 image tensor (3, H, W)), label)`` pairs.

    ``split`` is ``"train"`` or ``"val"``; the same ``val_fraction`` and ``split_seed`` always give the
    same split. Without a transform the image is returned as ``float32`` in [0, 1].
    """

    classes = list(DIGITS_CLASSES)
    class_to_idx = {name: i for i, name in enumerate(DIGITS_CLASSES)}

    def __init__(self, split: str = "train", img_size: int = 32, transform: Callable | None = None,
                 val_fraction: float = 0.2, split_seed: int = 0) -> None:
        check_split(split, val_fraction)
        images, labels = load_digits_images(img_size)
        train, val = stratified_split(labels, val_fraction, split_seed)
        self.indices = train if split == "train" else val
        self.images, self.labels = images, labels
        self.targets = labels[self.indices].tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image = self.images[self.indices[index]]
        image = self.transform(image) if self.transform is not None else image.float() / 255
        return image, self.targets[index]


__all__ = ["DIGITS_CLASSES", "DigitsDataset", "load_digits_images"]

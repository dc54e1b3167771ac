"""``digits-multilabel``: a multi-label demo built from scikit-learn's bundled digits, no download needed.

Each image is a ``grid x grid`` mosaic (default 2x2) of cells; every cell is empty or holds one digit
upscaled to fill it, an image holds 1 to ``grid * grid`` digits, and its label is the SET of digits present
(multi-hot over the classes ``"0"`` .. ``"9"``; a digit drawn twice counts once). Train and val mosaics are
built from disjoint source digits: the stratified split of :class:`~tresnet.data.digits.DigitsDataset`
(:func:`tresnet.data.splits.stratified_split` with the same ``val_fraction`` and ``split_seed``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch.utils.data import Dataset

from tresnet.data.digits import DIGITS_CLASSES, load_digits_images
from tresnet.data.splits import check_split, stratified_split
from tresnet.errors import ConfigError

DIGITS_MULTILABEL = "digits-multilabel"
MIN_CELL_SIZE = 8  # the source digits are 8x8: a smaller cell would shrink them
DEFAULT_NUM_IMAGES = {"train": 3000, "val": 1000}
_SPLIT_STREAM = {"train": 0, "val": 1}  # train and val draw from different random streams


def _mosaic_seed(split: str, split_seed: int) -> int:
    return 2 * split_seed + _SPLIT_STREAM[split]


def _draw_layout(num_images: int, cells: int, pool: int, generator: torch.Generator):
    """Per image: which cells hold a digit ``(N, cells)`` bool and which pool digit each cell shows."""
    counts = torch.randint(1, cells + 1, (num_images, 1), generator=generator)
    # A random permutation of the cells per image; the first ``count`` of it are filled.
    ranks = torch.rand(num_images, cells, generator=generator).argsort(dim=1).argsort(dim=1)
    filled = ranks < counts
    picks = torch.randint(0, pool, (num_images, cells), generator=generator)
    return filled, picks


@lru_cache(maxsize=4)
def build_digits_mosaics(split: str, img_size: int, grid: int, num_images: int, val_fraction: float,
                         split_seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mosaics of one split as ``uint8`` RGB ``(N, 3, img_size, img_size)`` (white ink on black), their
    multi-hot targets ``(N, 10)`` ``float32`` and the source digit of every cell ``(N, grid * grid)``
    (an index into the 1,797 digits, row by row; -1 for an empty cell). The same arguments always give the
    same tensors.

    A cell is ``img_size // grid`` pixels; when ``img_size`` is not a multiple of ``grid`` the mosaic sits
    in the top-left corner and the rest stays black. Raises :class:`ConfigError` for a cell under 8 pixels.
    """
    cell = img_size // grid
    if cell < MIN_CELL_SIZE:
        raise ConfigError(f"digits mosaic cells of {img_size}px / {grid} = {cell}px are too small: "
                          f"use an img_size of at least {MIN_CELL_SIZE * grid} or a smaller grid")
    digits, labels = load_digits_images(cell)
    train, val = stratified_split(labels, val_fraction, split_seed)
    source = torch.tensor(train if split == "train" else val)
    generator = torch.Generator().manual_seed(_mosaic_seed(split, split_seed))
    filled, picks = _draw_layout(num_images, grid * grid, len(source), generator)
    chosen = source[picks]  # (N, cells) indices into the 1,797 digits
    tiles = digits[chosen, 0] * filled[..., None, None].to(torch.uint8)  # (N, cells, cell, cell)
    mosaic = tiles.view(num_images, grid, grid, cell, cell).permute(0, 1, 3, 2, 4)
    images = torch.zeros(num_images, img_size, img_size, dtype=torch.uint8)
    images[:, : grid * cell, : grid * cell] = mosaic.reshape(num_images, grid * cell, grid * cell)
    targets = torch.zeros(num_images, len(DIGITS_CLASSES), dtype=torch.float32)
    targets.scatter_reduce_(1, labels[chosen], filled.float(), reduce="amax")  # a set: 1 if any cell shows it
    sources = torch.where(filled, chosen, torch.full_like(chosen, -1))
    return images[:, None].expand(-1, 3, -1, -1).contiguous(), targets, sources


class DigitsMosaicDataset(Dataset):
    """One split of the digit mosaics: ``(transform(uint8 image (3, H, W)), multi-hot target (10,))``.

    ``split`` is ``"train"`` or ``"val"``; ``num_images`` defaults to 3,000 train / 1,000 val mosaics
    (the ~1,440 train and ~360 val source digits each appear several times, in different company).
    Everything is fixed by the arguments (see :func:`build_digits_mosaics`, whose tensors are ``images``,
    ``targets`` and ``sources``; do not modify them: they are cached). Without a transform the image
    is ``float32`` in [0, 1], as in :class:`~tresnet.data.digits.DigitsDataset`. Raises
    :class:`ConfigError` for an unknown split, a ``val_fraction`` outside (0, 1), a grid under 1, a
    non-positive ``num_images`` or cells under 8 pixels.
    """

    classes = list(DIGITS_CLASSES)
    class_to_idx = {name: i for i, name in enumerate(DIGITS_CLASSES)}
    num_classes = len(DIGITS_CLASSES)

    def __init__(self, split: str = "train", img_size: int = 32, transform: Callable | None = None, *,
                 grid: int = 2, num_images: int | None = None, val_fraction: float = 0.2,
                 split_seed: int = 0) -> None:
        check_split(split, val_fraction, "digits mosaic")
        if grid < 1:
            raise ConfigError(f"digits mosaic grid must be 1 or more cells per side, got {grid}")
        num_images = DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
        if num_images < 1:
            raise ConfigError(f"digits mosaic num_images must be 1 or more, got {num_images}")
        self.split, self.grid = split, grid
        self.images, self.targets, self.sources = build_digits_mosaics(
            split, img_size, grid, num_images, float(val_fraction), split_seed)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        image = self.transform(image) if self.transform is not None else image.float() / 255
        return image, self.targets[index]


__all__ = ["DEFAULT_NUM_IMAGES", "DIGITS_MULTILABEL", "DigitsMosaicDataset", "build_digits_mosaics"]

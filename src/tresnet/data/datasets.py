"""ImageNet-style folders: one sub-folder per class, sorted names give the class index.

Unreadable files are not fatal by default. The dataset hands back an :class:`UnreadableImage` marker
instead of a sample, :meth:`ImageFolderDataset.collate` moves the markers out of the batch into
``batch.skipped``, and the loader of :func:`tresnet.data.loader.create_loader` reports them in the main
process (one warning per file, counted in ``dataset.skipped``, or a :class:`DataError` when ``strict``).
Doing it there, not in the worker processes, keeps the count right and the error message one line.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_collate
from torchvision.datasets import DatasetFolder

from tresnet.data.images import IMAGE_EXTENSIONS, is_image_file, load_image
from tresnet.errors import DataError

_STRICT_NOTE = "strict mode: without --strict (strict=False) unreadable files are skipped and counted"


class UnreadableImageWarning(UserWarning):
    """A file of a data folder was skipped because it could not be read as an image."""


@dataclass(frozen=True)
class UnreadableImage:
    """Stands in for the sample of a file that could not be read."""

    path: str
    reason: str


class ImageBatch(tuple):
    """``(images, targets)`` that also carries ``skipped``: the :class:`UnreadableImage` s left out.

    Unpacks like the usual pair; survives worker processes and memory pinning.
    """

    skipped: tuple[UnreadableImage, ...]

    def __new__(cls, images: torch.Tensor, targets: torch.Tensor, skipped: Sequence[UnreadableImage] = ()):
        batch = super().__new__(cls, (images, targets))
        batch.skipped = tuple(skipped)
        return batch

    def __reduce__(self):
        return (ImageBatch, (self[0], self[1], self.skipped))

    def pin_memory(self, device: str | None = None) -> ImageBatch:
        args = () if device is None else (device,)
        return ImageBatch(self[0].pin_memory(*args), self[1].pin_memory(*args), self.skipped)


def read_or_mark(path: str, strict: bool, loader: Callable = load_image):
    """``loader(path)``, or an :class:`UnreadableImage` for a file it cannot read; with ``strict``, in the
    main process, a :class:`DataError` instead (a worker process marks it: the loader reports it)."""
    try:
        return loader(path)
    except DataError as e:
        if strict and get_worker_info() is None:
            raise DataError(f"{e} ({_STRICT_NOTE})") from e
        return UnreadableImage(path, str(e))


def _is_visible_folder(entry: os.DirEntry) -> bool:
    # Hidden folders (.ipynb_checkpoints, .git...) are not classes: counting them shifts every index.
    return entry.is_dir() and not entry.name.startswith(".")


class ImageFolderDataset(DatasetFolder):
    """An ImageNet-style folder: ``root/<class>/**/<image>``; sorted class names give the indices.

    Like torchvision's ``ImageFolder`` (same classes, same sample order), except that hidden folders
    are not classes, GIF files are read too, empty class folders are kept (their index still counts),
    every image goes through :func:`~tresnet.data.images.load_image`, and unreadable files are skipped
    and counted in ``skipped`` (see the module docstring) unless ``strict``.

    Raises :class:`DataError` for a missing folder, an empty folder, a folder without class
    sub-folders, and class folders without any image file.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, strict: bool = False):
        root = Path(root).expanduser()
        if not root.exists():
            raise DataError(f"data folder {root} does not exist: check the path")
        if not root.is_dir():
            raise DataError(f"data folder {root} is a file, not a folder of class sub-folders")
        self.strict = strict
        self.skipped_files: set[str] = set()
        super().__init__(str(root), loader=load_image, extensions=IMAGE_EXTENSIONS, transform=transform,
                         allow_empty=True)
        if not self.samples:
            raise DataError(
                f"no image files in the {len(self.classes)} class folders of {root} "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        with os.scandir(directory) as entries:
            entries = list(entries)
        classes = sorted(entry.name for entry in entries if _is_visible_folder(entry))
        if not classes:
            if not entries:
                raise DataError(f"data folder {directory} is empty: expected one sub-folder of images per class")
            loose = sum(1 for entry in entries if entry.is_file() and is_image_file(entry.name))
            raise DataError(
                f"data folder {directory} has no class sub-folders ({loose} image files lie directly in it): "
                f"put each class's images in a sub-folder named after the class (for ImageNet val, one "
                f"folder per synset such as n01440764)"
            )
        return classes, {name: index for index, name in enumerate(classes)}

    @property
    def skipped(self) -> int:
        """How many distinct files were found unreadable so far (reported through the loader)."""
        return len(self.skipped_files)

    def __getitem__(self, index: int):
        """``(image, target)``; for an unreadable file an :class:`UnreadableImage` (in the main
        process with ``strict``: a :class:`DataError`)."""
        path, target = self.samples[index]
        image = read_or_mark(path, self.strict, self.loader)
        if isinstance(image, UnreadableImage):
            return image
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    @staticmethod
    def collate(samples: list) -> ImageBatch:
        """Stack the readable samples into an :class:`ImageBatch`; the unreadable go to ``skipped``."""
        good = [s for s in samples if not isinstance(s, UnreadableImage)]
        skipped = [s for s in samples if isinstance(s, UnreadableImage)]
        if not good:  # a whole batch of unreadable files: an empty batch, still counted
            return ImageBatch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
        images, targets = default_collate(good)
        return ImageBatch(images, targets, skipped)

    def report_skipped(self, item: UnreadableImage) -> None:
        """Warn once about an unreadable file and count it; :class:`DataError` instead when ``strict``."""
        if self.strict:
            raise DataError(f"{item.reason} ({_STRICT_NOTE})")
        if item.path not in self.skipped_files:
            self.skipped_files.add(item.path)
            warnings.warn(f"{item.reason}; skipped", UnreadableImageWarning, stacklevel=2)


__all__ = ["ImageBatch", "ImageFolderDataset", "UnreadableImage", "UnreadableImageWarning", "read_or_mark"]

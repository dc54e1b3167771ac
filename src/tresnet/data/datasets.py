"""ImageNet-style folders: one sub-folder per class, sorted names give the class index (unless
:meth:`ImageFolderDataset.map_classes` says otherwise); a flat folder of ImageNet validation images with
its ground-truth file; ReaL labels beside the targets.

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
from typing import cast

import torch
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data._utils.collate import default_collate
from torchvision.datasets import DatasetFolder

from tresnet.data.imagenet import read_ground_truth, val_image_number
from tresnet.data.images import IMAGE_EXTENSIONS, find_images, is_image_file, load_image
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

    tasks = ("multiclass",)  # what its targets (one class index per image) serve
    samples: list[tuple[str, int]]  # (path, target), as torchvision's DatasetFolder sets them

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
        self.sample_classes = [self.classes[target] for _, target in self.samples]

    def map_classes(self, indices: dict[str, int]) -> None:
        """Give every sample the target ``indices[its class name]`` (a model output index, see
        :func:`tresnet.data.class_mapping.resolve_class_mapping`) instead of its sorted position."""
        self.class_to_idx = {name: indices[name] for name in self.classes}
        self.samples = [(path, indices[name]) for (path, _), name in zip(self.samples, self.sample_classes,
                                                                            strict=True)]
        self.imgs = self.samples
        self.targets = [target for _, target in self.samples]

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        with os.scandir(directory) as scan:
            entries = list(scan)
        classes = sorted(entry.name for entry in entries if _is_visible_folder(entry))
        if not classes:
            if not entries:
                raise DataError(f"data folder {directory} is empty: expected one sub-folder of images per class")
            loose = sum(1 for entry in entries if entry.is_file() and is_image_file(entry.name))
            raise DataError(
                f"data folder {directory} has no class sub-folders ({loose} image files lie directly in it): "
                f"put each class's images in a sub-folder named after the class (for ImageNet val, one "
                f"folder per synset such as n01440764), or pass --ground-truth FILE for the flat ImageNet val "
                f"folder (LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt)"
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


class GroundTruthDataset(ImageFolderDataset):
    """The images under ``root`` (a flat folder such as ImageNet's 50,000 validation JPEGs; sub-folders
    are read too), labelled by a ground-truth file (:func:`tresnet.data.imagenet.read_ground_truth`):
    each image by the number in its name (``ILSVRC2012_val_00000042.JPEG``). ``classes`` are the sorted
    synsets the file names (all 1000 for ImageNet's, also when the folder holds a part of the images);
    otherwise as :class:`ImageFolderDataset`.

    Raises :class:`DataError` for a missing or empty folder, a ground-truth file that cannot be read, and
    images it does not cover (naming how many, and one).
    """

    def __init__(self, root: str | os.PathLike, ground_truth: str | os.PathLike,
                 transform: Callable | None = None, strict: bool = False):
        self.ground_truth = Path(ground_truth).expanduser()
        self._labels = read_ground_truth(self.ground_truth)
        super().__init__(root, transform=transform, strict=strict)

    def _labelled_files(self, directory: str) -> list[tuple[str, str]]:
        files = find_images([directory])[0]
        if not files:
            raise DataError(f"data folder {directory} has no image files (looked for {', '.join(IMAGE_EXTENSIONS)})")
        numbers = [val_image_number(path) for path in files]
        uncovered = [path for path, number in zip(files, numbers, strict=True) if number not in self._labels]
        if uncovered:
            raise DataError(f"{len(uncovered)} of the {len(files)} images in {directory} have no line in "
                            f"{self.ground_truth} (e.g. {Path(uncovered[0]).name}): the ground truth must cover "
                            f"every image, named ILSVRC2012_val_NNNNNNNN as ImageNet's")
        # every number is one of the labels' (checked above), so none is None
        return [(str(path), self._labels[cast(int, number)]) for path, number in zip(files, numbers, strict=True)]

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        self._files = self._labelled_files(directory)
        classes = sorted(set(self._labels.values()))
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], *args, **kwargs) -> list[tuple[str, int]]:
        return [(path, class_to_idx[synset]) for path, synset in self._files]


class RealLabelled(Dataset):
    """``dataset`` (ImageNet validation images, targets already model indices) with its images' ReaL
    labels: each target becomes the row ``[label, real_1, ..., real_k, -1, ...]`` (padded with -1 to the
    longest ReaL entry); an image ReaL gives no label has only -1 after its label.

    Raises :class:`DataError` when an image is not an ImageNet validation image that ``real`` covers.
    """

    def __init__(self, dataset: ImageFolderDataset, real: Sequence[Sequence[int]], source: str = "the ReaL labels"):
        self.dataset = dataset
        width = max(1, max(len(labels) for labels in real))
        self.rows = torch.full((len(dataset.samples), 1 + width), -1, dtype=torch.long)
        for row, (path, target) in enumerate(dataset.samples):
            number = val_image_number(path)
            if number is None or not 1 <= number <= len(real):
                raise DataError(f"{Path(path).name} is not an ImageNet validation image that {source} covers "
                                f"(ILSVRC2012_val_00000001 to _{len(real):08d}): ReaL labels only apply to "
                                f"ImageNet val")
            self.rows[row, 0] = target
            self.rows[row, 1:1 + len(real[number - 1])] = torch.as_tensor(real[number - 1], dtype=torch.long)
        self.real_images = int((self.rows[:, 1] >= 0).sum())

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if isinstance(item, UnreadableImage):
            return item
        return item[0], self.rows[index]


__all__ = ["GroundTruthDataset", "ImageBatch", "ImageFolderDataset", "RealLabelled", "UnreadableImage",
           "UnreadableImageWarning", "read_or_mark"]

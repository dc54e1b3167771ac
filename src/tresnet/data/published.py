"""Public fine-tuning sets as their publishers distribute them (CIFAR-10/100, Oxford Flowers-102, Stanford Cars,
Oxford-IIIT Pets, FGVC-Aircraft, Food-101, DTD), read from disk by torchvision's dataset classes.

``--data NAME:ROOT`` names one (:data:`PUBLISHED_SETS`); ROOT is the folder torchvision's class takes (the one that
holds ``cifar-10-batches-py/``, ``flowers-102/``...), or that set folder itself. Nothing is downloaded: a missing
file is a one-line :class:`DataError` that names it and where the set is published.

torchvision parses each set's own files (pickles, ``.mat`` files, split lists, json) with ``download=False``; it
also compares the md5 sums of some of them (CIFAR's batches, Flowers' ``.mat`` files) with the published ones.
That comparison is the one check relaxed here (:func:`files_exist_only`): the files must exist and parse, so a set
re-packed by another tool, or a small one written in the same format, reads too. The images are then read like
every image of this package (:func:`tresnet.data.images.load_image`; an unreadable one is skipped and counted):
:class:`PublishedDataset` is an :class:`~tresnet.data.datasets.ImageFolderDataset` whose samples come from the
set's split lists rather than from a folder scan.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torchvision.datasets as tv_datasets
import torchvision.datasets.utils as tv_dataset_utils
from PIL import Image

from tresnet.data.datasets import ImageFolderDataset
from tresnet.errors import DataError

Samples = list[tuple[str, int]]
# (torchvision root, split) -> (samples, class names, image reader: None for files)
Reader = Callable[[Path, str], tuple[Samples, list[str], Callable | None]]


@dataclass(frozen=True)
class PublishedSet:
    """A public set as distributed: its ``name`` (what ``--data NAME:ROOT`` calls it), ``title``, ``folder`` (where
    torchvision's class looks under ROOT), ``url`` (where it is published), its official ``splits`` (disjoint, the
    training split first), the ``files`` each split needs (relative to ``folder``; ``"*"``: every split; a trailing
    ``/``: a folder), its ``reader``, and ``native_size``, the side of all its images when they share one (CIFAR's
    32), resized to the run's input."""

    name: str
    title: str
    folder: str
    url: str
    splits: tuple[str, ...]
    files: dict[str, tuple[str, ...]]
    reader: Reader = field(repr=False)
    native_size: int | None = None

    @property
    def test_split(self) -> str:
        """The split a run validates on, and validation evaluates, unless told otherwise: the last (test)."""
        return self.splits[-1]

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """The splits a run may validate on: all but the training one."""
        return self.splits[1:]

    def train_splits(self, val_split: str) -> tuple[str, ...]:
        """What a run validating on ``val_split`` trains on: the splits before it (train + val when it validates on
        test, the usual protocol of transfer results; train alone when it validates on val; never test)."""
        return self.splits[:self.splits.index(val_split)]

    def torchvision_root(self, root: str | os.PathLike) -> Path:
        """The folder torchvision's class takes for the ``root`` given: ``root``, or its parent when ``root`` is
        the set's own folder (``.../flowers-102``)."""
        root = Path(root).expanduser()
        top = self.folder.split("/")[0]
        if not (root / self.folder).is_dir() and root.name == top and (root.parent / self.folder).is_dir():
            return root.parent
        return root

    def check_files(self, root: Path, splits: Sequence[str]) -> None:
        """:class:`DataError` naming the first file the ``splits`` need that is not under ``root``."""
        for split in ("*", *splits):
            for name in self.files.get(split, ()):
                path = root / self.folder / name.rstrip("/")
                present = path.is_dir() if name.endswith("/") else path.is_file()
                if not present:
                    kind = "folder" if name.endswith("/") else "file"
                    raise DataError(f"{self.title}: {kind} {path} is missing; the set is published at {self.url} "
                                    f"(extract it so that {root / self.folder} holds it, as torchvision reads it; "
                                    f"nothing is downloaded)")


@contextlib.contextmanager
def files_exist_only() -> Iterator[None]:
    """Within: torchvision's integrity checks accept a file that exists, whatever its md5 sum (the one check of
    torchvision relaxed, see the module docstring). Opening is single-threaded; the check is restored after."""
    original = tv_dataset_utils.check_md5
    tv_dataset_utils.check_md5 = lambda fpath, md5, **kwargs: True
    try:
        yield
    finally:
        tv_dataset_utils.check_md5 = original


class ArrayImages:
    """Reads the images of a set held in one array (CIFAR's ``(N, 32, 32, 3)`` bytes): a sample's key ends in
    ``#row``."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels

    def __call__(self, key: str) -> Image.Image:
        return Image.fromarray(self.pixels[int(str(key).rsplit("#", 1)[1])])


@dataclass(frozen=True)
class CifarReader:
    """Reads a CIFAR split with torchvision's class (``cls``): its images stay in the class's array."""

    cls: type[Any]

    def __call__(self, root: Path, split: str) -> tuple[Samples, list[str], Callable]:
        opened = self.cls(str(root), train=split == "train", download=False)
        key = str(root / self.cls.base_folder / split)
        samples = [(f"{key}#{row}", int(label)) for row, label in enumerate(opened.targets)]
        return samples, list(opened.classes), ArrayImages(opened.data)


@dataclass(frozen=True)
class PathsReader:
    """Reads a split with a torchvision class that takes a ``loader`` (``cls``, with ``options``): given ``str``
    for one, indexing it gives ``(path, label)`` without reading an image."""

    cls: type[Any]
    options: tuple[tuple[str, str], ...] = ()

    def __call__(self, root: Path, split: str) -> tuple[Samples, list[str], None]:
        opened = self.cls(str(root), split=split, download=False, loader=str, **dict(self.options))
        samples = [(str(path), int(label)) for path, label in (opened[i] for i in range(len(opened)))]
        return samples, list(opened.classes), None


def read_pets(root: Path, split: str) -> tuple[Samples, list[str], None]:
    """Reads an Oxford-IIIT Pets split: the class takes no loader (it opens the image itself), so its parsed lists
    are read instead."""
    opened = tv_datasets.OxfordIIITPet(str(root), split=split, target_types="category", download=False)
    return [(str(path), int(label)) for path, label in zip(opened._images, opened._labels, strict=True)], \
        list(opened.classes), None


_CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))

PUBLISHED_SETS: dict[str, PublishedSet] = {spec.name: spec for spec in (
    # torchvision's CIFAR classes check every batch whatever the split: all are needed
    PublishedSet("cifar10", "CIFAR-10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar.html "
                 "(the python version)", ("train", "test"), {"*": (*_CIFAR10_BATCHES, "test_batch", "batches.meta")},
                 CifarReader(tv_datasets.CIFAR10), native_size=32),
    PublishedSet("cifar100", "CIFAR-100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar.html "
                 "(the python version)", ("train", "test"), {"*": ("train", "test", "meta")},
                 CifarReader(tv_datasets.CIFAR100), native_size=32),
    PublishedSet("flowers102", "Oxford Flowers-102", "flowers-102", "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
                 ("train", "val", "test"), {"*": ("jpg/", "imagelabels.mat", "setid.mat")},
                 PathsReader(tv_datasets.Flowers102)),
    PublishedSet("stanford-cars", "Stanford Cars", "stanford_cars",
                 "https://ai.stanford.edu/~jkrause/cars/car_dataset.html", ("train", "test"),
                 {"*": ("devkit/cars_meta.mat",), "train": ("devkit/cars_train_annos.mat", "cars_train/"),
                  "test": ("cars_test_annos_withlabels.mat", "cars_test/")},
                 PathsReader(tv_datasets.StanfordCars)),
    PublishedSet("oxford-pets", "Oxford-IIIT Pets", "oxford-iiit-pet", "https://www.robots.ox.ac.uk/~vgg/data/pets/",
                 ("trainval", "test"), {"*": ("images/",), "trainval": ("annotations/trainval.txt",),
                                        "test": ("annotations/test.txt",)}, read_pets),
    PublishedSet("fgvc-aircraft", "FGVC-Aircraft (variants)", "fgvc-aircraft-2013b",
                 "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/", ("train", "val", "test"),
                 {"*": ("data/images/", "data/variants.txt"), "train": ("data/images_variant_train.txt",),
                  "val": ("data/images_variant_val.txt",), "test": ("data/images_variant_test.txt",)},
                 PathsReader(tv_datasets.FGVCAircraft, (("annotation_level", "variant"),))),
    PublishedSet("food101", "Food-101", "food-101", "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
                 ("train", "test"), {"*": ("images/",), "train": ("meta/train.json",), "test": ("meta/test.json",)},
                 PathsReader(tv_datasets.Food101)),
    # DTD's first of its ten official train / val / test partitions, as torchvision's default
    PublishedSet("dtd", "Describable Textures (DTD)", "dtd/dtd", "https://www.robots.ox.ac.uk/~vgg/data/dtd/",
                 ("train", "val", "test"), {"*": ("images/",), "train": ("labels/train1.txt",),
                                            "val": ("labels/val1.txt",), "test": ("labels/test1.txt",)},
                 PathsReader(tv_datasets.DTD)),
)}


def published_set(data: str | os.PathLike) -> tuple[PublishedSet, str] | None:
    """``(set, ROOT)`` when ``data`` is ``NAME:ROOT`` with NAME a published set; None otherwise."""
    name, colon, root = str(data).partition(":")
    spec = PUBLISHED_SETS.get(name)
    return (spec, root) if spec is not None and colon else None


def _read_split(spec: PublishedSet, root: Path, split: str) -> tuple[Samples, list[str], Callable | None]:
    """The split's samples, class names and image reader; a one-line :class:`DataError` when its files do not
    parse (torchvision's error, or a missing scipy)."""
    try:
        with files_exist_only():
            return spec.reader(root, split)
    except ImportError as e:
        raise DataError(f"{spec.title} stores its labels in .mat files, which scipy reads: pip install scipy "
                        f"(or the 'train' extra)") from e
    except Exception as e:  # torchvision's own failures to parse are of many types (RuntimeError, KeyError...)
        first = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"{spec.title}: the {split} split under {root / spec.folder} could not be read "
                        f"({type(e).__name__}: {first}); check the files against the set published at "
                        f"{spec.url}") from e


def _missing_image(read: list[tuple[Samples, list[str], Callable | None]]) -> tuple[int, str] | None:
    """How many of the image files the splits ``read`` list are missing, and the first; None when none is (a set
    held in an array has no files)."""
    missing = [path for samples, _, reader in read if reader is None for path, _ in samples if not os.path.isfile(path)]
    return (len(missing), missing[0]) if missing else None


class PublishedDataset(ImageFolderDataset):
    """The images of one or more ``splits`` of a published set (``spec``) under ``root``: samples, classes and
    targets as the set's files give them, read by torchvision; the images read and unreadable files skipped as
    :class:`~tresnet.data.datasets.ImageFolderDataset` does.

    Raises :class:`DataError` for a missing file or image (naming it and where the set is published), files that
    do not parse, and splits whose class names differ.
    """

    def __init__(self, spec: PublishedSet, root: str | os.PathLike, splits: Sequence[str],
                 transform: Callable | None = None, strict: bool = False) -> None:
        self.spec, self.splits = spec, tuple(splits)
        unknown = [split for split in self.splits if split not in spec.splits]
        if unknown:
            raise DataError(f"{spec.title} has no {unknown[0]!r} split; its splits are {', '.join(spec.splits)}")
        base = spec.torchvision_root(root)
        spec.check_files(base, self.splits)
        self._read = [_read_split(spec, base, split) for split in self.splits]
        self._check_same_classes()
        missing = _missing_image(self._read)
        if missing is not None:
            raise DataError(f"{spec.title}: image {missing[1]} is missing ({missing[0]} of the {'+'.join(self.splits)} "
                            f"images are); the set is published at {spec.url}")
        super().__init__(base / spec.folder, transform=transform, strict=strict)
        reader = self._read[0][2]
        if reader is not None:
            self.loader = reader
        del self._read

    def _check_same_classes(self) -> None:
        first = self._read[0][1]
        for split, (_, classes, _) in zip(self.splits[1:], self._read[1:], strict=True):
            if classes != first:
                raise DataError(f"{self.spec.title}: the {split} split names {len(classes)} classes and the "
                                f"{self.splits[0]} split {len(first)} (or in another order): a split is incomplete")

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = self._read[0][1]
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], *args, **kwargs) -> Samples:
        return [sample for samples, _, _ in self._read for sample in samples]


def open_published(data: str | os.PathLike, splits: Sequence[str] | None = None, *, transform: Callable | None = None,
                   strict: bool = False) -> PublishedDataset:
    """The ``splits`` (default: the last, the test split) of the published set ``data`` names (``NAME:ROOT``).

    Raises :class:`DataError` for a ``data`` that names no published set, and as :class:`PublishedDataset`.
    """
    named = published_set(data)
    if named is None:
        raise DataError(f"{data} names no published set: use NAME:ROOT with NAME one of {', '.join(PUBLISHED_SETS)}")
    spec, root = named
    return PublishedDataset(spec, root, splits or (spec.test_split,), transform=transform, strict=strict)


__all__ = ["PUBLISHED_SETS", "ArrayImages", "CifarReader", "PathsReader", "PublishedDataset", "PublishedSet", "files_exist_only", "open_published",
           "published_set", "read_pets"]

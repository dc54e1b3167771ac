"""Multi-label data: images with any set of classes each, from a COCO instances file or a ``file,labels`` CSV.

A sample's target is a ``float32`` multi-hot vector over the classes. Unreadable or missing image files
follow the protocol of :mod:`tresnet.data.datasets`: the dataset hands back an
:class:`~tresnet.data.datasets.UnreadableImage`, :meth:`MultiLabelDataset.collate` moves it to
``batch.skipped`` and the loader of :func:`tresnet.data.loader.create_loader` reports it (one warning per
file, counted in ``skipped``; a :class:`DataError` when ``strict``).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Callable, Container, Iterable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from tresnet.data.datasets import ImageBatch, ImageFolderDataset, UnreadableImage, read_or_mark
from tresnet.errors import ConfigError, DataError

WITHOUT_LABELS = ("skip", "negative")  # what read_coco does with an image that has no annotation
CSV_HEADER = ("file", "labels")

Sample = tuple[str, tuple[int, ...]]


class MultiLabelDataset(Dataset):
    """Images and their classes: ``(transform(image), multi-hot target float32 (C,))`` per sample.

    ``samples`` holds ``(absolute image path, sorted class indices)``; ``root`` is the folder the
    annotation file's paths are relative to and ``source`` the annotation file. An unreadable file gives
    an :class:`~tresnet.data.datasets.UnreadableImage` (a :class:`DataError` in the main process when
    ``strict``), see the module docstring. Raises :class:`DataError` for duplicate class names or a class
    index outside the class list.
    """

    tasks = ("multilabel",)  # what its targets (a multi-hot vector per image) serve

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], *, root: str | os.PathLike,
                 source: str | os.PathLike, transform: Callable | None = None, strict: bool = False) -> None:
        self.root, self.source = Path(root), Path(source)
        self.classes = [str(name) for name in classes]
        duplicates = _duplicates(self.classes)
        if duplicates:
            raise DataError(f"duplicate class names in {self.source}: {', '.join(duplicates[:5])}; "
                            f"every class needs its own name")
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.samples = [(str(path), tuple(sorted(set(labels)))) for path, labels in samples]
        bad = [index for _, labels in self.samples for index in labels if not 0 <= index < len(self.classes)]
        if bad:
            raise DataError(f"class index {bad[0]} outside the {len(self.classes)} classes of {self.source}")
        self.transform = transform
        self.strict = strict
        self.skipped_files: set[str] = set()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> torch.Tensor:
        """The multi-hot targets of all samples, ``(N, C)`` ``float32``."""
        targets = torch.zeros(len(self.samples), self.num_classes, dtype=torch.float32)
        for row, (_, labels) in enumerate(self.samples):
            targets[row, list(labels)] = 1.0
        return targets

    # The skip protocol of the image folders: the same counting, warning and strict error.
    skipped = ImageFolderDataset.skipped
    report_skipped = ImageFolderDataset.report_skipped

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, index: int) -> torch.Tensor:
        """The multi-hot target of sample ``index``, ``(C,)`` ``float32``."""
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        target[list(self.samples[index][1])] = 1.0
        return target

    def __getitem__(self, index: int):
        """``(image, target)``; for an unreadable file an :class:`UnreadableImage` (in the main process
        with ``strict``: a :class:`DataError`)."""
        image = read_or_mark(self.samples[index][0], self.strict)
        if isinstance(image, UnreadableImage):
            return image
        if self.transform is not None:
            image = self.transform(image)
        return image, self.target(index)

    @staticmethod
    def collate(samples: list) -> ImageBatch:
        """Stack the readable samples into an :class:`ImageBatch` (targets ``(B, C)`` ``float32``); the
        unreadable go to ``skipped``. A batch of only unreadable files has empty tensors."""
        good = [s for s in samples if not isinstance(s, UnreadableImage)]
        skipped = [s for s in samples if isinstance(s, UnreadableImage)]
        if not good:
            return ImageBatch(torch.empty(0), torch.empty(0, 0), skipped)
        images = torch.utils.data.default_collate([image for image, _ in good])
        return ImageBatch(images, torch.stack([target for _, target in good]), skipped)


def _duplicates(values: Iterable) -> list:
    return sorted(value for value, count in Counter(values).items() if count > 1)


def _check_some_image_exists(samples: Sequence[tuple[str, object]], root: Path, source: Path, hint: str) -> None:
    """:class:`DataError` when not one listed image file exists: the folder is the wrong one."""
    if not any(Path(path).is_file() for path, _ in samples):
        example = samples[0][0] if samples else "(none listed)"
        raise DataError(f"none of the {len(samples)} images listed in {source} is under {root} "
                        f"(first: {example}): {hint}")


# ---- COCO instances json ---------------------------------------------------------------------------------------

def _load_coco_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist: pass a COCO instances json "
                        f"(e.g. instances_val2014.json)")
    try:
        with path.open(encoding="utf-8") as file:
            data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {path} is not JSON ({e}): pass a COCO instances json") from e
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data, dict)
               or not isinstance(data.get(key), list)]
    if missing:
        raise DataError(f"annotation file {path} lacks the COCO list(s) {', '.join(missing)}: pass a COCO "
                        f"instances json (images, annotations, categories)")
    return data


def _coco_categories(categories: list[dict], path: Path) -> tuple[list[str], dict[int, int]]:
    """Class names and category id -> class index, in the file's category order."""
    ids = [category["id"] for category in categories]
    duplicates = _duplicates(ids)
    if duplicates:
        raise DataError(f"duplicate category ids in {path}: {', '.join(map(str, duplicates[:5]))}; "
                        f"each category needs its own id")
    return [str(category["name"]) for category in categories], {cid: index for index, cid in enumerate(ids)}


def _unknown_ids(found: Iterable, known: Container, what: str, path: Path) -> None:
    unknown = [i for i in found if i not in known]
    if unknown:
        raise DataError(f"{len(unknown)} annotation(s) in {path} name an unknown {what} (first: {unknown[0]}): "
                        f"the annotation file is inconsistent")


def _coco_labels(data: dict, category_index: dict[int, int], path: Path) -> dict[int, set[int]]:
    """image id -> the class indices of its annotations."""
    images = {image["id"] for image in data["images"]}
    annotations = data["annotations"]
    _unknown_ids((a["image_id"] for a in annotations), images, "image_id", path)
    _unknown_ids((a["category_id"] for a in annotations), category_index, "category_id", path)
    labels: dict[int, set[int]] = {}
    for annotation in annotations:
        labels.setdefault(annotation["image_id"], set()).add(category_index[annotation["category_id"]])
    return labels


def read_coco(images: str | os.PathLike, annotations: str | os.PathLike, *, transform: Callable | None = None,
              strict: bool = False, without_labels: str = "skip") -> MultiLabelDataset:
    """The images of a COCO instances file (``instances_val2014.json``) with the classes of their objects.

    The categories in the file's order give the class indices 0..C-1 and their ``name`` the class names,
    as the ASL COCO loader (Alibaba-MIIL/ASL) maps them; a class is positive when the image has any object
    of it. Images without annotations are left out (``without_labels="skip"``, as ASL does) or kept with
    an all-zero target (``"negative"``). Image paths are ``images / file_name``; a missing file is only
    found, skipped and counted when read. Raises :class:`ConfigError` for an unknown ``without_labels``
    and :class:`DataError` for a missing images folder, a missing or malformed json, an annotation naming
    an unknown image or category id, duplicate category ids, and when none of the listed files exists.
    """
    if without_labels not in WITHOUT_LABELS:
        raise ConfigError(f"unknown without_labels {without_labels!r}: use one of {', '.join(WITHOUT_LABELS)}")
    root, source = Path(images).expanduser().absolute(), Path(annotations).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"images folder {root} does not exist: pass the folder of the COCO images "
                        f"(e.g. val2014) as the data")
    data = _load_coco_json(source)
    try:
        classes, category_index = _coco_categories(data["categories"], source)
        labels = _coco_labels(data, category_index, source)
        samples = [(str(root / image["file_name"]), tuple(labels.get(image["id"], ())))
                   for image in data["images"] if without_labels == "negative" or image["id"] in labels]
    except KeyError as e:
        raise DataError(f"annotation file {source} has an entry without the COCO key {e}: pass a COCO "
                        f"instances json") from e
    except TypeError as e:
        raise DataError(f"annotation file {source} has an entry that is not a COCO object ({e}): pass a "
                        f"COCO instances json") from e
    _check_some_image_exists(samples, root, source, "pass the folder that holds the COCO images as the data")
    return MultiLabelDataset(samples, classes, root=root, source=source, transform=transform, strict=strict)


# ---- CSV -------------------------------------------------------------------------------------------------------

def _read_class_list(classes: Sequence[str] | str | os.PathLike) -> list[str]:
    if not isinstance(classes, str | os.PathLike):
        return [str(name) for name in classes]
    path = Path(classes).expanduser()
    if not path.is_file():
        raise DataError(f"class list {path} does not exist: pass a text file with one class name per line")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if not names:
        raise DataError(f"class list {path} is empty: write one class name per line")
    return names


def _read_csv_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line number, file, label names)`` per row, after checking the ``file,labels`` header."""
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None:
            raise DataError(f"CSV {path} is empty: write a header 'file,labels' and one row per image")
        if tuple(column.strip() for column in header) != CSV_HEADER:
            raise DataError(f"CSV {path} has the header {','.join(header)!r}: the first line must be 'file,labels'")
        rows = []
        for row in reader:
            if not row:
                continue
            if len(row) != 2 or not row[0].strip():
                raise DataError(f"CSV {path} line {reader.line_num}: expected 2 fields 'file,labels', got "
                                f"{len(row)}: {row!r}")
            rows.append((reader.line_num, row[0].strip(), row[1].split()))
    if not rows:
        raise DataError(f"CSV {path} has no rows: add one line 'file,labels' per image")
    return rows


def read_csv(path: str | os.PathLike, *, transform: Callable | None = None, strict: bool = False,
             classes: Sequence[str] | str | os.PathLike | None = None) -> MultiLabelDataset:
    """The images of a CSV with the header ``file,labels``: a path (relative to the CSV's folder, or
    absolute) and the class names separated by spaces (empty: an image without any class, kept).

    The classes are ``classes`` (a sequence of names, or a text file with one name per line) or else the
    sorted set of names in the CSV. Raises :class:`DataError` for a missing CSV, a bad header or row, an
    empty CSV, a label not in ``classes`` (naming it and its line), duplicate or no classes, and when none
    of the listed files exists.
    """
    source = Path(path).expanduser().absolute()
    if not source.is_file():
        raise DataError(f"CSV {source} does not exist: pass a labels CSV with the header 'file,labels'")
    rows = _read_csv_rows(source)
    if classes is not None:
        names = _read_class_list(classes)
    else:
        names = sorted({label for _, _, labels in rows for label in labels})
        if not names:
            raise DataError(f"CSV {source} names no class: label some images or pass the class list")
    index = {name: i for i, name in enumerate(names)}
    samples = []
    for line, file, labels in rows:
        unknown = [label for label in labels if label not in index]
        if unknown:
            raise DataError(f"CSV {source} line {line}: label {unknown[0]!r} is not one of the {len(names)} "
                            f"classes: fix the label or add it to the class list")
        samples.append((str(source.parent / file), tuple(index[label] for label in labels)))
    dataset = MultiLabelDataset(samples, names, root=source.parent, source=source, transform=transform,
                                strict=strict)
    _check_some_image_exists(dataset.samples, source.parent, source,
                             "file paths are relative to the CSV's folder")
    return dataset


def open_multilabel(data: str | os.PathLike, *, annotations: str | os.PathLike | None = None,
                    classes: Sequence[str] | str | os.PathLike | None = None, transform: Callable | None = None,
                    strict: bool = False, without_labels: str = "skip") -> MultiLabelDataset:
    """A multi-label data set from what a user names: ``data`` the images folder with ``annotations`` a
    COCO instances json (:func:`read_coco`), or ``data`` a ``.csv`` file (:func:`read_csv`, with
    ``classes``). A COCO file's categories are its classes: ``classes`` given with it are a check (the
    same names in the same order, e.g. those of the training set). Raises :class:`DataError` when they
    differ and for anything that is not one of the two forms, saying what to pass.
    """
    path = Path(data).expanduser()
    if annotations is not None:
        dataset = read_coco(path, annotations, transform=transform, strict=strict, without_labels=without_labels)
        if classes is not None and dataset.classes != (expected := _read_class_list(classes)):
            raise DataError(f"the {dataset.num_classes} categories of {dataset.source} differ from the "
                            f"{len(expected)} expected classes (first: {dataset.classes[:3]} vs {expected[:3]}): "
                            f"use annotations with the same categories in the same order")
        return dataset
    if path.suffix.lower() == ".csv":
        return read_csv(path, transform=transform, strict=strict, classes=classes)
    if path.suffix.lower() == ".json":
        raise DataError(f"{path} is an annotation file: pass the images folder as the data and --annotations {path}")
    raise DataError(f"multi-label data {path} needs its labels: pass --annotations FILE (a COCO instances json, "
                    f"with the images folder as the data) or a labels.csv ('file,labels') as the data")


__all__ = ["CSV_HEADER", "WITHOUT_LABELS", "MultiLabelDataset", "open_multilabel", "read_coco", "read_csv"]

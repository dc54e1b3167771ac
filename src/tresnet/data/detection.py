"""Object detection data: an images folder with a COCO instances json, and the detection transforms.

A sample is ``(image, target)``: the image as a ``uint8`` :class:`torchvision.tv_tensors.Image` handed with its
target to a ``transforms.v2`` transform (float32 in [0, 1] without one), and the target a dict::

    {"boxes": BoundingBoxes (n, 4) XYXY in pixels, canvas_size=(H, W) (float32 in training, float64 in evaluation),
     "labels": int64 (n,) class indices, "image_id": int (the file's image id),
     "area": (n,) (the file's area, else w * h; as the boxes), "iscrowd": int64 (n,)}

The classes are the file's categories sorted by id (COCO's 80 classes have the ids 1..90 with gaps, so a class
index is not an id; ``category_ids`` maps back). Every image of the file is a sample, also one without any
annotation (a negative). For evaluation a target holds the file's boxes as they are, crowd ones included, which
is what COCOeval scores against; for training (``for_training``) crowd boxes are left out, boxes are clipped to
their image and those left without width or height are dropped and counted. Unreadable or missing image files
follow the protocol of :mod:`tresnet.data.datasets`: the dataset hands back an
:class:`~tresnet.data.datasets.UnreadableImage`, :meth:`CocoDetection.collate` moves it to ``batch.skipped`` and
the loader of :func:`tresnet.data.loader.create_loader` reports it (a :class:`DataError` when ``strict``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from tresnet.data.datasets import ImageFolderDataset, UnreadableImage, read_or_mark
from tresnet.data.images import load_image
from tresnet.data.multilabel import _check_some_image_exists, _coco_categories, _duplicates, _load_coco_json
from tresnet.errors import ConfigError, DataError

PER_BOX_KEYS = ("labels", "area", "iscrowd")  # the target's tensors with one row per box, besides "boxes"
IMAGE_KEYS = ("id", "file_name", "width", "height")
ANNOTATION_KEYS = ("image_id", "category_id", "bbox")
ZERO_SIZE, OUTSIDE = "zero or negative size in the file", "outside the image"  # why training drops a box


class DroppedBoxesWarning(UserWarning):
    """Boxes of an annotation file left out of training: no width or height once clipped to their image."""


class DetectionBatch(tuple):
    """``(images, targets)``: lists, as images differ in size; ``skipped`` holds the :class:`UnreadableImage` s
    left out. Unpacks like a pair; survives worker processes and memory pinning."""

    skipped: tuple[UnreadableImage, ...]

    def __new__(cls, images: Sequence[torch.Tensor], targets: Sequence[dict],
                skipped: Sequence[UnreadableImage] = ()) -> DetectionBatch:
        batch = super().__new__(cls, (list(images), list(targets)))
        batch.skipped = tuple(skipped)
        return batch

    def __reduce__(self):
        return (DetectionBatch, (self[0], self[1], self.skipped))

    def pin_memory(self, device: str | None = None) -> DetectionBatch:
        pin = partial(_pinned, args=() if device is None else (device,))
        targets = [{key: pin(value) for key, value in target.items()} for target in self[1]]
        return DetectionBatch([pin(image) for image in self[0]], targets, self.skipped)


def _pinned(value, args: tuple):
    # A plain pin_memory returns a plain tensor: wrap it again so boxes keep their format and canvas.
    if isinstance(value, tv_tensors.TVTensor):
        return tv_tensors.wrap(value.pin_memory(*args), like=value)
    return value.pin_memory(*args) if isinstance(value, torch.Tensor) else value


# ---- reading the annotation file ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Boxes:
    """Annotations as arrays, one row each: their image's position in the file's image list, the XYXY box, the
    class index, the area and the crowd flag."""

    image: np.ndarray
    xyxy: np.ndarray
    label: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray

    def select(self, keep: np.ndarray) -> _Boxes:
        return _Boxes(self.image[keep], self.xyxy[keep], self.label[keep], self.area[keep], self.iscrowd[keep])


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _categories(categories: list, source: Path) -> tuple[list[str], list[int], dict[int, int]]:
    """Class names, category ids and category id -> class index, the categories sorted by id."""
    if not categories:
        raise DataError(f"annotation file {source} has no categories: a detection set needs at least one class")
    for category in categories:
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or "name" not in category:
            raise DataError(f"annotation file {source} has a category {str(category)[:80]} without an integer 'id' "
                            f"and a 'name': pass a COCO instances json")
    ordered = sorted(categories, key=lambda category: category["id"])
    names, index = _coco_categories(ordered, source)
    return names, [category["id"] for category in ordered], index


def _image_entries(images: list, source: Path) -> tuple[list[str], list[int], np.ndarray]:
    """The file names, ids and ``(height, width)`` s of the file's images."""
    names, ids, sizes = [], [], []
    for position, image in enumerate(images):
        if not isinstance(image, dict) or any(key not in image for key in IMAGE_KEYS):
            raise DataError(f"image #{position} of {source} lacks one of the COCO keys {', '.join(IMAGE_KEYS)}: "
                            f"pass a COCO instances json")
        width, height = image["width"], image["height"]
        if not all(_is_number(side) and side > 0 and float(side).is_integer() for side in (width, height)):
            raise DataError(f"image {image['id']} of {source} has the size {width}x{height}: width and height must "
                            f"be whole numbers of pixels")
        if not isinstance(image["id"], int) or isinstance(image["id"], bool):
            raise DataError(f"image #{position} of {source} has the id {image['id']!r}: COCO image ids are integers")
        names.append(str(image["file_name"]))
        ids.append(image["id"])
        sizes.append((int(height), int(width)))
    duplicates = _duplicates(ids)
    if duplicates:
        raise DataError(f"duplicate image ids in {source}: {', '.join(map(str, duplicates[:5]))}; each image "
                        f"needs its own id")
    return names, ids, np.array(sizes, dtype=np.int64).reshape(-1, 2)


def _which(annotation: dict, position: int) -> str:
    return f"annotation {annotation['id']}" if "id" in annotation else f"annotation #{position}"


def _lookup(index: dict[int, int], key) -> int:
    """``index[key]``, or -1 for a key it lacks (also one that cannot be a key, such as a list)."""
    try:
        return index.get(key, -1)
    except TypeError:
        return -1


def _check_annotation(annotation, position: int, image_position: dict[int, int], category_index: dict[int, int],
                      source: Path) -> None:
    """:class:`DataError` naming the annotation and the fix when it is not a COCO box annotation of the file."""
    if not isinstance(annotation, dict) or any(key not in annotation for key in ANNOTATION_KEYS):
        raise DataError(f"annotation #{position} of {source} lacks one of the COCO keys {', '.join(ANNOTATION_KEYS)}:"
                        f" pass a COCO instances json")
    which, bbox = _which(annotation, position), annotation["bbox"]
    if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise DataError(f"{which} of {source} has the bbox {str(bbox)[:80]}: a COCO box is 4 numbers [x, y, w, h]")
    if _lookup(category_index, annotation["category_id"]) < 0:
        raise DataError(f"{which} of {source} has the category_id {annotation['category_id']!r}, which is not one of "
                        f"its {len(category_index)} categories: fix the annotation or add the category")
    if _lookup(image_position, annotation["image_id"]) < 0:
        raise DataError(f"{which} of {source} has the image_id {annotation['image_id']!r}, which is not an image of "
                        f"the file: fix the annotation or add the image")
    if not _is_number(annotation.get("area", 0.0)):
        raise DataError(f"{which} of {source} has the area {annotation['area']!r}: COCO's area is a number (left "
                        f"out, it is the box's w * h)")
    if annotation.get("iscrowd", 0) not in (0, 1):
        raise DataError(f"{which} of {source} has iscrowd {annotation['iscrowd']!r}: COCO's iscrowd is 0 or 1")


def _numbers(values: list, columns: int | None = None) -> np.ndarray | None:
    """``values`` as a float64 array (``(n, columns)`` when given), or None unless all are finite numbers."""
    array = np.array(values) if values else np.zeros((0,) if columns is None else (0, columns))
    wanted = (len(values),) if columns is None else (len(values), columns)
    if array.dtype.kind not in "iuf" or array.shape != wanted or not np.isfinite(array).all():
        return None
    return array.astype(np.float64)


def _columns(annotations: list, image_position: dict[int, int], category_index: dict[int, int]) -> _Boxes | None:
    """The annotations as arrays in one pass per field (seconds for COCO's 860k), or None when any is not a COCO
    box annotation of the file (raises KeyError or TypeError, or gives None, for :func:`_check_annotation`)."""
    image = np.array([_lookup(image_position, a["image_id"]) for a in annotations], dtype=np.int64)
    label = np.array([_lookup(category_index, a["category_id"]) for a in annotations], dtype=np.int64)
    xywh = _numbers([a["bbox"] for a in annotations], columns=4)
    area = _numbers([a.get("area", 0.0) for a in annotations])
    iscrowd = np.array([a.get("iscrowd", 0) for a in annotations])
    if (xywh is None or area is None or (image < 0).any() or (label < 0).any() or iscrowd.dtype.kind not in "iufb"
            or not np.isin(iscrowd, (0, 1)).all()):
        return None
    without_area = np.array(["area" not in a for a in annotations], dtype=bool)
    area[without_area] = xywh[without_area, 2] * xywh[without_area, 3]
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return _Boxes(image, xyxy, label, area, iscrowd.astype(np.int64).reshape(-1))


def _annotation_boxes(annotations: list, image_ids: list[int], category_index: dict[int, int],
                      source: Path) -> _Boxes:
    image_position = {image_id: position for position, image_id in enumerate(image_ids)}
    try:
        boxes = _columns(annotations, image_position, category_index)
    except (KeyError, TypeError, ValueError):  # a missing key, an entry that is not a dict, a ragged bbox list
        boxes = None
    if boxes is None:  # name the first bad annotation
        for position, annotation in enumerate(annotations):
            _check_annotation(annotation, position, image_position, category_index, source)
        raise DataError(f"annotation file {source} has an annotation that is not a COCO box annotation: pass a "
                        f"COCO instances json")
    return boxes


def _clip_for_training(boxes: _Boxes, sizes: np.ndarray) -> tuple[_Boxes, dict[str, int], int, int]:
    """Crowd boxes out, the others clipped to their image and those left without width or height out:
    ``(boxes, {reason: boxes dropped}, crowd boxes, boxes clipped)``."""
    crowd = boxes.iscrowd == 1
    boxes = boxes.select(~crowd)
    height, width = sizes[boxes.image, 0], sizes[boxes.image, 1]
    clipped = np.clip(boxes.xyxy, 0.0, np.stack([width, height, width, height], axis=1).astype(np.float64))

    def empty(xyxy):
        return (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])

    zero_size, now_empty = empty(boxes.xyxy), empty(clipped)
    changed = (clipped != boxes.xyxy).any(axis=1) & ~now_empty
    reasons = {ZERO_SIZE: int(zero_size.sum()), OUTSIDE: int((now_empty & ~zero_size).sum())}
    kept = _Boxes(boxes.image, clipped, boxes.label, boxes.area, boxes.iscrowd).select(~now_empty)
    return kept, reasons, int(crowd.sum()), int(changed.sum())


def _starts_by_image(boxes: _Boxes, images: int) -> tuple[_Boxes, np.ndarray]:
    """The boxes ordered by image (the file's order within one) and where each image's rows start (``images + 1``)."""
    boxes = boxes.select(np.argsort(boxes.image, kind="stable"))
    counts = np.bincount(boxes.image, minlength=images)
    return boxes, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _load_sized(path: str, *, size: tuple[int, int], source: Path) -> Image.Image:
    """The RGB image at ``path``; :class:`DataError` when it is not the ``(height, width)`` the file gives."""
    image = load_image(path)
    if (image.height, image.width) != size:
        raise DataError(f"image {path} is {image.width}x{image.height} pixels but {source} gives {size[1]}x{size[0]}: "
                        f"its boxes are for another image; use the images the annotation file was made for")
    return image


class CocoDetection(Dataset):
    """The images of ``images`` (a folder) that the COCO instances json ``annotations`` lists, with their boxes.

    Samples, classes and targets are described in the module docstring. ``classes`` are the category names and
    ``category_ids`` their ids (class index -> COCO id), ``image_ids`` the images' ids and ``samples``
    ``(absolute image path, image id)`` in the file's order. With ``for_training``, crowd boxes are left out
    (counted in ``crowd_boxes``), boxes are clipped to the image's width and height as the file gives them
    (``clipped_boxes``) and those left without width or height are dropped (``dropped_boxes``, by reason in
    ``dropped_box_reasons``; a :class:`DroppedBoxesWarning` says so when opening). An image whose file is missing,
    unreadable or not of the file's size gives an :class:`UnreadableImage` (a :class:`DataError` in the main
    process when ``strict``).

    Raises :class:`DataError`, naming the file and the fix, for a missing images folder or annotation file, a file
    that is not a COCO instances json (not JSON; without the lists images, annotations, categories; an entry
    without its COCO keys; a bbox that is not 4 numbers), duplicate image or category ids, an annotation naming
    an unknown category id or image id, no category, and when none of the listed images exists.
    """

    tasks = ("detection",)  # what its targets (boxes and their classes per image) serve

    def __init__(self, images: str | os.PathLike, annotations: str | os.PathLike, *,
                 transform: Callable | None = None, strict: bool = False, for_training: bool = False) -> None:
        self.root = Path(images).expanduser().absolute()
        self.source = Path(annotations).expanduser().absolute()
        if not self.root.is_dir():
            raise DataError(f"images folder {self.root} does not exist: pass the folder of the images that "
                            f"{self.source.name} lists (e.g. val2017)")
        data = _load_coco_json(self.source)
        self.classes, self.category_ids, category_index = _categories(data["categories"], self.source)
        names, self.image_ids, self._sizes = _image_entries(data["images"], self.source)
        boxes = _annotation_boxes(data["annotations"], self.image_ids, category_index, self.source)
        self.samples = [(os.path.join(self.root, name), image_id) for name, image_id in zip(names, self.image_ids, strict=True)]
        _check_some_image_exists(self.samples, self.root, self.source,
                                 "pass the folder that holds the images of the annotation file")
        self.for_training = for_training
        self.dropped_box_reasons: dict[str, int] = {ZERO_SIZE: 0, OUTSIDE: 0}
        self.crowd_boxes = self.clipped_boxes = 0
        if for_training:
            boxes, self.dropped_box_reasons, self.crowd_boxes, self.clipped_boxes = _clip_for_training(boxes,
                                                                                                       self._sizes)
            self._warn_dropped()
        boxes, self._starts = _starts_by_image(boxes, len(self.samples))
        # evaluation keeps the file's numbers exactly (float64), so that COCOeval sees what pycocotools reads
        precision = np.float32 if for_training else np.float64
        self._xyxy, self._labels = boxes.xyxy.astype(precision), boxes.label
        self._area, self._iscrowd = boxes.area.astype(precision), boxes.iscrowd
        self.transform = transform
        self.strict = strict
        self.skipped_files: set[str] = set()

    def _warn_dropped(self) -> None:
        if self.dropped_boxes:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.dropped_box_reasons.items() if count)
            warnings.warn(f"{self.dropped_boxes} boxes of {self.source} have no width or height once clipped to "
                          f"their image ({reasons}) and are left out of training; {self.clipped_boxes} others were "
                          f"clipped", DroppedBoxesWarning, stacklevel=3)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def dropped_boxes(self) -> int:
        """How many boxes training leaves out for want of width or height (crowd boxes not counted)."""
        return sum(self.dropped_box_reasons.values())

    # The skip protocol of the image folders: the same counting, warning and strict error.
    skipped = ImageFolderDataset.skipped
    report_skipped = ImageFolderDataset.report_skipped

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, index: int) -> dict:
        """The target of sample ``index`` (the module docstring's layout), its boxes on the file's image size."""
        rows = slice(int(self._starts[index]), int(self._starts[index + 1]))
        height, width = (int(side) for side in self._sizes[index])
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(self._xyxy[rows].copy()), format="XYXY",
                                         canvas_size=(height, width))
        return {"boxes": boxes, "labels": torch.from_numpy(self._labels[rows].copy()),
                "image_id": self.image_ids[index], "area": torch.from_numpy(self._area[rows].copy()),
                "iscrowd": torch.from_numpy(self._iscrowd[rows].copy())}

    def __getitem__(self, index: int):
        """``transform(image, target)``, or ``(float32 image in [0, 1], target)`` without a transform; for an
        unreadable file an :class:`UnreadableImage` (in the main process with ``strict``: a :class:`DataError`)."""
        path = self.samples[index][0]
        size = (int(self._sizes[index, 0]), int(self._sizes[index, 1]))
        image = read_or_mark(path, self.strict, partial(_load_sized, size=size, source=self.source))
        if isinstance(image, UnreadableImage):
            return image
        image, target = F.to_image(image), self.target(index)
        if self.transform is None:
            return F.to_dtype(image, torch.float32, scale=True), target
        return self.transform(image, target)

    @staticmethod
    def collate(samples: list) -> DetectionBatch:
        """The readable samples as a :class:`DetectionBatch` (lists, not stacked: sizes differ); the unreadable go
        to ``skipped``. A batch of only unreadable files has empty lists."""
        good = [sample for sample in samples if not isinstance(sample, UnreadableImage)]
        skipped = [sample for sample in samples if isinstance(sample, UnreadableImage)]
        return DetectionBatch([image for image, _ in good], [target for _, target in good], skipped)

    def coco_ground_truth(self, image_ids: Iterable[int] | None = None) -> dict:
        """The annotation file's ``images``, ``annotations`` and ``categories`` (read again from the file, boxes as
        it has them whatever ``for_training``), for an in-memory COCO object; only the images ``image_ids`` (all:
        None) and their annotations. An annotation without ``id``, ``area`` or ``iscrowd`` gets one (a new id,
        w * h, 0), as the targets do. Raises :class:`DataError` for an id that is not an image of the set."""
        wanted = set(self.image_ids if image_ids is None else image_ids)
        unknown = wanted.difference(self.image_ids)
        if unknown:
            raise DataError(f"image id {sorted(unknown, key=str)[0]!r} is not an image of {self.source}: evaluate "
                            f"with the annotation file the predictions were made for")
        data = _load_coco_json(self.source)
        next_id = 1 + max((a["id"] for a in data["annotations"] if _is_number(a.get("id"))), default=0)
        annotations = []
        for position, annotation in enumerate(data["annotations"]):
            if annotation["image_id"] in wanted:
                width, height = annotation["bbox"][2:]
                annotations.append({"id": next_id + position, "area": width * height, "iscrowd": 0} | annotation)
        return {"images": [dict(image) for image in data["images"] if image["id"] in wanted],
                "annotations": annotations,
                "categories": sorted((dict(c) for c in data["categories"]), key=lambda category: category["id"])}


# ---- transforms ------------------------------------------------------------------------------------------------

def _per_box_tensors(inputs) -> tuple[torch.Tensor, ...]:
    """The target's per-box tensors besides the boxes (labels, area, iscrowd), for SanitizeBoundingBoxes to drop
    with their boxes: its default finds "labels" only, which would leave area and iscrowd misaligned."""
    parts = inputs if isinstance(inputs, tuple | list) else (inputs,)
    target = next((part for part in parts if isinstance(part, dict)), {})
    return tuple(target[key] for key in PER_BOX_KEYS if key in target)


def _check_train_options(img_size: int, hflip: float, scale_jitter: tuple[float, float]) -> tuple[float, float]:
    if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size < 1:
        raise ConfigError(f"img_size must be a positive number of pixels, got {img_size!r}")
    if not _is_number(hflip) or not 0.0 <= hflip <= 1.0:
        raise ConfigError(f"hflip is a probability in [0, 1], got {hflip!r}")
    jitter = tuple(scale_jitter)
    if len(jitter) != 2 or not all(_is_number(v) for v in jitter) or not 0.0 < jitter[0] <= jitter[1]:
        raise ConfigError(f"scale_jitter must be (low, high) with 0 < low <= high, got {scale_jitter!r} "
                          f"(e.g. (0.1, 2.0) for large-scale jitter, (1.0, 1.0) for none)")
    return float(jitter[0]), float(jitter[1])


def create_detection_train_transform(img_size: int, *, hflip: float = 0.5,
                                     scale_jitter: tuple[float, float] = (1.0, 1.0)) -> v2.Compose:
    """The training transform of ``(image, target)``: large-scale jitter when ``scale_jitter`` is not (1, 1) (the
    image resized to fit ``img_size`` x a scale drawn from ``scale_jitter``, keeping its aspect ratio, then a random
    ``img_size`` square crop, padded with black where the image is smaller; Ghiasi et al. 2021, "Simple Copy-Paste",
    as torchvision's detection reference ``--data-augmentation lsj``), a horizontal flip with probability
    ``hflip``, the image to float32 in [0, 1] (not normalised: the detector does it) and boxes left under 1 pixel
    wide or high removed with their labels, area and iscrowd. Without jitter the image keeps its size and
    ``img_size`` is only checked. Boxes move with the image (XYXY pixels); ``area`` keeps the file's value.
    Random draws come from torch's global generator. Raises :class:`ConfigError` for an ``img_size`` under 1,
    ``hflip`` outside [0, 1] or a ``scale_jitter`` that is not ``0 < low <= high``.
    """
    jitter = _check_train_options(img_size, hflip, scale_jitter)
    steps: list = [v2.ToImage()]
    if jitter != (1.0, 1.0):
        steps += [v2.ScaleJitter(target_size=(img_size, img_size), scale_range=jitter, antialias=True),
                  v2.RandomCrop((img_size, img_size), pad_if_needed=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes(labels_getter=_per_box_tensors)]
    return v2.Compose(steps)


def create_detection_eval_transform() -> v2.Compose:
    """The evaluation transform of ``(image, target)``: the image to float32 in [0, 1], nothing else (the detector
    resizes and normalises it itself); the boxes keep the file's coordinates."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


__all__ = ["PER_BOX_KEYS", "CocoDetection", "DetectionBatch", "DroppedBoxesWarning", "create_detection_eval_transform",
           "create_detection_train_transform"]

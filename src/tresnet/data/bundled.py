"""The bundled data sets (``digits``, ``digits-multilabel``: scikit-learn's handwritten digits, no download) as
validation and prediction data, and written to disk as image files.

A bundled set has no native image size: it is drawn at the size the model is evaluated at. So that
``tresnet validate --data digits --checkpoint runs/digits/best.safetensors`` reproduces the run's own score,
:class:`BundledValidationSet` draws the validation split that training drew (the same ``val_split`` and
``split_seed``) at the preprocessing's size and converts it exactly as training's evaluation did.
:func:`write_bundled` writes a split as PNG files (lossless: reading them back gives the same pixels) in the
layouts ``validate`` reads: one folder per class, or images with a ``labels.csv`` for the multi-label set.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from tresnet.data.detection import create_detection_eval_transform
from tresnet.data.digits import DIGITS_CLASSES, DigitsDataset
from tresnet.data.digits_detection import DigitsDetectionDataset
from tresnet.data.digits_mosaic import DigitsMosaicDataset
from tresnet.data.transforms import Preprocessing, normalisation, to_float_steps
from tresnet.errors import ConfigError, DataError
from tresnet.files import Writer, atomic_write, write_text

LABELS_CSV = "labels.csv"
INSTANCES_JSON = "instances.json"
DrawnSplit = DigitsDataset | DigitsMosaicDataset | DigitsDetectionDataset  # what a bundled set's draw gives


@dataclass(frozen=True)
class BundledSet:
    """A bundled data set: its name, the task it serves, how to draw one split at a size, and whether an image
    holds one class (a class index as target; written as a folder per class) or a set (a multi-hot target)."""

    name: str
    task: str
    title: str
    draw: Callable[..., DrawnSplit]  # (split, img_size, transform, val_fraction, split_seed) -> dataset
    one_class_per_image: bool
    recipe: str  # the shipped demo recipe a run on it uses when none is named (its split and size by default)
    boxes: bool = False  # targets are boxes (a dict per image): evaluated whole and written with a COCO json


def _draw_digits(split: str, img_size: int, transform, val_fraction: float, split_seed: int) -> DigitsDataset:
    return DigitsDataset(split, img_size, transform, val_fraction, split_seed)


def _draw_mosaics(split: str, img_size: int, transform, val_fraction: float,
                  split_seed: int) -> DigitsMosaicDataset:
    return DigitsMosaicDataset(split, img_size, transform, val_fraction=val_fraction, split_seed=split_seed)


def _draw_canvases(split: str, img_size: int, transform, val_fraction: float,
                   split_seed: int) -> DigitsDetectionDataset:
    return DigitsDetectionDataset(split, img_size, transform, val_fraction=val_fraction, split_seed=split_seed)


BUNDLED_SETS = {
    "digits": BundledSet("digits", "multiclass", "scikit-learn's handwritten digits", _draw_digits, True,
                         "digits-demo"),
    "digits-multilabel": BundledSet("digits-multilabel", "multilabel",
                                    "mosaics of scikit-learn's handwritten digits (multilabel)", _draw_mosaics,
                                    False, "digits-multilabel-demo"),
    "digits-detection": BundledSet("digits-detection", "detection",
                                   "scikit-learn's handwritten digits pasted on textured canvases (detection)",
                                   _draw_canvases, False, "digits-detection-demo", boxes=True),
}


def bundled_set(name: str | os.PathLike) -> BundledSet | None:
    """The bundled set called ``name``, or None for any other name (a path)."""
    return BUNDLED_SETS.get(str(name))


def _tensor_transform(preprocessing: Preprocessing) -> v2.Compose:
    """What training's evaluation applies to a bundled image drawn at its final size (the shared conversion to
    float, with the model's normalisation); a centre crop first when the preprocessing crops."""
    crop = [v2.CenterCrop(list(preprocessing.img_size))] if preprocessing.crop_mode == "center" else []
    norm = normalisation(preprocessing.to_config())
    return v2.Compose([*crop, *to_float_steps(*(norm or (None, None))), v2.ToPureTensor()])


def _draw_size(preprocessing: Preprocessing) -> int:
    height, width = preprocessing.img_size
    if height != width:
        raise ConfigError(f"the bundled sets are drawn square: {height}x{width} is not (give a square --img-size)")
    return height if preprocessing.crop_mode == "squash" else int(cast(int, preprocessing.resize_size))  # square


class BundledValidationSet(Dataset):
    """The validation split of a bundled set, as ``validate`` scores it: drawn by :meth:`prepare` at the
    preprocessing's size (squash: the size itself; centre crop: the resize side, then the crop).

    It has the surface of the other validation sets: ``root`` (the set's name), ``classes``, ``task``,
    ``skipped`` (always 0) and ``skipped_files``; :meth:`map_classes` renumbers a multiclass set's targets
    to the model's outputs.
    """

    def __init__(self, name: str) -> None:
        spec = bundled_set(name)
        if spec is None:
            raise DataError(f"no bundled data set called {name!r}: use one of {', '.join(BUNDLED_SETS)}")
        self.spec, self.root, self.task = spec, spec.name, spec.task
        self.classes = list(DIGITS_CLASSES)
        self.source = spec.name
        self.skipped = 0
        self.skipped_files: set[str] = set()
        self._indices = list(range(len(self.classes)))
        self._split: DrawnSplit | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks its targets serve (the set's)."""
        return (self.task,)

    def prepare(self, preprocessing: Preprocessing, *, val_split: float, split_seed: int = 0) -> None:
        """Draw the validation split of ``val_split`` and ``split_seed`` (those of the training run) at
        ``preprocessing``'s size, converted as training's evaluation converts it."""
        transform = create_detection_eval_transform() if self.spec.boxes else _tensor_transform(preprocessing)
        self._split = self.spec.draw("val", _draw_size(preprocessing), transform, float(val_split), int(split_seed))
        self.source = f"{self.spec.name} (validation split {float(val_split):g}, seed {int(split_seed)})"

    def map_classes(self, indices: dict[str, int]) -> None:
        """Give each class the model output ``indices[name]`` (a multiclass set's targets follow)."""
        self._indices = [indices[name] for name in self.classes]

    def __len__(self) -> int:
        if self._split is None:
            raise DataError(f"{self.root}: call prepare(preprocessing) before reading the images")
        return len(self._split)

    def __getitem__(self, index: int):
        if self._split is None:
            raise DataError(f"{self.root}: call prepare(preprocessing) before reading the images")
        image, target = self._split[index]
        return image, (self._indices[target] if self.spec.one_class_per_image else target)

    @property
    def category_ids(self) -> list[int] | None:
        """A set of boxes: the COCO category id of each class (its evaluation reports them); else None."""
        return getattr(self._split, "category_ids", None)

    @property
    def collate(self):
        """How the drawn split batches (a set of boxes: as lists); None: torch's default."""
        return getattr(self._split, "collate", None)


def _png_bytes(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_writer(image: torch.Tensor) -> Writer:
    return lambda tmp: Path(tmp).write_bytes(_png_bytes(image))


def _write_boxes(data: DigitsDetectionDataset, root: Path) -> list[Path]:
    """A set of boxes as ``root/<index>.png`` with ``root/instances.json`` (COCO instances: any COCO tool reads
    it, and ``validate --data root --annotations root/instances.json`` scores a detector on it)."""
    written = []
    for index in range(len(data)):
        image = (data[index][0] * 255).round().to(torch.uint8)
        written.append(atomic_write(root / f"{index:05d}.png", _png_writer(image)))
    instances = data.coco_ground_truth()
    for entry in instances["images"]:
        entry["file_name"] = f"{entry['id']:05d}.png"
    written.append(write_text(root / INSTANCES_JSON, json.dumps(instances) + "\n"))
    return written


def write_bundled(name: str, output: str | os.PathLike, *, split: str = "val", img_size: int = 32,
                  val_split: float = 0.2, split_seed: int = 0) -> list[Path]:
    """Write one split of bundled set ``name`` under ``output`` as PNG files, each atomically; return them.

    ``digits``: ``output/<class>/<index>.png`` (a folder per class, as ``validate --data`` reads);
    ``digits-multilabel``: ``output/<index>.png`` with ``output/labels.csv`` (``file,labels``, the labels
    separated by spaces); ``digits-detection``: ``output/<index>.png`` with ``output/instances.json`` (COCO). Raises :class:`DataError` for an unknown name and :class:`ConfigError` for a
    bad split or size.
    """
    spec = bundled_set(name)
    if spec is None:
        raise DataError(f"no bundled data set called {name!r}: use one of {', '.join(BUNDLED_SETS)}")
    data = spec.draw(split, img_size, None, val_split, split_seed)
    root = Path(output).expanduser()
    if spec.boxes:
        return _write_boxes(cast(DigitsDetectionDataset, data), root)
    written, rows = [], []
    for index in range(len(data)):
        image = (data[index][0] * 255).round().to(torch.uint8)
        if spec.one_class_per_image:
            path = root / DIGITS_CLASSES[cast(DigitsDataset, data).targets[index]] / f"{index:05d}.png"
        else:
            path = root / f"{index:05d}.png"
            targets = cast(DigitsMosaicDataset, data).targets[index].tolist()
            rows.append((path.name, " ".join(c for c, on in zip(DIGITS_CLASSES, targets, strict=True) if on)))
        written.append(atomic_write(path, _png_writer(image)))
    if rows:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([("file", "labels"), *rows])
        written.append(write_text(root / LABELS_CSV, buffer.getvalue()))
    return written


__all__ = ["BUNDLED_SETS", "INSTANCES_JSON", "LABELS_CSV", "BundledSet", "BundledValidationSet", "bundled_set", "write_bundled"]

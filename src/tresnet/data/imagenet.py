"""ImageNet's own files: the 1000 synsets, the validation ground truth in its two common formats, and the
ReaL labels.

The synset lists ship with the package. ``imagenet_synsets.txt`` holds the 1000 ImageNet-1k synsets in
class-index order (sorted ids: index 0 is ``n01440764``, tench), the order every ImageNet-1k classifier
numbers its outputs. ``imagenet_devkit_synsets.txt`` holds the same synsets in the order of the
ILSVRC2012 development kit (line k is the synset of ``ILSVRC2012_ID`` k in the kit's ``meta.mat``), the
ids ``ILSVRC2012_validation_ground_truth.txt`` uses.

Validation images are named ``ILSVRC2012_val_00000001.JPEG`` ... ``ILSVRC2012_val_00050000.JPEG``; the
number in the name says which line of a ground-truth or ReaL file describes the image, wherever the image
lies (a flat folder, or the synset folders ``valprep.sh`` builds).
"""

from __future__ import annotations

import csv
import json
import os
import re
from functools import cache
from importlib import resources
from pathlib import Path

from tresnet.errors import DataError

IMAGENET_VAL_IMAGES = 50_000
_SYNSET = re.compile(r"n\d{8}")
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")
_KAGGLE_HEADER = ("ImageId", "PredictionString")


def _shipped_lines(name: str) -> tuple[str, ...]:
    text = resources.files("tresnet.data").joinpath(name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k synsets in class-index order (sorted; index 0 is ``n01440764``)."""
    return _shipped_lines("imagenet_synsets.txt")


@cache
def imagenet_synset_index() -> dict[str, int]:
    """``{synset: class index}`` of the 1000 ImageNet-1k classes."""
    return {synset: index for index, synset in enumerate(imagenet_synsets())}


@cache
def devkit_synsets() -> tuple[str, ...]:
    """The 1000 synsets in ILSVRC2012 development-kit order: entry k - 1 is ``ILSVRC2012_ID`` k."""
    return _shipped_lines("imagenet_devkit_synsets.txt")


def is_synset(name: str) -> bool:
    """Whether ``name`` looks like a WordNet synset id (``n`` and eight digits), ImageNet-1k's or not."""
    return _SYNSET.fullmatch(name) is not None


def val_image_number(path: str | os.PathLike) -> int | None:
    """The number of an ImageNet validation image from its file name (``ILSVRC2012_val_00000042.JPEG``:
    42), or None for a file named otherwise."""
    match = _VAL_NAME.fullmatch(Path(path).stem)
    return int(match.group(1)) if match else None


def _read_kaggle_csv(path: Path) -> dict[int, str]:
    labels: dict[int, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header[:2]) != _KAGGLE_HEADER:
            raise DataError(f"ground-truth CSV {path} must start with the header ImageId,PredictionString "
                            f"(as LOC_val_solution.csv), not {','.join(header or [])!r}")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            number = val_image_number(row[0].strip())
            tokens = row[1].split() if len(row) > 1 else []
            if number is None or not tokens or not is_synset(tokens[0]):
                raise DataError(f"{path} line {line}: expected ILSVRC2012_val_NNNNNNNN,<synset> ..., "
                                f"got {','.join(row)[:80]!r}")
            labels[number] = tokens[0]  # the first box's synset: every box of an image has the same
    return labels


def _read_devkit_txt(path: Path) -> dict[int, str]:
    synsets = devkit_synsets()
    labels: dict[int, str] = {}
    lines = path.read_text(encoding="utf-8-sig").rstrip().splitlines()  # blank lines at the end are no image's
    for number, text in enumerate(lines, start=1):
        text = text.strip()
        if not text.isdigit() or not 1 <= int(text) <= len(synsets):
            raise DataError(f"{path} line {number}: expected an ILSVRC2012_ID between 1 and {len(synsets)} "
                            f"(the devkit's ILSVRC2012_validation_ground_truth.txt), got {text[:40]!r}")
        labels[number] = synsets[int(text) - 1]
    return labels


def read_ground_truth(path: str | os.PathLike) -> dict[int, str]:
    """``{validation image number: synset}`` from ``LOC_val_solution.csv`` (``ImageId,PredictionString``:
    the first synset of each row) or the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one
    ``ILSVRC2012_ID`` per line, line k for image k, in development-kit order).

    Raises :class:`DataError` for a missing file or one in neither format (with the line at fault).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"ground-truth file {path} does not exist: pass LOC_val_solution.csv or the devkit's "
                        f"ILSVRC2012_validation_ground_truth.txt")
    try:
        with path.open(encoding="utf-8-sig") as f:  # a byte-order mark is not part of the header
            first = f.readline()
    except UnicodeDecodeError as e:
        raise DataError(f"ground-truth file {path} is not text: pass LOC_val_solution.csv or "
                        f"ILSVRC2012_validation_ground_truth.txt") from e
    labels = _read_kaggle_csv(path) if first.startswith(_KAGGLE_HEADER[0]) else _read_devkit_txt(path)
    if not labels:
        raise DataError(f"ground-truth file {path} is empty")
    return labels


def read_real_labels(path: str | os.PathLike) -> list[list[int]]:
    """The ImageNet-ReaL labels (Beyer et al. 2020, ``real.json``): for validation image k (1-based), entry
    k - 1 lists its class indices (ImageNet-1k order); an empty list means ReaL has no label for it.

    Raises :class:`DataError` for a missing file or one that is not such a list.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"ReaL labels file {path} does not exist: pass real.json from google-research/reassessed-imagenet")
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"ReaL labels file {path} is not JSON ({e})") from e
    ok = isinstance(labels, list) and all(
        isinstance(entry, list) and all(type(i) is int and 0 <= i < len(imagenet_synsets()) for i in entry)
        for entry in labels)
    if not ok or not labels:
        raise DataError(f"ReaL labels file {path} must be a JSON list with one list of class indices (0-999) "
                        f"per validation image, as real.json")
    return labels


__all__ = ["IMAGENET_VAL_IMAGES", "devkit_synsets", "imagenet_synset_index", "imagenet_synsets", "is_synset",
           "read_ground_truth", "read_real_labels", "val_image_number"]

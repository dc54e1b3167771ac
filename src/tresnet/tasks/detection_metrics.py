"""Object detection scored as COCO scores it: the twelve numbers of pycocotools' ``COCOeval`` (AP over IoU
0.50:0.95, AP50, AP75, AP by object size, AR at 1 / 10 / 100 detections, AR by size), computed in memory from a
detector's outputs and the data's targets.

A detector's outputs (torchvision's, in eval mode) are one dict per image: ``{"boxes": (k, 4) XYXY in the
original image's pixels, "scores": (k,), "labels": (k,) class index 0..C-1}``. Targets are one dict per image:
``{"boxes": (n, 4) XYXY, "labels": (n,) class index, "image_id": int, "area": (n,), "iscrowd": (n,)}``; an image
with ``n = 0`` (a negative) still counts. ``category_ids[i]`` is the original COCO category id of class index
``i`` (COCO's ids have gaps: 1..90 for 80 classes); results files and the ground truth handed to pycocotools use
those ids, so the numbers equal what pycocotools gives on the json files.

pycocotools is the optional extra ``detection``: it is imported when something is scored, and its absence is a
:class:`MissingDependencyError` then.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor

from tresnet.collectives import DistInfo
from tresnet.errors import ConfigError, DataError, MissingDependencyError
from tresnet.files import write_text
from tresnet.tasks.outputs import throughput

# What each of COCOeval's 12 stats averages, in its order: (AP or AR, IoU threshold (None: 0.50:0.95), object
# size, detections per image); COCOeval.summarize() states the same.
_COCOEVAL_LINES = (
    ("ap", True, None, "all", 100), ("ap50", True, 0.5, "all", 100), ("ap75", True, 0.75, "all", 100),
    ("ap_small", True, None, "small", 100), ("ap_medium", True, None, "medium", 100),
    ("ap_large", True, None, "large", 100), ("ar1", False, None, "all", 1), ("ar10", False, None, "all", 10),
    ("ar100", False, None, "all", 100), ("ar_small", False, None, "small", 100),
    ("ar_medium", False, None, "medium", 100), ("ar_large", False, None, "large", 100),
)


def require_pycocotools() -> None:
    """:class:`MissingDependencyError` now, rather than after an epoch, when pycocotools is not installed."""
    _pycocotools()


def _pycocotools() -> tuple[Any, Any]:
    """pycocotools' ``(COCO, COCOeval)``; :class:`MissingDependencyError` when it is not installed."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise MissingDependencyError("scoring detections needs pycocotools: pip install 'tresnet[detection]' (or "
                                     "'tresnet[train]')") from e
    return COCO, COCOeval


def _rows(value: Any, columns: int | None, what: str) -> Tensor:
    """``value`` as a CPU tensor of ``(n, columns)`` (or ``(n,)`` when ``columns`` is None); DataError otherwise."""
    tensor = torch.as_tensor(value).detach().cpu()
    if columns is not None and tensor.numel() == 0:
        tensor = tensor.reshape(0, columns)  # an image without boxes may come as shape (0,)
    expected = 1 if columns is None else 2
    if tensor.ndim != expected or (columns is not None and tensor.shape[1] != columns):
        shape = "(n,)" if columns is None else f"(n, {columns})"
        raise DataError(f"{what} has shape {tuple(tensor.shape)}: it must be {shape}")
    return tensor


def _xywh(boxes_xyxy: Tensor) -> list[list[float]]:
    """COCO's ``[x, y, w, h]`` of XYXY boxes, in float64 (the difference of two float32 values is exact there)."""
    boxes = boxes_xyxy.to(torch.float64)
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()


def _category_ids_of(labels: Tensor, category_ids: Sequence[int], what: str) -> list[int]:
    """The original category id of each class index in ``labels``; DataError for an index outside them."""
    indices = labels.to(torch.int64).tolist()
    bad = [i for i in indices if not 0 <= i < len(category_ids)]
    if bad:
        raise DataError(f"{what} has class index {bad[0]} outside the {len(category_ids)} classes of category_ids "
                        f"(0..{len(category_ids) - 1}): the model's classes must be the data's")
    return [int(category_ids[i]) for i in indices]


def coco_results(outputs: Sequence[dict], image_ids: Sequence[int], category_ids: Sequence[int]) -> list[dict]:
    """COCO's results entries of a batch of detector outputs: one ``{"image_id", "category_id", "bbox", "score"}``
    per detection, ``category_id`` the ORIGINAL id (``category_ids[label]``), ``bbox`` ``[x, y, w, h]`` and
    ``score`` as python floats at full precision, in the outputs' order. ``image_ids[i]`` is the id of the image of
    ``outputs[i]``. Raises :class:`DataError` when the counts differ, a tensor has the wrong shape or a label lies
    outside ``category_ids``."""
    if len(outputs) != len(image_ids):
        raise DataError(f"{len(outputs)} detector outputs for {len(image_ids)} image ids: one output per image")
    results = []
    for output, image_id in zip(outputs, image_ids, strict=True):
        boxes = _rows(output["boxes"], 4, f"the boxes of image {int(image_id)}")
        scores = _rows(output["scores"], None, f"the scores of image {int(image_id)}")
        labels = _rows(output["labels"], None, f"the labels of image {int(image_id)}")
        if not len(boxes) == len(scores) == len(labels):
            raise DataError(f"image {int(image_id)} has {len(boxes)} boxes, {len(scores)} scores and "
                            f"{len(labels)} labels: one each per detection")
        ids = _category_ids_of(labels, category_ids, f"a detection of image {int(image_id)}")
        results += [{"image_id": int(image_id), "category_id": category, "bbox": box, "score": score}
                    for box, score, category in zip(_xywh(boxes), scores.double().tolist(), ids, strict=True)]
    return results


def ground_truth_annotations(target: dict, category_ids: Sequence[int]) -> list[dict]:
    """COCO's annotations (without ``id``) of one image's target: ``bbox`` ``[x, y, w, h]`` from the XYXY boxes,
    ``category_id`` the original id, the target's ``area`` (default: the box's w * h) and ``iscrowd`` (default 0).
    Raises :class:`DataError` for a malformed target or a label outside ``category_ids``."""
    image_id = int(target["image_id"])
    boxes = _rows(target["boxes"], 4, f"the target boxes of image {image_id}")
    labels = _rows(target["labels"], None, f"the target labels of image {image_id}")
    xywh = _xywh(boxes)
    area = _rows(target["area"], None, f"the target areas of image {image_id}").double().tolist() \
        if "area" in target else [w * h for _, _, w, h in xywh]
    iscrowd = _rows(target["iscrowd"], None, f"the iscrowd flags of image {image_id}").to(torch.int64).tolist() \
        if "iscrowd" in target else [0] * len(xywh)
    if not len(xywh) == len(labels) == len(area) == len(iscrowd):
        raise DataError(f"the target of image {image_id} has {len(xywh)} boxes, {len(labels)} labels, "
                        f"{len(area)} areas and {len(iscrowd)} iscrowd flags: one each per object")
    ids = _category_ids_of(labels, category_ids, f"the target of image {image_id}")
    return [{"image_id": image_id, "category_id": category, "bbox": box, "area": a, "iscrowd": int(crowd)}
            for box, category, a, crowd in zip(xywh, ids, area, iscrowd, strict=True)]


@dataclass
class DetectionRecords:
    """What a tally has seen: the ``image_ids`` in order (negatives included), the ground-truth ``annotations``
    (COCO's form, no ``id`` yet: ids are given when the records of every process are merged), the detections as
    COCO ``results`` entries, and the unreadable files ``skipped``."""

    image_ids: list[int] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    skipped: int = 0


def _merge(parts: Sequence[DetectionRecords]) -> DetectionRecords:
    """The records of every part (process) in order, as one; DataError for an image seen twice (its objects
    would count twice)."""
    merged = DetectionRecords()
    for part in parts:
        merged.image_ids += part.image_ids
        merged.annotations += part.annotations
        merged.results += part.results
        merged.skipped += part.skipped
    if len(set(merged.image_ids)) != len(merged.image_ids):
        twice = next(i for i, count in Counter(merged.image_ids).items() if count > 1)
        raise DataError(f"image id {twice} was evaluated twice: every image must be evaluated once, by one "
                        "process, and image ids must be unique")
    return merged


def _gather(records: DetectionRecords, info: DistInfo | None) -> DetectionRecords:
    """Every process's records in rank order (a collective under a distributed ``info``), merged."""
    if info is None or not info.distributed:
        return _merge([records])
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, records)
    return _merge(parts)


def coco_ground_truth(records: DetectionRecords, category_ids: Sequence[int], classes: Sequence[str]) -> dict:
    """The ground truth of ``records`` as a COCO dataset dict: ``images`` (every image id seen), ``annotations``
    (ids from 1: COCOeval reads id 0 as "unmatched") and ``categories`` (the original ids and their names)."""
    annotations = [{**annotation, "id": i} for i, annotation in enumerate(records.annotations, start=1)]
    return {"images": [{"id": image_id} for image_id in records.image_ids], "annotations": annotations,
            "categories": [{"id": int(c), "name": name} for c, name in zip(category_ids, classes, strict=True)]}


def coco_stats(ground_truth: dict, results: list[dict]) -> tuple[float, ...]:
    """COCOeval's 12 bbox stats (``COCOeval.stats``, as python floats) of ``results`` against the COCO dataset dict
    ``ground_truth``, pycocotools' printing silenced. With no detections at all each figure is what COCOeval gives
    then: 0 where there is ground truth of that size, -1 where there is none. Neither argument is modified. Raises
    :class:`MissingDependencyError` without pycocotools."""
    coco, coco_eval = _pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = coco()
        # copies: COCOeval adds keys to the annotations it reads
        gt.dataset = {**ground_truth, "annotations": [dict(a) for a in ground_truth["annotations"]]}
        gt.createIndex()
        if results:
            dt = gt.loadRes([dict(entry) for entry in results])  # copies: loadRes adds keys to each
        else:  # loadRes fails on an empty list: an empty result set scores as COCOeval scores no detections
            dt = coco()
            dt.dataset = {"images": list(ground_truth["images"]), "annotations": [],
                          "categories": list(ground_truth["categories"])}
            dt.createIndex()
        evaluation = coco_eval(gt, dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return tuple(float(value) for value in evaluation.stats)


def write_results(path: str | os.PathLike, results: list[dict]) -> Path:
    """Write COCO results entries (:func:`coco_results`) to ``path`` as JSON, atomically; return ``path``. Raises
    :class:`tresnet.errors.FileWriteError` when it cannot be written."""
    return write_text(path, json.dumps(results))


@dataclass(frozen=True)
class DetectionScores:
    """COCOeval's 12 bbox figures of one evaluation as fractions (-1 where COCOeval gives -1: no ground truth of
    that size), the images (negatives included), the unreadable files skipped, the wall time, and ``loss`` (NaN:
    torchvision's detectors report no loss in eval mode). ``score`` is ``ap`` (IoU 0.50:0.95)."""

    STAT_NAMES: ClassVar[tuple[str, ...]] = tuple(spec[0] for spec in _COCOEVAL_LINES)  # COCOeval.stats' order

    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar1: float
    ar10: float
    ar100: float
    ar_small: float
    ar_medium: float
    ar_large: float
    images: int
    skipped: int = 0
    seconds: float = 0.0
    img_per_s: float = float("inf")
    loss: float = float("nan")

    @classmethod
    def of(cls, stats: Sequence[float], **counts: Any) -> DetectionScores:
        """The scores of COCOeval's 12 ``stats`` and the ``counts`` (images, skipped, seconds, img_per_s, loss)."""
        if len(stats) != len(cls.STAT_NAMES):
            raise ValueError(f"COCOeval gives {len(cls.STAT_NAMES)} bbox stats, got {len(stats)}")
        return cls(**dict(zip(cls.STAT_NAMES, (float(s) for s in stats), strict=True)), **counts)

    @property
    def score(self) -> float:
        return self.ap

    @property
    def stats(self) -> tuple[float, ...]:
        """The 12 figures in COCOeval's order (``COCOeval.stats``)."""
        return tuple(getattr(self, name) for name in self.STAT_NAMES)

    def to_dict(self) -> dict:
        """Every field, the 12 figures first."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def summary_lines(self) -> list[str]:
        """The 12 lines ``COCOeval.summarize()`` prints, in its wording and format."""
        lines = []
        for (name, is_ap, iou, area, max_dets) in _COCOEVAL_LINES:
            title, kind = ("Average Precision", "(AP)") if is_ap else ("Average Recall", "(AR)")
            iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
            lines.append(f" {title:<18} {kind} @[ IoU={iou_text:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] "
                         f"= {getattr(self, name):0.3f}")
        return lines


class DetectionTally:
    """Every image's detections and ground truth (kept on the CPU as COCO entries), scored at the end by
    pycocotools' COCOeval over every process's images.

    ``category_ids`` are the original COCO ids of the class indices, ``classes`` their names. After
    :meth:`result`, ``evaluated`` holds the merged records it scored (every process's under DDP), say for
    :func:`write_results` of ``evaluated.results``. Raises :class:`ConfigError` when ``category_ids`` is empty,
    repeats an id, or differs in length from ``classes``.
    """

    def __init__(self, device: torch.device | str, category_ids: Sequence[int], classes: Sequence[str]) -> None:
        if not category_ids or len(category_ids) != len(classes):
            raise ConfigError(f"{len(category_ids)} category ids for {len(classes)} classes: give one original "
                              "COCO category id per class")
        if len(set(category_ids)) != len(category_ids):
            raise ConfigError(f"the category ids repeat an id: {list(category_ids)}; each class needs its own")
        self.device = torch.device(device)
        self.category_ids = [int(c) for c in category_ids]
        self.classes = [str(name) for name in classes]
        self.records = DetectionRecords()
        self.evaluated: DetectionRecords | None = None

    @property
    def images(self) -> int:
        return len(self.records.image_ids)

    @property
    def skipped(self) -> int:
        return self.records.skipped

    @skipped.setter
    def skipped(self, value: int) -> None:  # the evaluation loop counts unreadable files here
        self.records.skipped = int(value)

    def add(self, outputs: Sequence[dict], targets: Sequence[dict]) -> None:
        """Record a batch: the detector's ``outputs`` and the ``targets``, one dict each per image (moved to the
        CPU). Raises :class:`DataError` when their counts differ, for a malformed dict or a label outside the
        classes; nothing of the batch is recorded then."""
        if len(outputs) != len(targets):
            raise DataError(f"{len(outputs)} detector outputs for {len(targets)} targets: one output per image")
        image_ids = [int(target["image_id"]) for target in targets]
        results = coco_results(outputs, image_ids, self.category_ids)
        annotations = [a for target in targets for a in ground_truth_annotations(target, self.category_ids)]
        self.records.image_ids += image_ids
        self.records.annotations += annotations
        self.records.results += results

    def postfix(self) -> dict:
        return {"images": self.images}

    def result(self, seconds: float, info: DistInfo | None = None) -> DetectionScores:
        """COCOeval's figures over this process's images, or with a distributed ``info`` over every process's
        (every process must call it then, and gets the same figures). Raises :class:`DataError` when no image was
        evaluated or an image id came twice, :class:`MissingDependencyError` without pycocotools."""
        merged = _gather(self.records, info)
        images = len(merged.image_ids)
        if images == 0:
            raise DataError(f"nothing was evaluated: the loader gave no readable image ({merged.skipped} unreadable)")
        stats = coco_stats(coco_ground_truth(merged, self.category_ids, self.classes), merged.results)
        self.evaluated = merged
        return DetectionScores.of(stats, images=images, skipped=merged.skipped, seconds=seconds,
                                  img_per_s=throughput(images, seconds))


__all__ = ["DetectionRecords", "DetectionScores", "DetectionTally", "coco_ground_truth", "coco_results",
           "coco_stats", "ground_truth_annotations", "require_pycocotools", "write_results"]

"""The ``detection`` task: boxes and classes of the objects in an image, by torchvision's FCOS or RetinaNet on one of
our backbones (:mod:`tresnet.models.detection`), scored by COCO's mAP (pycocotools: the 12 numbers of COCOeval).

What differs from the classification tasks, all of it answered here:

- the network is a detector around a ``features_only`` backbone (:meth:`Detection.create_network`); its "head"
  is the detector's (``fcos``, the paper's, or ``retinanet``);
- a batch is a list of images (of any sizes) and a list of target dicts (``boxes`` XYXY in pixels, ``labels``
  class indices, ``image_id``, ``area``, ``iscrowd``), moved by :meth:`Detection.move`;
- the loss is the detector's own (FCOS: sigmoid focal loss, GIoU and centre-ness; RetinaNet: focal loss and L1),
  which it computes in training mode from the targets: :meth:`Detection.training_loss` sums it;
- evaluation collects the boxes and scores with the original category ids of the data (COCO's run 1..90 with gaps
  for 80 classes), and COCOeval scores them; torchvision's detectors give no loss in eval mode, so none is
  reported;
- distillation, mixup and cutmix do not apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchvision.utils import draw_bounding_boxes

from tresnet.data.detection import create_detection_eval_transform, create_detection_train_transform
from tresnet.data.loader import find_attribute
from tresnet.data.train_transforms import Augmentation
from tresnet.errors import ConfigError
from tresnet.models.detection import (
    DETECTOR_HEADS,
    FEATURE_INDICES,
    Detector,
    DetectorConfig,
    DetectorOptions,
    build_detector,
    prepare_backbone,
)
from tresnet.tasks.base import DEFAULT_THRESHOLD, CreateModel, LossOptions, NetworkSpec, Task
from tresnet.tasks.detection_metrics import (
    DetectionScores,
    DetectionTally,
    require_pycocotools,
    write_results,
)
from tresnet.tasks.outputs import RunFacts

DETECTION = "detection"


class DetectorLoss(nn.Module):
    """The detector's own losses (a dict of scalars, as torchvision's detectors return them in training), summed
    with weight 1 each, as torchvision's detection reference trains."""

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        return sum(losses.values())


@dataclass(frozen=True)
class Box:
    """One detected object: its class index, label, score and box ``[x1, y1, x2, y2]`` in the image's pixels."""

    index: int
    label: str
    score: float
    box: list[float]

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "score": self.score, "box": self.box}

    def line(self, indent: str) -> str:
        x1, y1, x2, y2 = self.box
        return f"{indent}{100.0 * self.score:6.2f}%  {self.label} ({self.index})  [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]"


@dataclass(frozen=True)
class Detections:
    """The answer for one image: its boxes, best first, above the score threshold; or the error that stopped it."""

    file: str
    boxes: list[Box] = field(default_factory=list)
    error: str | None = None
    threshold: float | None = None

    def to_dict(self) -> dict:
        """``{"file", "boxes": [{"index", "label", "score", "box"}]}``, plus ``"error"`` for a failed input."""
        out: dict = {"file": self.file, "boxes": [box.to_dict() for box in self.boxes]}
        if self.error is not None:
            out["error"] = self.error
        return out

    def lines(self) -> list[str]:
        """What ``tresnet predict`` prints for a readable image."""
        head = f"  {len(self.boxes)} objects" + (f" (score > {self.threshold:g})" if self.threshold is not None else "")
        return [self.file, head + (":" if self.boxes else "")] + [box.line("    ") for box in self.boxes]


@dataclass(frozen=True)
class DetectionReport:
    """What ``validate`` reports of a detector: COCOeval's 12 numbers in percent, and the results file written."""

    facts: RunFacts
    stats: dict
    detections_file: str | None = None

    def to_dict(self) -> dict:
        """What ``tresnet validate --json`` writes."""
        return {**self.facts.head(), **self.stats, "detections_file": self.detections_file,
                "accuracy_unit": "percent", **self.facts.tail()}

    def lines(self, published: str | None = None) -> list[str]:
        """The figures as ``tresnet validate`` prints them: COCOeval's summary, then the counts."""
        s = self.stats
        return [f"AP {s['ap']:.2f}  AP50 {s['ap50']:.2f}  AP75 {s['ap75']:.2f}  APs {s['ap_small']:.2f}  "
                f"APm {s['ap_medium']:.2f}  APl {s['ap_large']:.2f}  {self.facts.counts()}",
                f"AR1 {s['ar1']:.2f}  AR10 {s['ar10']:.2f}  AR100 {s['ar100']:.2f}  ARs {s['ar_small']:.2f}  "
                f"ARm {s['ar_medium']:.2f}  ARl {s['ar_large']:.2f}"]


# The per-image augmentations of classification with their defaults, which a detection run must leave alone (the
# crop mode's "random" default is classification's own: the detection transform does not read it).
_CLASSIFICATION_AUGMENTATION = {name: getattr(Augmentation(), name) for name in
                                ("scale", "ratio", "auto_augment", "random_erase", "cutout")}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


_PALETTE = ("red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "white", "pink", "springgreen")


def _move_target(target: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) if isinstance(value, Tensor) else value
            for key, value in target.items()}


class Detection(Task):
    """Objects in an image: a detector (FCOS or RetinaNet) on a backbone, trained with its own losses, scored by
    COCO mAP."""

    name = DETECTION
    metric = "ap"
    metric_title = "AP"
    validation_loss = None
    losses = ("detector",)
    columns = ("val_ap", "val_ap50", "ema_ap", "ema_ap50")
    heads: ClassVar[tuple[str, ...]] = DETECTOR_HEADS
    distils = False
    mixes_batches = False
    section = "detection"
    folds = False
    draws = True

    def create_network(self, create: CreateModel, spec: NetworkSpec) -> nn.Module:
        """A ``spec.head`` detector (None: FCOS) on a ``features_only`` ``spec.name`` backbone started from
        ``spec.checkpoint`` (a classification checkpoint of any format we read; None: fresh), its norms and early
        parts frozen as ``spec.options`` (:class:`~tresnet.models.detection.DetectorOptions`) say."""
        if spec.memory_efficient:
            raise ConfigError("--memory-efficient is for classifiers: a detector's backbone is built without the "
                              "lean residual tails; train without it")
        options = detector_options(spec)
        head = self.check_head(spec.head) or self.heads[0]
        body = detector_body(create, spec.name, checkpoint_path=spec.checkpoint, drop_path_rate=spec.drop_path_rate,
                             norm=spec.norm)
        config = DetectorConfig.of(head, spec.num_classes, options, body.pretrained_cfg)
        return assemble_detector(body, config, options, from_weights=spec.checkpoint is not None)

    # training --------------------------------------------------------------------------------------------

    def random_targets(self, batch: int, num_outputs: int, generator: torch.Generator | None = None, *,
                       img_size: int = 64) -> list[dict]:
        """One to four boxes per image, of random classes, sides between 1/8 and 1/2 of ``img_size``."""
        targets = []
        for index in range(batch):
            count = int(torch.randint(1, 5, (), generator=generator))
            sides = torch.randint(img_size // 8, img_size // 2, (count, 2), generator=generator).float()
            corners = torch.rand(count, 2, generator=generator) * (img_size - sides)
            boxes = torch.cat([corners, corners + sides], dim=1)
            targets.append({"boxes": boxes, "labels": torch.randint(0, num_outputs, (count,), generator=generator),
                            "image_id": index})
        return targets

    def create_loss(self, name: str | None, options: LossOptions) -> nn.Module:
        self.check_loss(name)
        require_pycocotools()  # each epoch is scored by pycocotools: say so before training, not after an epoch
        return DetectorLoss()

    def train_transform(self, augmentation: Any, pretrained_cfg: dict, img_size: int) -> Callable:
        """Large-scale jitter (``augmentation.scale_jitter``) and the horizontal flip, moving the boxes with the
        image (:func:`~tresnet.data.detection.create_detection_train_transform`); the per-image augmentations of
        classification (crops, policies, erasing) are refused, as they would cut or hide boxes."""
        changed = [name for name, default in _CLASSIFICATION_AUGMENTATION.items()
                   if _plain(getattr(augmentation, name)) != _plain(default)]
        if changed:
            raise ConfigError(f"--{changed[0].replace('_', '-')} is an augmentation of classification: detection "
                              f"trains with --hflip and --scale-jitter only; drop it")
        return create_detection_train_transform(img_size, hflip=augmentation.hflip,
                                                scale_jitter=tuple(augmentation.scale_jitter))

    def training_loss_title(self, loss: str) -> str | None:
        return "the detector's losses, summed"

    def describe(self, loss: str) -> str:
        return f"{self.name}, "

    def move(self, inputs: Any, targets: Any, device: torch.device, *, channels_last: bool = False) -> tuple:
        """A batch's images (a list: they may differ in size; the detector batches them) and targets on ``device``."""
        images = [image.to(device, non_blocking=True) for image in inputs]
        return images, [_move_target(target, device) for target in targets]

    def training_loss(self, net: Callable[..., Any], criterion: nn.Module, inputs: Any, targets: Any) -> Tensor:
        return criterion(net(inputs, targets))

    # evaluation ------------------------------------------------------------------------------------------

    def tally(self, device: torch.device, *, threshold: float = DEFAULT_THRESHOLD,
              class_subset: Sequence[int] | None = None, data: Any = None) -> DetectionTally:
        """A COCO mAP tally over the classes of ``data`` (the set evaluated: its ``category_ids`` and ``classes``)."""
        category_ids = find_attribute(data, "category_ids")
        classes = find_attribute(data, "classes")
        if category_ids is None or classes is None:
            raise ConfigError("detection is scored against a data set that names its category ids (a COCO "
                              "instances file, or --data digits-detection)")
        return DetectionTally(device, list(category_ids), list(classes))

    def row(self, val: DetectionScores, ema: DetectionScores | None) -> dict[str, Any]:
        return {"val_ap": val.ap, "val_ap50": val.ap50, "ema_ap": ema.ap if ema else None,
                "ema_ap50": ema.ap50 if ema else None}

    # inference -------------------------------------------------------------------------------------------

    def report(self, run: Any, scores: DetectionScores) -> DetectionReport:
        stats = {name: 100.0 * value if value >= 0 else value for name, value in zip(
            DetectionScores.STAT_NAMES, scores.stats, strict=True)}
        return DetectionReport(RunFacts.of(run, scores), stats, run.results_file)

    def check_run(self, number_format: str, results_file: Any = None) -> None:
        super().check_run(number_format)

    def threshold_of(self, threshold: float) -> float | None:
        return threshold  # the score a box must exceed to be answered

    def check_input_size(self, model: nn.Module, height: int, width: int) -> None:
        """Any size: the detector resizes each image itself (its ``min_size`` / ``max_size``)."""

    def eval_transform(self, preprocessing: Any) -> Callable:
        """The image to float in [0, 1] with its boxes as they are: the detector resizes and normalises."""
        return create_detection_eval_transform()

    def batch(self, images: list[Tensor]) -> Any:
        return list(images)  # of any sizes: the detector batches them itself

    def draw(self, image: Tensor, answer: Detections) -> Tensor:
        """The image with each box of ``answer`` drawn, labelled with its class and score (a colour per class)."""
        pixels = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        if not answer.boxes:
            return pixels
        boxes = torch.tensor([box.box for box in answer.boxes])
        names = [f"{box.label} {box.score:.2f}" for box in answer.boxes]
        colours = [_PALETTE[box.index % len(_PALETTE)] for box in answer.boxes]
        return draw_bounding_boxes(pixels, boxes, labels=names, colors=colours, width=2)

    def write_results(self, tally: DetectionTally, path: Any) -> None:
        """The COCO results json of the evaluation (``image_id``, the data's ``category_id``, ``bbox`` as
        ``[x, y, w, h]``, ``score``), which pycocotools scores as :meth:`tally` did."""
        write_results(path, tally.evaluated.results)

    def answers(self, names: list[str], logits: Any, labels: list[str], synsets: Sequence[str] | None, *,
                topk: int, threshold: float) -> list[Detections]:
        """Each image's boxes scoring above ``threshold``, best first (the detector sorts none: this does)."""
        out = []
        for name, found in zip(names, logits, strict=True):
            keep = found["scores"] > threshold
            scores, order = found["scores"][keep].float().sort(descending=True)
            boxes, indices = found["boxes"][keep][order].float(), found["labels"][keep][order]
            out.append(Detections(name, [Box(int(i), labels[int(i)], float(s), [float(v) for v in b])
                                         for i, s, b in zip(indices.tolist(), scores.tolist(), boxes, strict=True)],
                                  threshold=threshold))
        return out

    def failure(self, name: str, message: str) -> Detections:
        return Detections(name, error=message)


def detector_options(spec: NetworkSpec) -> DetectorOptions:
    """``spec.options`` as the detector's: a :class:`DetectorOptions` as it is, else read field by field from the
    run's ``detection`` section (its shorter side ``spec.img_size``); None gives the defaults."""
    if isinstance(spec.options, DetectorOptions):
        return spec.options
    names = [f.name for f in fields(DetectorOptions) if f.name != "min_size"]
    given = {name: getattr(spec.options, name) for name in names} if spec.options is not None else {}
    return DetectorOptions(min_size=spec.img_size or DetectorOptions.min_size, **given)


def detector_body(create: CreateModel, name: str | None, **options) -> nn.Module:
    """The backbone of a detector on model ``name``: its ``features_only`` stride 8/16/32 maps, built by ``create``."""
    return create(name, features_only=True, out_indices=FEATURE_INDICES, **options)


def assemble_detector(body: nn.Module, config: DetectorConfig, options: DetectorOptions, *,
                      from_weights: bool) -> Detector:
    """The ``config`` detector on ``body``, its norms and early parts frozen as ``options`` say (defaults following
    ``from_weights``), described for our commands and checkpoints (:func:`describe_detector`)."""
    prepare_backbone(body, options, from_weights=from_weights)
    return describe_detector(build_detector(body, config), body, config)


def describe_detector(detector: Detector, body: nn.Module, config: DetectorConfig) -> Detector:
    """``detector`` with what our commands and checkpoints read of a model: ``pretrained_cfg`` (the backbone's, with
    the task, the head and the detector's ``network`` configuration), ``num_classes`` and ``norm``."""
    detector.pretrained_cfg = {**body.pretrained_cfg, "task": DETECTION, "head": config.head,
                               "num_classes": config.num_classes, "network": config.to_dict(),
                               "input_size": (3, config.min_size, config.min_size)}
    detector.num_classes = config.num_classes
    detector.norm = getattr(body, "norm", None)
    detector.in_chans = 3
    return detector


TASK = Detection()

__all__ = ["DETECTION", "TASK", "Box", "Detection", "DetectionReport", "Detections", "DetectorLoss",
           "assemble_detector", "describe_detector", "detector_body"]

"""The ``multilabel`` task: any set of classes per image, one sigmoid per class, scored by mAP and the
thresholded precision / recall of :mod:`tresnet.tasks.multilabel_metrics`; trained with ASL (the default),
the binary focal loss or binary cross-entropy (:mod:`tresnet.tasks.losses`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tresnet.collectives import DistInfo, all_reduce_sum
from tresnet.data.class_names import (
    COCO_NUM_CLASSES,
    IMAGENET_NUM_CLASSES,
    coco_class_names,
    imagenet_class_names,
)
from tresnet.errors import DataError
from tresnet.tasks.base import DEFAULT_THRESHOLD, LossOptions, Task, check_threshold
from tresnet.tasks.losses import AsymmetricLoss, BinaryCrossEntropy, FocalLoss, check_reduction
from tresnet.tasks.multilabel_metrics import THRESHOLD_METRICS, MultiLabelRows, multilabel_metrics
from tresnet.tasks.outputs import ClassScore, Prediction, RunFacts, percent, throughput

MULTILABEL = "multilabel"


@dataclass(frozen=True)
class MultiLabelScores:
    """The multi-label figures of one evaluation, fractions in [0, 1]: ``map``, ``ap_per_class`` (None for a
    class without positives), the threshold metrics ``cp``, ``cr``, ``cf1``, ``op``, ``or_`` (``or`` in
    :meth:`to_dict`), ``of1`` at ``threshold``; the mean binary cross-entropy ``loss`` per (image, class), the
    images (and unreadable files skipped) and the wall time."""

    map: float
    ap_per_class: list[float | None]
    cp: float
    cr: float
    cf1: float
    op: float
    or_: float
    of1: float
    threshold: float
    num_classes: int
    classes_with_positives: int
    loss: float
    images: int
    skipped: int = 0
    seconds: float = 0.0
    img_per_s: float = float("inf")

    @property
    def score(self) -> float:
        return self.map

    def to_dict(self) -> dict:
        """The figures as one dict, the threshold metrics under their usual names (``or``)."""
        out = {key: getattr(self, key) for key in self.__dataclass_fields__}
        out["or"] = out.pop("or_")
        return out


class MultiLabelTally:
    """Every image's logits and targets (gathered over the processes at the end: mAP needs them all) and the
    summed binary cross-entropy, kept on the device."""

    def __init__(self, device: torch.device, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.device = torch.device(device)
        self.rows = MultiLabelRows()
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.elements = self.skipped = 0
        self.threshold = check_threshold(threshold)

    @property
    def images(self) -> int:
        return self.rows.images

    def add(self, logits: Tensor, targets: Tensor) -> None:
        self.rows.add(logits, targets)  # first: it names a class count that differs from the data's
        # float64: the sum then hardly depends on how the images were batched or sharded
        self.loss_sum += F.binary_cross_entropy_with_logits(logits.double(), targets.double(), reduction="sum")
        self.elements += targets.numel()

    def postfix(self) -> dict:
        return {"loss": f"{self.loss_sum.item() / self.elements:.4f}"}

    def result(self, seconds: float, info: DistInfo | None = None) -> MultiLabelScores:
        """The figures over this process's images, or with a distributed ``info`` over every process's (every
        process must call it then, and gets the same figures)."""
        logits, targets = self.rows.gather(info)
        loss_sum, elements, skipped = self.loss_sum.item(), self.elements, self.skipped
        if info is not None:
            loss_sum, elements, skipped = all_reduce_sum([loss_sum, elements, skipped], info)
        images = len(logits)
        if images == 0:
            raise DataError(f"nothing was evaluated: the loader gave no readable image ({int(skipped)} unreadable)")
        metrics = multilabel_metrics(logits, targets, self.threshold)
        metrics["or_"] = metrics.pop("or")
        return MultiLabelScores(**metrics, loss=loss_sum / elements, images=images, skipped=int(skipped),
                                seconds=seconds, img_per_s=throughput(images, seconds))


@dataclass(frozen=True)
class MultiLabelReport:
    """What ``validate`` reports of a multi-label model: mAP, AP per class and the threshold metrics in percent,
    with the classes, the annotations read and the threshold."""

    facts: RunFacts
    annotations: str
    classes: list[str]
    map: float
    ap_per_class: list[float | None]
    threshold_metrics: dict  # cp, cr, cf1, op, or, of1 (percent)
    threshold: float
    classes_with_positives: int

    def to_dict(self) -> dict:
        """What ``tresnet validate --json`` writes."""
        return {**self.facts.head(), "annotations": self.annotations, "classes": self.classes, "map": self.map,
                "ap_per_class": self.ap_per_class, **self.threshold_metrics, "metric_unit": "percent",
                "threshold": self.threshold, "classes_with_positives": self.classes_with_positives,
                **self.facts.tail()}

    def lines(self, published: str | None = None) -> list[str]:
        """The figures as ``tresnet validate`` prints them (there is no published figure to compare with)."""
        return [f"mAP {self.map:.3f}% over the {self.classes_with_positives} of {self.facts.num_classes} classes "
                f"with a positive  {self.facts.counts()}",
                f"at threshold {self.threshold:g}:  " + "  ".join(
                    f"{key.upper()} {self.threshold_metrics[key]:.3f}%" for key in THRESHOLD_METRICS)]


class MultiLabel(Task):
    """Any set of classes per image: a sigmoid per class, ASL / focal / BCE to train, mAP to score; a label is
    predicted above a probability threshold, which its checkpoints record."""

    name = MULTILABEL
    metric = "map"
    metric_title = "mAP"
    validation_loss = "BCE"
    losses = ("asl", "bce", "focal")
    columns = ("val_map", "ema_map", "val_cf1", "val_of1")

    def random_targets(self, batch: int, num_outputs: int, generator: torch.Generator | None = None, *,
                       img_size: int = 64) -> Tensor:
        return (torch.rand(batch, num_outputs, generator=generator) < 0.3).float()

    def create_loss(self, name: str | None, options: LossOptions) -> nn.Module:
        name = self.check_loss(name)
        reduction = check_reduction(options.reduction)
        if name == "bce":
            return BinaryCrossEntropy(reduction=reduction)
        if name == "focal":
            return FocalLoss(gamma=options.focal_gamma, reduction=reduction)
        return AsymmetricLoss(gamma_neg=options.gamma_neg, gamma_pos=options.gamma_pos, clip=options.clip,
                              reduction=reduction)

    def divergence(self, student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
        """``T^2`` times the binary KL of each (image, class) pair, ``sigmoid(t / T)`` against ``sigmoid(s / T)``,
        averaged over the pairs."""
        s = student_logits.float() / temperature
        t = teacher_logits.detach().float() / temperature
        p_t = torch.sigmoid(t)
        kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))
        return kl.mean() * temperature ** 2

    def probabilities(self, logits: Tensor) -> Tensor:
        return logits.float().sigmoid()

    def logits_of(self, probabilities: Tensor) -> Tensor:
        return torch.logit(probabilities, eps=1e-7)

    def threshold_of(self, threshold: float) -> float | None:
        return threshold

    def checkpoint_record(self, *, threshold: float) -> dict[str, str]:
        return {"threshold": str(float(threshold))}

    def tally(self, device: torch.device, *, threshold: float = DEFAULT_THRESHOLD,
              class_subset: Sequence[int] | None = None, data: Any = None) -> MultiLabelTally:
        return MultiLabelTally(device, threshold)

    def row(self, val: MultiLabelScores, ema: MultiLabelScores | None) -> dict[str, Any]:
        return {"val_map": val.map, "ema_map": ema.map if ema else None, "val_cf1": val.cf1, "val_of1": val.of1}

    def default_labels(self, num_classes: int) -> tuple[list[str] | None, list[str] | None]:
        if num_classes == COCO_NUM_CLASSES:
            return list(coco_class_names()), None
        if num_classes == IMAGENET_NUM_CLASSES:
            return list(imagenet_class_names()), None
        return None, None

    def report(self, run: Any, scores: MultiLabelScores) -> MultiLabelReport:
        figures = scores.to_dict()
        return MultiLabelReport(
            RunFacts.of(run, scores), annotations=str(run.dataset.source), classes=list(run.dataset.classes),
            map=percent(scores.map), ap_per_class=[percent(ap) for ap in scores.ap_per_class],
            threshold_metrics={key: percent(figures[key]) for key in THRESHOLD_METRICS},
            threshold=scores.threshold, classes_with_positives=scores.classes_with_positives)

    def answers(self, names: list[str], logits: Tensor, labels: list[str], synsets: Sequence[str] | None, *,
                topk: int, threshold: float) -> list[Prediction]:
        """The top-k of each image, and every class above ``threshold``, best first."""
        probs = self.probabilities(logits)

        def score(index: int, prob: float) -> ClassScore:
            return ClassScore(index, labels[index], prob, synsets[index] if synsets is not None else None)

        top_probs, top_indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        answers = []
        for row, name, p_row, i_row in zip(probs, names, top_probs.tolist(), top_indices.tolist(), strict=True):
            kept = (row > threshold).nonzero().flatten()
            order = kept[row[kept].argsort(descending=True, stable=True)].tolist()
            answers.append(Prediction(name, [score(i, p) for p, i in zip(p_row, i_row, strict=True)],
                                      labels=[score(i, float(row[i])) for i in order], threshold=threshold))
        return answers

    def failure(self, name: str, message: str) -> Prediction:
        return Prediction(name, error=message, labels=[])


TASK = MultiLabel()

__all__ = ["MULTILABEL", "TASK", "MultiLabel", "MultiLabelReport", "MultiLabelScores", "MultiLabelTally"]

"""The ``multiclass`` task: one class per image, a softmax over the outputs, scored by top-1 / top-5 accuracy
(with the ReaL labels of ImageNet and class subsets such as ImageNet-A's where the data has them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tresnet.collectives import DistInfo, all_reduce_sum
from tresnet.data.class_names import IMAGENET_NUM_CLASSES, imagenet_class_names
from tresnet.data.imagenet import imagenet_synsets
from tresnet.errors import DataError
from tresnet.tasks.base import DEFAULT_THRESHOLD, LossOptions, Task
from tresnet.tasks.outputs import ClassScore, Prediction, RunFacts, percent, throughput

MULTICLASS = "multiclass"


@dataclass(frozen=True)
class ClassificationScores:
    """Accuracy of one evaluation, fractions in [0, 1]: top-1 and top-5 (a hit among the top ``min(5, classes)``)
    with their counts, the mean cross-entropy ``loss``, the images (and unreadable files skipped), the wall time.
    Over a ``class_subset`` (the prediction taken over those outputs only) also the figures over every output;
    with ReaL labels the ReaL figures over the ``real_images`` that have a label (None when none has)."""

    top1: float
    top5: float
    correct_top1: int
    correct_top5: int
    loss: float
    images: int
    skipped: int = 0
    seconds: float = 0.0
    img_per_s: float = float("inf")
    subset: dict = field(default_factory=dict)  # top1_all_classes, top5_all_classes, class_subset
    real: dict = field(default_factory=dict)  # real_top1, real_top5, real_correct_top1/5, real_images

    @property
    def score(self) -> float:
        return self.top1

    def to_dict(self) -> dict:
        """The figures as one dict: ``top1``, ``top5``, ``correct_top1``, ``correct_top5``, ``loss``, ``images``,
        ``skipped``, ``seconds``, ``img_per_s``, then the subset and ReaL figures when there are any."""
        plain = {key: getattr(self, key) for key in ("top1", "top5", "correct_top1", "correct_top5", "loss",
                                                     "images", "skipped", "seconds", "img_per_s")}
        return {**plain, **self.subset, **self.real}


class ClassificationTally:
    """Running sums of one evaluation, kept on the device so that a batch costs no synchronisation.

    With ``class_subset`` the figures are taken over those outputs only (the other logits masked); the
    top-1 / top-5 over all outputs are kept too. Targets of shape (B, 1 + k) carry ReaL labels after
    the label (padded with -1), counted in the ``real_`` sums over the images that have any.
    """

    _SUMS = ("correct_top1", "correct_top5", "all_top1", "all_top5", "real_top1", "real_top5", "real_images")

    def __init__(self, device: torch.device, class_subset: Sequence[int] | None = None) -> None:
        self.device = device = torch.device(device)
        for name in self._SUMS:
            setattr(self, name, torch.zeros((), dtype=torch.long, device=device))
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.images = self.skipped = 0
        self.class_subset = None if class_subset is None else torch.as_tensor(list(class_subset), device=device)
        self.has_real = False

    def _mask(self, logits: Tensor) -> Tensor:
        if self.class_subset is None:
            return logits
        masked = torch.full_like(logits, float("-inf"))
        masked[:, self.class_subset] = logits[:, self.class_subset]
        return masked

    def add(self, logits: Tensor, targets: Tensor) -> None:
        real = None
        if targets.ndim == 2:
            targets, real = targets[:, 0], targets[:, 1:]
        logits = logits.float()
        masked = self._mask(logits)
        k = min(5, logits.shape[1] if self.class_subset is None else len(self.class_subset))
        self.loss_sum += F.cross_entropy(masked, targets, reduction="sum")
        top = masked.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        self.correct_top1 += hits[:, 0].sum()
        self.correct_top5 += hits.any(dim=1).sum()
        if self.class_subset is not None:
            hits_all = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
            self.all_top1 += hits_all[:, 0].sum()
            self.all_top5 += hits_all.any(dim=1).sum()
        if real is not None:
            self._add_real(top, real)
        self.images += len(targets)

    def _add_real(self, top: Tensor, real: Tensor) -> None:
        self.has_real = True
        labelled = real[:, 0] >= 0
        real_hits = top[:, :, None].eq(real[:, None, :]).any(dim=2) & labelled[:, None]
        self.real_top1 += real_hits[:, 0].sum()
        self.real_top5 += real_hits.any(dim=1).sum()
        self.real_images += labelled.sum()

    def postfix(self) -> dict:
        return {"top1": f"{100.0 * self.correct_top1.item() / self.images:.2f}%"}

    def result(self, seconds: float, info: DistInfo | None = None) -> ClassificationScores:
        """The scores of this process's images; with ``info`` (training) the counts summed over the processes."""
        if self.images == 0:
            raise DataError(f"nothing was evaluated: the loader gave no readable image ({self.skipped} unreadable)")
        sums = {name: int(getattr(self, name).item()) for name in self._SUMS}
        images = self.images
        scores = ClassificationScores(
            top1=sums["correct_top1"] / images, top5=sums["correct_top5"] / images,
            correct_top1=sums["correct_top1"], correct_top5=sums["correct_top5"],
            loss=float(self.loss_sum.item()) / images, images=images, skipped=self.skipped, seconds=seconds,
            img_per_s=throughput(images, seconds), subset=self._subset(sums, images),
            real=self._real(sums))
        return scores if info is None else _over_processes(scores, info)

    def _subset(self, sums: dict, images: int) -> dict:
        if self.class_subset is None:
            return {}
        return dict(top1_all_classes=sums["all_top1"] / images, top5_all_classes=sums["all_top5"] / images,
                    class_subset=len(self.class_subset))

    def _real(self, sums: dict) -> dict:
        if not self.has_real:
            return {}
        labelled = sums["real_images"]
        return dict(real_top1=sums["real_top1"] / labelled if labelled else None,
                    real_top5=sums["real_top5"] / labelled if labelled else None,
                    real_correct_top1=sums["real_top1"], real_correct_top5=sums["real_top5"], real_images=labelled)


def _over_processes(scores: ClassificationScores, info: DistInfo) -> ClassificationScores:
    """``scores`` of one process's shard made those of every process's (the counts and the loss summed)."""
    top1, top5, loss, images = all_reduce_sum(
        [scores.correct_top1, scores.correct_top5, scores.loss * scores.images, scores.images], info)
    return ClassificationScores(top1=top1 / images, top5=top5 / images, correct_top1=int(top1),
                                correct_top5=int(top5), loss=loss / images, images=int(images),
                                skipped=scores.skipped, seconds=scores.seconds, img_per_s=scores.img_per_s)


@dataclass(frozen=True)
class ClassificationReport:
    """What ``validate`` reports of a multiclass model: top-1 / top-5 in percent, the class mapping, and the
    figures over every class (a subset of the classes was scored) and of the ReaL labels when there are any."""

    facts: RunFacts
    top1: float
    top5: float
    ground_truth: str | None = None
    class_mapping: dict | None = None
    masked_classes: int | None = None  # the classes of the data, when fewer than the model's were scored
    subset: dict = field(default_factory=dict)
    real: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """What ``tresnet validate --json`` writes."""
        return {**self.facts.head(), "ground_truth": self.ground_truth, "class_mapping": self.class_mapping,
                "top1": self.top1, "top5": self.top5, **self.subset, **self.real, "accuracy_unit": "percent",
                **self.facts.tail()}

    def lines(self, published: str | None = None) -> list[str]:
        """The figures as ``tresnet validate`` prints them (``published``: the published top-1 to compare)."""
        over = f" over the {self.masked_classes} classes of the data" if self.masked_classes else ""
        out = [f"top-1 {self.top1:.3f}%  top-5 {self.top5:.3f}%{over}  {self.facts.counts()}"]
        if self.subset:
            out.append(f"over all {self.facts.num_classes} classes: top-1 {self.subset['top1_all_classes']:.3f}%  "
                       f"top-5 {self.subset['top5_all_classes']:.3f}%")
        if self.real:
            real = ("no image has a ReaL label" if self.real["real_top1"] is None else
                    f"top-1 {self.real['real_top1']:.3f}%  top-5 {self.real['real_top5']:.3f}%")
            out.append(f"ReaL {real}  ({self.real['real_images']} images with a ReaL label)")
        if published is not None and self.facts.checkpoint is not None and self.facts.num_classes == 1000:
            out.append(f"published top-1 of {self.facts.model}: {published}")
        return out


class Classification(Task):
    """One class per image: cross-entropy (with label smoothing) to train, softmax probabilities, top-1."""

    name = MULTICLASS
    metric = "top1"
    metric_title = "top-1"
    validation_loss = "cross-entropy"
    losses = ("ce",)
    columns = ("val_top1", "val_top5", "ema_top1", "ema_top5")
    maps_classes = True

    def random_targets(self, batch: int, num_outputs: int, generator: torch.Generator | None = None, *,
                       img_size: int = 64) -> Tensor:
        return torch.randint(0, num_outputs, (batch,), generator=generator)

    def create_loss(self, name: str | None, options: LossOptions) -> nn.Module:
        self.check_loss(name)
        return nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)

    def training_loss_title(self, loss: str) -> str | None:
        return None  # the same cross-entropy as validation's (with label smoothing): one panel

    def describe(self, loss: str) -> str:
        return ""

    def divergence(self, student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
        """``T^2 KL(softmax(t / T) || softmax(s / T))`` summed over the classes, averaged over the images."""
        s = student_logits.float() / temperature
        t = teacher_logits.detach().float() / temperature
        kl = F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True)
        return kl * temperature ** 2

    def probabilities(self, logits: Tensor) -> Tensor:
        return logits.float().softmax(dim=1)

    def logits_of(self, probabilities: Tensor) -> Tensor:
        return probabilities.clamp_min(1e-30).log()

    def tally(self, device: torch.device, *, threshold: float = DEFAULT_THRESHOLD,
              class_subset: Sequence[int] | None = None, data: Any = None) -> ClassificationTally:
        return ClassificationTally(device, class_subset)

    def row(self, val: ClassificationScores, ema: ClassificationScores | None) -> dict[str, Any]:
        return {"val_top1": val.top1, "val_top5": val.top5, "ema_top1": ema.top1 if ema else None,
                "ema_top5": ema.top5 if ema else None}

    def default_labels(self, num_classes: int) -> tuple[list[str] | None, list[str] | None]:
        if num_classes == IMAGENET_NUM_CLASSES:
            return list(imagenet_class_names()), list(imagenet_synsets())
        return None, None

    def report(self, run: Any, scores: ClassificationScores) -> ClassificationReport:
        mapping = run.class_mapping
        subset = {key: 100.0 * scores.subset[key] for key in ("top1_all_classes", "top5_all_classes")
                  if key in scores.subset}
        real = {}
        if run.real_labels is not None:
            real = dict(real_labels=run.real_labels, real_top1=percent(scores.real["real_top1"]),
                        real_top5=percent(scores.real["real_top5"]), real_images=scores.real["real_images"])
        ground_truth = getattr(run.dataset, "ground_truth", None)
        return ClassificationReport(
            RunFacts.of(run, scores), top1=100.0 * scores.top1, top5=100.0 * scores.top5,
            ground_truth=None if ground_truth is None else str(ground_truth),
            class_mapping=mapping.to_dict() if mapping is not None else None,
            masked_classes=len(mapping.covered) if mapping is not None and mapping.masked else None,
            subset=subset, real=real)

    def answers(self, names: list[str], logits: Tensor, labels: list[str], synsets: Sequence[str] | None, *,
                topk: int, threshold: float) -> list[Prediction]:
        probs = self.probabilities(logits)
        top_probs, top_indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [Prediction(name, [_score(i, p, labels, synsets) for p, i in zip(p_row, i_row, strict=True)])
                for name, p_row, i_row in zip(names, top_probs.tolist(), top_indices.tolist(), strict=True)]

    def failure(self, name: str, message: str) -> Prediction:
        return Prediction(name, error=message)


def _score(index: int, prob: float, labels: list[str], synsets: Sequence[str] | None) -> ClassScore:
    return ClassScore(index, labels[index], prob, synsets[index] if synsets is not None else None)


TASK = Classification()

__all__ = ["MULTICLASS", "TASK", "Classification", "ClassificationReport", "ClassificationScores",
           "ClassificationTally"]

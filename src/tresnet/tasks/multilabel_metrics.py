"""Multi-label metrics: average precision per class and its mean (mAP), and the threshold metrics of the
ML-GCN convention (CP, CR, CF1 per class; OP, OR, OF1 over all labels). Every function returns fractions
in [0, 1]; reports for users turn them into percent.

A target counts as positive when it is >= 0.5 (multi-hot targets are 0 or 1). Scores are logits or
probabilities: average precision depends on their order only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tresnet.collectives import DistInfo, all_gather_rows
from tresnet.errors import DataError
from tresnet.tasks.base import DEFAULT_THRESHOLD, check_threshold

THRESHOLD_METRICS = ("cp", "cr", "cf1", "op", "or", "of1")


def _check_pair(scores: Tensor, targets: Tensor) -> None:
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise DataError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be "
                        "(images, classes) of one shape")
    if scores.shape[0] == 0:
        raise DataError("no images to measure: the scores and targets have 0 rows")


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Non-interpolated average precision of each class: ``(N, C)`` scores and targets -> ``(C,)`` float64.

    Per class, images ranked by decreasing score; AP = sum over thresholds of (recall gained) x (precision at
    that threshold). Equal scores form ONE threshold (precision read after the whole group), exactly as
    scikit-learn's ``average_precision_score``; the ASL / ML-Decoder evaluation code breaks ties by its sort
    instead, which differs only when scores tie. NaN for a class without positives. Raises
    :class:`DataError` when the shapes differ, are not 2-D, or have no rows.
    """
    _check_pair(scores, targets)
    scores = scores.detach().to("cpu", torch.float64)
    positive = (targets.detach().to("cpu") >= 0.5).to(torch.float64)
    num_images = scores.shape[0]
    sorted_scores, order = torch.sort(scores, dim=0, descending=True, stable=True)
    hits = torch.gather(positive, 0, order)
    true_pos = hits.cumsum(0)
    ranks = torch.arange(1, num_images + 1, dtype=torch.float64).unsqueeze(1)
    precision = true_pos / ranks
    # The last row of each group of equal scores; every row reads the precision at its group's last row.
    is_last = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_last[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    row = torch.arange(num_images).unsqueeze(1).expand_as(sorted_scores)
    last_row = torch.where(is_last, row, torch.full_like(row, num_images))
    group_end = torch.flip(torch.cummin(torch.flip(last_row, [0]), dim=0).values, [0])
    precision_at_group_end = torch.gather(precision, 0, group_end)
    num_pos = positive.sum(0)
    ap = (hits * precision_at_group_end).sum(0) / num_pos
    return torch.where(num_pos > 0, ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """mAP as a fraction: the mean of :func:`average_precision` over the classes with at least one positive.
    Raises :class:`DataError` when no class has a positive (or for bad shapes, as :func:`average_precision`)."""
    return _mean_over_present(average_precision(scores, targets))


def _mean_over_present(ap: Tensor) -> float:
    present = ~torch.isnan(ap)
    if not present.any():
        raise DataError(f"no class has a positive label among the {ap.numel()} classes: mAP is undefined; "
                        "check the targets (annotations) of this data")
    return ap[present].mean().item()


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    defined = den > 0
    return torch.where(defined, num / torch.where(defined, den, torch.ones_like(den)), torch.zeros_like(num))


def threshold_metrics(probs: Tensor, targets: Tensor, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """CP, CR, CF1, OP, OR, OF1 (ML-GCN convention) as fractions: ``{"cp", "cr", "cf1", "op", "or", "of1"}``.

    A label is predicted when its probability is strictly greater than ``threshold`` (``prob > threshold``; a
    probability equal to it is not a prediction). CP / CR: the mean over ALL classes of each class's
    precision / recall, 0 for a class where it is undefined (scikit-learn's ``precision_score`` /
    ``recall_score`` with ``average="macro", zero_division=0``); CF1 = 2 CP CR / (CP + CR). OP / OR / OF1:
    precision, recall, F1 over all (image, class) pairs (scikit-learn's ``average="micro"``). 0 wherever a
    denominator is 0. Raises :class:`DataError` for bad shapes, :class:`ConfigError` for a threshold outside
    (0, 1).
    """
    _check_pair(probs, targets)
    check_threshold(threshold)
    predicted = (probs.detach().to("cpu", torch.float64) > threshold).to(torch.float64)
    positive = (targets.detach().to("cpu") >= 0.5).to(torch.float64)
    true_pos = (predicted * positive).sum(0)
    num_predicted, num_positive = predicted.sum(0), positive.sum(0)
    cp = _ratio(true_pos, num_predicted).mean()
    cr = _ratio(true_pos, num_positive).mean()
    op = _ratio(true_pos.sum(), num_predicted.sum())
    recall_overall = _ratio(true_pos.sum(), num_positive.sum())
    values = {"cp": cp, "cr": cr, "cf1": _ratio(2 * cp * cr, cp + cr), "op": op, "or": recall_overall,
              "of1": _ratio(2 * op * recall_overall, op + recall_overall)}
    return {key: value.item() for key, value in values.items()}


def multilabel_metrics(logits: Tensor, targets: Tensor, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Every multi-label metric of ``(N, C)`` logits against multi-hot targets, as fractions:
    ``{"map", "ap_per_class", "cp", "cr", "cf1", "op", "or", "of1", "threshold", "num_classes",
    "classes_with_positives"}``; ``ap_per_class`` is a list with ``None`` for classes without positives.

    AP ranks the logits themselves (the sigmoid keeps their order, but in float32 it would tie saturated
    scores); the threshold metrics use ``sigmoid(logits)`` in float64. Raises :class:`DataError` for bad
    shapes or when no class has a positive, :class:`ConfigError` for a threshold outside (0, 1).
    """
    ap = average_precision(logits, targets)
    result = {"map": _mean_over_present(ap),
              "ap_per_class": [None if torch.isnan(v) else v.item() for v in ap]}
    result.update(threshold_metrics(torch.sigmoid(logits.detach().to(torch.float64)), targets, threshold))
    result.update(threshold=float(threshold), num_classes=int(ap.numel()),
                  classes_with_positives=int((~torch.isnan(ap)).sum()))
    return result


class MultiLabelRows:
    """Collects an evaluation loop's logits and targets for the metrics above.

    :meth:`add` keeps float32 copies on the logits' device (no synchronisation); :meth:`gather` returns
    everything on the CPU, with a distributed ``info`` every rank's rows from all ranks in rank order
    (shards may differ in length), so metrics computed from it are exact under DDP.
    """

    def __init__(self) -> None:
        self._logits: list[Tensor] = []
        self._targets: list[Tensor] = []
        self.images = 0

    def add(self, logits: Tensor, targets: Tensor) -> None:
        """Record a batch: ``(B, C)`` logits and targets (a batch with no rows is ignored). Raises
        :class:`DataError` when their shapes differ."""
        if logits.shape[0] == 0:
            return
        if logits.shape != targets.shape:
            raise DataError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape: "
                            "the model's class count must equal the data's")
        self._logits.append(logits.detach().to(dtype=torch.float32, copy=True))
        self._targets.append(targets.detach().to(device=logits.device, dtype=torch.float32, copy=True))
        self.images += logits.shape[0]

    def _local(self, parts: list[Tensor]) -> Tensor:
        return torch.cat(parts) if parts else torch.empty(0, 0)

    def gather(self, info: DistInfo | None = None) -> tuple[Tensor, Tensor]:
        """``(logits, targets)``, both ``(N, C)`` float32 on the CPU: this process's rows, or with a
        distributed ``info`` all processes' rows in rank order (a collective: every rank must call it)."""
        logits, targets = self._local(self._logits), self._local(self._targets)
        if info is not None and info.distributed:
            logits, targets = all_gather_rows(logits, info), all_gather_rows(targets, info)
        return logits.cpu(), targets.cpu()


__all__ = ["THRESHOLD_METRICS", "MultiLabelRows", "average_precision", "mean_average_precision",
           "multilabel_metrics", "threshold_metrics"]

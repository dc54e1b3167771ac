"""The evaluation loops: top-1 / top-5 accuracy of a single-label classifier (:func:`evaluate`), mAP and
the thresholded precision / recall of a multi-label one (:func:`evaluate_multilabel`), with throughput."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tresnet.engine.distributed import DistInfo, all_reduce_sum
from tresnet.engine.metrics import MultiLabelTally, multilabel_metrics
from tresnet.errors import ConfigError, DataError
from tresnet.runtime import autocast, check_precision, legacy_precision
from tresnet.tasks import DEFAULT_TASK, DEFAULT_THRESHOLD, check_task, check_threshold

_PROGRESS_EVERY = 10  # batches between updates of the running figure (each costs a device sync)


def _files_to_come(loader, limit: int | None) -> int | None:
    try:
        total = len(loader.sampler)
    except (AttributeError, TypeError):
        return None
    return min(total, limit) if limit is not None else total


def _precision_of(precision: str, amp: bool | None) -> str:
    """``precision``, or what the deprecated ``amp`` flag meant; :class:`ConfigError` when they disagree."""
    if amp is None:
        return precision
    meant = legacy_precision(bool(amp), stacklevel=5)
    if precision not in ("fp32", meant):
        raise ConfigError(f"evaluate(amp={amp}, precision={precision!r}) disagree: give precision only")
    return meant


def resolve_task(model: nn.Module, task: str | None = None) -> str:
    """``task``, else the model's (``pretrained_cfg["task"]``, from its checkpoint), else ``multiclass``.

    Raises :class:`ConfigError` for a name not in :data:`tresnet.tasks.TASKS`, and for a ``task`` other than
    the one the model's checkpoint records (a softmax classifier read as sigmoids, or the reverse, gives
    numbers that mean nothing).
    """
    info = getattr(model, "checkpoint_info", None)
    recorded = info.metadata.get("task") if info is not None else None
    if task is None:
        task = getattr(model, "pretrained_cfg", {}).get("task") or DEFAULT_TASK
    elif recorded and check_task(task) != recorded:
        raise ConfigError(f"checkpoint {info.path} holds a {recorded} model, and --task is {task}: leave --task "
                          f"out (or use a {task} checkpoint)")
    return check_task(task)


def model_threshold(model: nn.Module) -> float:
    """The decision threshold a multi-label model's checkpoint records, else :data:`~tresnet.tasks.DEFAULT_THRESHOLD`."""
    return float((getattr(model, "pretrained_cfg", None) or {}).get("threshold") or DEFAULT_THRESHOLD)


class _Tally:
    """Running sums of one evaluation, kept on the device so that a batch costs no synchronisation.

    With ``class_subset`` the figures are taken over those outputs only (the other logits masked); the
    top-1 / top-5 over all outputs are kept too. Targets of shape (B, 1 + k) carry ReaL labels after
    the label (padded with -1), counted in the ``real_`` sums over the images that have any.
    """

    _SUMS = ("correct_top1", "correct_top5", "all_top1", "all_top5", "real_top1", "real_top5", "real_images")

    def __init__(self, device: torch.device, class_subset: Sequence[int] | None = None) -> None:
        for name in self._SUMS:
            setattr(self, name, torch.zeros((), dtype=torch.long, device=device))
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.images = self.skipped = 0
        self.class_subset = None if class_subset is None else torch.as_tensor(list(class_subset), device=device)
        self.has_real = False

    def _mask(self, logits: torch.Tensor) -> torch.Tensor:
        if self.class_subset is None:
            return logits
        masked = torch.full_like(logits, float("-inf"))
        masked[:, self.class_subset] = logits[:, self.class_subset]
        return masked

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
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
            self.has_real = True
            labelled = real[:, 0] >= 0
            real_hits = top[:, :, None].eq(real[:, None, :]).any(dim=2) & labelled[:, None]
            self.real_top1 += real_hits[:, 0].sum()
            self.real_top5 += real_hits.any(dim=1).sum()
            self.real_images += labelled.sum()
        self.images += len(targets)

    def postfix(self) -> dict:
        return {"top1": f"{100.0 * self.correct_top1.item() / self.images:.2f}%"}

    def result(self, seconds: float) -> dict:
        if self.images == 0:
            raise DataError(f"nothing was evaluated: the loader gave no readable image ({self.skipped} unreadable)")
        sums = {name: int(getattr(self, name).item()) for name in self._SUMS}
        images = self.images
        result = dict(top1=sums["correct_top1"] / images, top5=sums["correct_top5"] / images,
                      correct_top1=sums["correct_top1"], correct_top5=sums["correct_top5"],
                      loss=float(self.loss_sum.item()) / images, images=images, skipped=self.skipped,
                      seconds=seconds, img_per_s=images / seconds if seconds > 0 else float("inf"))
        if self.class_subset is not None:
            result.update(top1_all_classes=sums["all_top1"] / images, top5_all_classes=sums["all_top5"] / images,
                          class_subset=len(self.class_subset))
        if self.has_real:
            labelled = sums["real_images"]
            result.update(real_top1=sums["real_top1"] / labelled if labelled else None,
                          real_top5=sums["real_top5"] / labelled if labelled else None,
                          real_correct_top1=sums["real_top1"], real_correct_top5=sums["real_top5"],
                          real_images=labelled)
        return result


class _MultiLabelTally:
    """Every image's logits and targets (gathered over the ranks at the end: mAP needs them all) and the
    summed binary cross-entropy, kept on the device."""

    def __init__(self, device: torch.device) -> None:
        self.rows = MultiLabelTally()
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.elements = self.skipped = 0

    @property
    def images(self) -> int:
        return self.rows.images

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.rows.add(logits, targets)  # first: it names a class count that differs from the data's
        # float64: the sum then hardly depends on how the images were batched or sharded
        self.loss_sum += F.binary_cross_entropy_with_logits(logits.double(), targets.double(), reduction="sum")
        self.elements += targets.numel()

    def postfix(self) -> dict:
        return {"loss": f"{self.loss_sum.item() / self.elements:.4f}"}

    def result(self, seconds: float, threshold: float, info: DistInfo | None) -> dict:
        logits, targets = self.rows.gather(info)
        loss_sum, elements, skipped = self.loss_sum.item(), self.elements, self.skipped
        if info is not None:
            loss_sum, elements, skipped = all_reduce_sum([loss_sum, elements, skipped], info)
        images = len(logits)
        if images == 0:
            raise DataError(f"nothing was evaluated: the loader gave no readable image ({int(skipped)} unreadable)")
        metrics = multilabel_metrics(logits, targets, threshold)
        return dict(metrics, loss=loss_sum / elements, images=images, skipped=int(skipped), seconds=seconds,
                    img_per_s=images / seconds if seconds > 0 else float("inf"))


def _run_batches(model: nn.Module, loader, device: torch.device, tally, bar, *, channels_last: bool,
                 limit: int | None, progress: bool) -> None:
    """Feed ``loader`` through ``model`` into ``tally`` until it ends or ``limit`` images were evaluated."""
    for index, batch in enumerate(loader):
        inputs, targets = batch[0], batch[1]
        skipped = len(getattr(batch, "skipped", ()))
        tally.skipped += skipped
        if limit is not None:
            inputs, targets = inputs[: limit - tally.images], targets[: limit - tally.images]
        if len(targets):
            inputs = inputs.to(device, non_blocking=True)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            tally.add(model(inputs), targets.to(device, non_blocking=True))
        bar.update(len(targets) + skipped)
        if progress and tally.images and index % _PROGRESS_EVERY == 0:
            bar.set_postfix(tally.postfix())
        if limit is not None and tally.images >= limit:
            break


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: str | torch.device, *, precision: str = "fp32",
             channels_last: bool = False, limit: int | None = None, progress: bool = True, desc: str = "eval",
             class_subset: Sequence[int] | None = None, amp: bool | None = None) -> dict:
    """Run ``model`` over ``loader`` (batches of ``(images, targets)``) and measure its accuracy.

    ``model`` must already sit on ``device`` (in channels-last memory too if wanted; the inputs are
    converted with ``channels_last``); it is put in eval mode and its mode restored afterwards.
    ``precision`` is one of :data:`tresnet.runtime.PRECISIONS` (``amp``: float16 on CUDA, bfloat16 on
    the CPU); ``amp=True`` is its deprecated spelling of ``precision="amp"``. ``limit`` stops after that
    many images. Batches may carry ``skipped`` (unreadable files, see :mod:`tresnet.data.datasets`);
    they are counted, not evaluated. ``class_subset``: the model outputs the data covers (a subset such as
    ImageNet-A's 200 classes); the prediction is then taken over those only, the other logits masked.
    Targets of shape (B, 1 + k), the label then the image's ReaL labels padded with -1
    (:class:`~tresnet.data.datasets.RealLabelled`), also give the ReaL figures.

    Returns a dict: ``top1``, ``top5`` (fractions in [0, 1]; top-5 counts a hit among the top
    ``min(5, classes)``), ``correct_top1``, ``correct_top5``, ``loss`` (mean cross-entropy),
    ``images``, ``skipped``, ``seconds`` (wall time, loading included), ``img_per_s``. With
    ``class_subset`` also ``top1_all_classes``, ``top5_all_classes`` (the prediction over every output)
    and ``class_subset`` (its size); with ReaL labels ``real_top1``, ``real_top5`` (a hit is any ReaL
    label; over the ``real_images`` that have one, None when none has), ``real_correct_top1``,
    ``real_correct_top5``.
    Raises :class:`DataError` when the loader yields no image at all, :class:`ConfigError` for an
    unknown precision, and ValueError for a ``limit`` below 1.
    """
    device = torch.device(device)
    precision = _precision_of(precision, amp)
    tally = _Tally(device, class_subset)
    seconds = _run(model, loader, device, tally, precision=precision, channels_last=channels_last, limit=limit,
                   progress=progress, desc=desc)
    return tally.result(seconds)


def _run(model: nn.Module, loader, device: torch.device, tally, *, precision: str, channels_last: bool,
         limit: int | None, progress: bool, desc: str) -> float:
    """Feed ``loader`` through ``model`` (in eval mode, its mode restored) into ``tally``; the wall time."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    was_training = model.training
    model.eval()
    bar = tqdm(total=_files_to_come(loader, limit), desc=desc, unit="img", disable=not progress,
               dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    try:
        with autocast(precision, device):
            _run_batches(model, loader, device, tally, bar, channels_last=channels_last, limit=limit,
                         progress=progress)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        bar.close()
        model.train(was_training)
    return time.perf_counter() - start


@torch.no_grad()
def evaluate_multilabel(model: nn.Module, loader, device: str | torch.device, *, precision: str = "fp32",
                        channels_last: bool = False, limit: int | None = None, progress: bool = True,
                        desc: str = "eval", threshold: float = DEFAULT_THRESHOLD,
                        info: DistInfo | None = None) -> dict:
    """Run a multi-label ``model`` over ``loader`` (batches of ``(images, multi-hot targets (B, C))``) and
    measure its mAP and thresholded precision / recall (:func:`tresnet.engine.metrics.multilabel_metrics`).

    Model, device, ``precision``, ``channels_last``, ``limit`` and unreadable files as :func:`evaluate`.
    A label counts as predicted when its sigmoid probability exceeds ``threshold``. With a distributed
    ``info`` every process evaluates its shard and the logits of all shards are gathered, so that every
    process returns the exact figures over the whole set (``limit`` then applies per process).

    Returns a dict of fractions in [0, 1]: ``map``, ``ap_per_class`` (None for a class without positives),
    ``cp``, ``cr``, ``cf1``, ``op``, ``or``, ``of1``; and ``threshold``, ``num_classes``,
    ``classes_with_positives``, ``loss`` (mean binary cross-entropy with logits per (image, class)),
    ``images``, ``skipped``, ``seconds`` (wall time of the loop, loading included), ``img_per_s``.
    Raises :class:`DataError` when no image was evaluated or no class has a positive,
    :class:`ConfigError` for an unknown precision or a threshold outside (0, 1), ValueError for a
    ``limit`` below 1.
    """
    device = torch.device(device)
    check_precision(precision)
    threshold = check_threshold(threshold)
    tally = _MultiLabelTally(device)
    seconds = _run(model, loader, device, tally, precision=precision, channels_last=channels_last, limit=limit,
                   progress=progress, desc=desc)
    return tally.result(seconds, threshold, info)


__all__ = ["evaluate", "evaluate_multilabel", "resolve_task"]

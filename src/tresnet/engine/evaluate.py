"""The evaluation loop: top-1 / top-5 accuracy and throughput of a classifier over a loader."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tresnet.errors import ConfigError, DataError
from tresnet.runtime import autocast, legacy_precision

_PROGRESS_EVERY = 10  # batches between updates of the running top-1 (each costs a device sync)


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


class _Tally:
    """Running sums of one evaluation, kept on the device so that a batch costs no synchronisation."""

    def __init__(self, device: torch.device) -> None:
        self.correct_top1 = torch.zeros((), dtype=torch.long, device=device)
        self.correct_top5 = torch.zeros((), dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.images = self.skipped = 0

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.float()
        self.loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
        self.correct_top1 += hits[:, 0].sum()
        self.correct_top5 += hits.any(dim=1).sum()
        self.images += len(targets)

    def result(self, seconds: float) -> dict:
        if self.images == 0:
            raise DataError(f"nothing was evaluated: the loader gave no readable image ({self.skipped} unreadable)")
        top1, top5, images = int(self.correct_top1.item()), int(self.correct_top5.item()), self.images
        return dict(top1=top1 / images, top5=top5 / images, correct_top1=top1, correct_top5=top5,
                    loss=float(self.loss_sum.item()) / images, images=images, skipped=self.skipped,
                    seconds=seconds, img_per_s=images / seconds if seconds > 0 else float("inf"))


def _run_batches(model: nn.Module, loader, device: torch.device, tally: _Tally, bar, *, channels_last: bool,
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
            bar.set_postfix(top1=f"{100.0 * tally.correct_top1.item() / tally.images:.2f}%")
        if limit is not None and tally.images >= limit:
            break


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: str | torch.device, *, precision: str = "fp32",
             channels_last: bool = False, limit: int | None = None, progress: bool = True, desc: str = "eval",
             amp: bool | None = None) -> dict:
    """Run ``model`` over ``loader`` (batches of ``(images, targets)``) and measure its accuracy.

    ``model`` must already sit on ``device`` (in channels-last memory too if wanted; the inputs are
    converted with ``channels_last``); it is put in eval mode and its mode restored afterwards.
    ``precision`` is one of :data:`tresnet.runtime.PRECISIONS` (``amp``: float16 on CUDA, bfloat16 on
    the CPU); ``amp=True`` is its deprecated spelling of ``precision="amp"``. ``limit`` stops after that
    many images. Batches may carry ``skipped`` (unreadable files, see :mod:`tresnet.data.datasets`);
    they are counted, not evaluated.

    Returns a dict: ``top1``, ``top5`` (fractions in [0, 1]; top-5 counts a hit among the top
    ``min(5, num_classes)``), ``correct_top1``, ``correct_top5``, ``loss`` (mean cross-entropy),
    ``images``, ``skipped``, ``seconds`` (wall time, loading included), ``img_per_s``.
    Raises :class:`DataError` when the loader yields no image at all, :class:`ConfigError` for an
    unknown precision, and ValueError for a ``limit`` below 1.
    """
    device = torch.device(device)
    precision = _precision_of(precision, amp)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    was_training = model.training
    model.eval()
    tally = _Tally(device)
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
    return tally.result(time.perf_counter() - start)


__all__ = ["evaluate"]

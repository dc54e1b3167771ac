"""The evaluation loop: top-1 / top-5 accuracy and throughput of a classifier over a loader."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tresnet.errors import DataError

_PROGRESS_EVERY = 10  # batches between updates of the running top-1 (each costs a device sync)


def _autocast_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _files_to_come(loader) -> int | None:
    try:
        return len(loader.sampler)
    except (AttributeError, TypeError):
        return None


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: str | torch.device, amp: bool = False,
             channels_last: bool = False, limit: int | None = None, progress: bool = True,
             *, desc: str = "eval") -> dict:
    """Run ``model`` over ``loader`` (batches of ``(images, targets)``) and measure its accuracy.

    ``model`` must already sit on ``device`` (in channels-last memory too if wanted; the inputs are
    converted with ``channels_last``); it is put in eval mode and its mode restored afterwards.
    ``amp`` runs under autocast (float16 on CUDA, bfloat16 on CPU). ``limit`` stops after that many
    images. Batches may carry ``skipped`` (unreadable files, see :mod:`tresnet.data.datasets`); they
    are counted, not evaluated.

    Returns a dict: ``top1``, ``top5`` (fractions in [0, 1]; top-5 counts a hit among the top
    ``min(5, num_classes)``), ``correct_top1``, ``correct_top5``, ``loss`` (mean cross-entropy),
    ``images``, ``skipped``, ``seconds`` (wall time, loading included), ``img_per_s``.
    Raises :class:`DataError` when the loader yields no image at all.
    """
    device = torch.device(device)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    was_training = model.training
    model.eval()
    correct_top1 = torch.zeros((), dtype=torch.long, device=device)
    correct_top5 = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    images = skipped = 0
    total = _files_to_come(loader)
    if limit is not None and total is not None:
        total = min(total, limit)
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    try:
        with torch.autocast(device.type, dtype=_autocast_dtype(device), enabled=amp):
            for index, batch in enumerate(loader):
                inputs, targets = batch[0], batch[1]
                skipped += len(getattr(batch, "skipped", ()))
                if limit is not None:
                    inputs, targets = inputs[: limit - images], targets[: limit - images]
                count = len(targets)
                if count:
                    inputs = inputs.to(device, non_blocking=True)
                    if channels_last:
                        inputs = inputs.contiguous(memory_format=torch.channels_last)
                    targets = targets.to(device, non_blocking=True)
                    logits = model(inputs).float()
                    loss_sum += F.cross_entropy(logits, targets, reduction="sum")
                    hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
                    correct_top1 += hits[:, 0].sum()
                    correct_top5 += hits.any(dim=1).sum()
                    images += count
                bar.update(count + len(getattr(batch, "skipped", ())))
                if progress and images and index % _PROGRESS_EVERY == 0:
                    bar.set_postfix(top1=f"{100.0 * correct_top1.item() / images:.2f}%")
                if limit is not None and images >= limit:
                    break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - start
    if images == 0:
        raise DataError(f"nothing was evaluated: the loader gave no readable image ({skipped} unreadable)")
    top1, top5 = int(correct_top1.item()), int(correct_top5.item())
    return dict(
        top1=top1 / images,
        top5=top5 / images,
        correct_top1=top1,
        correct_top5=top5,
        loss=float(loss_sum.item()) / images,
        images=images,
        skipped=skipped,
        seconds=seconds,
        img_per_s=images / seconds if seconds > 0 else float("inf"),
    )


__all__ = ["evaluate"]

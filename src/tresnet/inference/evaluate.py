"""The evaluation loop: a model run over a loader into a task's tally (:meth:`tresnet.tasks.Task.tally`), which
gives the task's scores (top-1 / top-5 for ``multiclass``, mAP and the thresholded precision / recall for
``multilabel``), with throughput.

    from tresnet.tasks import get_task

    scores = evaluate(model, loader, get_task("multiclass").tally(device))
    print(scores.top1, scores.img_per_s)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from tresnet.collectives import DistInfo
from tresnet.errors import ConfigError
from tresnet.runtime import autocast, check_precision
from tresnet.tasks import DEFAULT_TASK, DEFAULT_THRESHOLD, Scores, Tally, Task, check_threshold, get_task

_PROGRESS_EVERY = 10  # batches between updates of the running figure (each costs a device sync)


def _files_to_come(loader, limit: int | None) -> int | None:
    try:
        total = len(loader.sampler)
    except (AttributeError, TypeError):
        return None
    return min(total, limit) if limit is not None else total


def resolve_task(model: nn.Module, task: str | Task | None = None) -> Task:
    """The task ``task`` names, else the model's (``pretrained_cfg["task"]``, from its checkpoint), else the
    default task (``multiclass``).

    Raises :class:`ConfigError` for an unregistered name, and for a ``task`` other than the one the model's
    checkpoint records (a softmax classifier read as sigmoids, or the reverse, gives numbers that mean nothing).
    """
    info = getattr(model, "checkpoint_info", None)
    recorded = info.metadata.get("task") if info is not None else None
    if task is None:
        return get_task(getattr(model, "pretrained_cfg", {}).get("task") or DEFAULT_TASK)
    chosen = get_task(task)
    if info is not None and recorded and chosen.name != recorded:
        raise ConfigError(f"checkpoint {info.path} holds a {recorded} model, and --task is {chosen.name}: leave "
                          f"--task out (or use a {chosen.name} checkpoint)")
    return chosen


@dataclass(frozen=True)
class Scoring:
    """How a model's outputs are read: its ``task`` (None: the checkpoint's, else ``multiclass``), the decision
    ``threshold`` of a multi-label model (None: the checkpoint's, else 0.5), a ``class_map`` file naming or
    mapping outputs, and ImageNet-ReaL ``real_labels`` scored beside the labels (``validate`` only)."""

    task: str | None = None
    threshold: float | None = None
    class_map: str | os.PathLike | None = None
    real_labels: str | os.PathLike | None = None

    def resolve(self, model: nn.Module) -> tuple[Task, float]:
        """The task and threshold for ``model``; :class:`ConfigError` as :func:`resolve_task`, or for a threshold
        outside (0, 1)."""
        task = resolve_task(model, self.task)
        return task, check_threshold(model_threshold(model) if self.threshold is None else self.threshold)


def model_threshold(model: nn.Module) -> float:
    """The decision threshold a multi-label model's checkpoint records, else :data:`~tresnet.tasks.DEFAULT_THRESHOLD`."""
    return float((getattr(model, "pretrained_cfg", None) or {}).get("threshold") or DEFAULT_THRESHOLD)


_TENSOR_BATCHES = Task()  # how a batch of tensors moves, when no task is named


def _run_batches(model: nn.Module, loader, device: torch.device, tally, bar, *, channels_last: bool,
                 limit: int | None, progress: bool, task: Task) -> None:
    """Feed ``loader`` through ``model`` into ``tally`` until it ends or ``limit`` images were evaluated."""
    for index, batch in enumerate(loader):
        inputs, targets = batch[0], batch[1]
        skipped = len(getattr(batch, "skipped", ()))
        tally.skipped += skipped
        if limit is not None:
            inputs, targets = inputs[: limit - tally.images], targets[: limit - tally.images]
        if len(targets):
            inputs, targets = task.move(inputs, targets, device, channels_last=channels_last)
            tally.add(model(inputs), targets)
        bar.update(len(targets) + skipped)
        if progress and tally.images and index % _PROGRESS_EVERY == 0:
            bar.set_postfix(tally.postfix())
        if limit is not None and tally.images >= limit:
            break


@torch.no_grad()
def evaluate(model: nn.Module, loader, tally: Tally, *, precision: str = "fp32", channels_last: bool = False,
             limit: int | None = None, progress: bool = True, desc: str = "eval", info: DistInfo | None = None,
             task: Task | None = None) -> Scores:
    """Run ``model`` over ``loader`` (batches of ``(images, targets)``) into ``tally`` and return its scores.

    ``tally`` is a task's (:meth:`tresnet.tasks.Task.tally`: its device, and the task's options such as a
    multi-label threshold or a multiclass class subset). ``model`` must already sit on that device (in
    channels-last memory too if wanted; the inputs are converted with ``channels_last``); it is put in eval mode
    and its mode restored afterwards. ``precision`` is one of :data:`tresnet.runtime.PRECISIONS` (``amp``:
    float16 on CUDA, bfloat16 on the CPU). ``limit`` stops after that many images (per process). Batches may
    carry ``skipped`` (unreadable files, see :mod:`tresnet.data.datasets`); they are counted, not evaluated. With
    a distributed ``info`` the scores are those of every process's images (every process must call it). ``task``
    moves each batch to the device (:meth:`tresnet.tasks.Task.move`; None: a batch of tensors).

    Raises :class:`DataError` when the loader yields no image at all, :class:`ConfigError` for an unknown
    precision, and ValueError for a ``limit`` below 1.
    """
    check_precision(precision)
    seconds = _run(model, loader, tally.device, tally, precision=precision, channels_last=channels_last,
                   limit=limit, progress=progress, desc=desc, task=task or _TENSOR_BATCHES)
    return tally.result(seconds, info)


def _run(model: nn.Module, loader, device: torch.device, tally, *, precision: str, channels_last: bool,
         limit: int | None, progress: bool, desc: str, task: Task) -> float:
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
                         progress=progress, task=task)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        bar.close()
        model.train(was_training)
    return time.perf_counter() - start


__all__ = ["Scoring", "evaluate", "model_threshold", "resolve_task"]

"""One timed step of inference or training, the device clock that times it, and the summary of the times.

Inputs are synthetic and live on the device. Training is forward, cross-entropy loss (a target of another task:
that task's targets and loss, such as a detector's random boxes and its own losses), backward and an SGD step
(momentum 0.9, weight decay 1e-4); with float16 on CUDA (``amp``, ``fp16``) a gradient scaler,
as in real fp16 training. Precisions and their autocast are :mod:`tresnet.runtime`'s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from tresnet.bench.targets import BenchTarget
from tresnet.errors import ConfigError
from tresnet.runtime import autocast, needs_grad_scaler
from tresnet.tasks import LossOptions


def synthetic_images(batch_size: int, img_size: int, device: torch.device, *, channels_last: bool = False,
                     in_chans: int = 3, seed: int = 0) -> torch.Tensor:
    """Uniform [0, 1) images of shape ``(batch_size, in_chans, img_size, img_size)`` on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, in_chans, img_size, img_size, generator=generator).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def logits_of(out) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, or the first of a tuple or list."""
    return out if isinstance(out, torch.Tensor) else out[0]


class _BenchStep:
    """What every step holds: its target, batch size, device, precision and synthetic images."""

    def __init__(self, target: BenchTarget, batch_size: int, *, device: torch.device, precision: str = "fp32",
                 channels_last: bool = False, seed: int = 0) -> None:
        self.target = target
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.images = synthetic_images(batch_size, target.img_size, device, channels_last=channels_last,
                                       seed=seed)
        if target.task is not None:  # the task's form of a batch (a detector's: a list of images)
            self.images = target.task.batch(list(self.images.unbind(0)))


class InferStep(_BenchStep):
    """One inference batch: eval mode, ``torch.inference_mode``, autocast of the precision."""

    mode = "infer"

    def prepare(self) -> None:
        """Put the module in eval mode; call before each turn (another step may have switched it)."""
        if self.target.module is not None:
            self.target.module.eval()

    def __call__(self, images: int | None = None) -> None:
        """One batch, or its first ``images`` images."""
        with torch.inference_mode(), autocast(self.precision, self.device):
            self.target.forward(self.images if images is None else self.images[:images])

    def move(self, device: torch.device) -> None:
        """Move the inputs (the runner moves the module) to ``device``."""
        self.images = _moved(self.images, device)


def _moved(images, device: torch.device):
    return [image.to(device) for image in images] if isinstance(images, list) else images.to(device)


class TrainStep(_BenchStep):
    """One training batch: forward, cross-entropy, backward, SGD step; gradients freed after the step."""

    mode = "train"

    def __init__(self, target: BenchTarget, batch_size: int, *, device: torch.device, precision: str = "fp32",
                 channels_last: bool = False, seed: int = 0, lr: float = 1e-4) -> None:
        if target.module is None or "train" not in target.modes:
            raise ConfigError(f"{target.label} cannot be trained (inference-only form); use --mode infer")
        super().__init__(target, batch_size, device=device, precision=precision, channels_last=channels_last,
                         seed=seed)
        generator = torch.Generator().manual_seed(seed + 1)
        if target.task is not None:  # the task's targets (a detector's boxes) and its loss
            targets = target.task.random_targets(batch_size, target.num_classes, generator, img_size=target.img_size)
            self.images, self.labels = target.task.move(self.images, targets, device)
            self.criterion = target.task.create_loss(None, LossOptions())
        else:
            self.labels = torch.randint(0, target.num_classes, (batch_size,), generator=generator).to(device)
        params = [p for p in target.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler(device.type) if needs_grad_scaler(precision, device) else None

    @property
    def module(self) -> nn.Module:
        """The target's module (a trainable target has one: checked when the step is made)."""
        return cast(nn.Module, self.target.module)

    def prepare(self) -> None:
        """Put the module in train mode; call before each turn (another step may have switched it)."""
        self.module.train()

    def __call__(self, images: int | None = None) -> None:
        """One step on the batch, or on its first ``images`` images (a cheap step that creates the optimizer's
        state, as the peak-memory probe does)."""
        inputs, labels = (self.images, self.labels) if images is None else (self.images[:images], self.labels[:images])
        with autocast(self.precision, self.device):
            if self.target.task is not None:
                loss = self.target.task.training_loss(self.target.forward, self.criterion, inputs, labels)
            else:
                loss = F.cross_entropy(logits_of(self.target.forward(inputs)).float(), labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def move(self, device: torch.device) -> None:
        """Move the inputs and the optimizer state (the runner moves the module) to ``device``."""
        if self.target.task is not None:
            self.images, self.labels = self.target.task.move(self.images, self.labels, device)
        else:
            self.images, self.labels = self.images.to(device), self.labels.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = value.to(device)


Step = InferStep | TrainStep


def make_step(target: BenchTarget, mode: str, batch_size: int, *, device: torch.device, precision: str = "fp32",
              channels_last: bool = False, seed: int = 0) -> Step:
    """The :class:`InferStep` or :class:`TrainStep` of ``mode`` for ``target`` at ``batch_size``, prepared."""
    cls = {"infer": InferStep, "train": TrainStep}.get(mode)
    if cls is None:
        raise ConfigError(f"bad mode {mode!r}: infer or train")
    step = cls(target, batch_size, device=device, precision=precision, channels_last=channels_last, seed=seed)
    step.prepare()
    return step


TIMERS = ("wall", "cpu")


def check_timer(timer: str, device: torch.device) -> None:
    """Raise :class:`ConfigError` unless ``timer`` is ``wall``, or ``cpu`` on the CPU device."""
    if timer not in TIMERS:
        raise ConfigError(f"bad --timer {timer!r}: wall or cpu")
    if timer == "cpu" and device.type != "cpu":
        raise ConfigError("--timer cpu (process CPU time) applies to --device cpu only")


def time_iterations(step: Callable[[], object], iters: int, device: torch.device, timer: str = "wall") -> float:
    """Seconds per call of ``step``, averaged over ``iters`` back-to-back calls.

    On CUDA the interval is measured with CUDA events after the stream is idle, so queued work is
    counted; on the CPU with ``time.perf_counter``, or with ``timer="cpu"`` as the CPU time of the
    process (``time.process_time``: the work done, whatever else the machine runs; with one thread it
    is the single-core time).
    """
    if timer == "cpu":
        start_s = time.process_time()
        for _ in range(iters):
            step()
        return (time.process_time() - start_s) / iters
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0 / iters
    start_s = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start_s) / iters


def summarize(seconds_per_batch: list[float], batch_size: int) -> dict:
    """Median images per second over the timed repetitions and their spread.

    ``img_per_s`` is ``batch_size / median(seconds)``; ``spread_pct`` is the interquartile range of the
    per-repetition images per second, in percent of the median (0 with fewer than 2 repetitions).
    """
    if not seconds_per_batch:
        raise ValueError("no timed repetition to summarize")
    rates = [batch_size / s for s in seconds_per_batch]
    median_s = statistics.median(seconds_per_batch)
    img_per_s = batch_size / median_s
    spread = 0.0
    if len(rates) >= 2:
        q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive")
        spread = 100.0 * (q3 - q1) / img_per_s
    return {"img_per_s": img_per_s, "spread_pct": spread, "ms_per_batch": 1000.0 * median_s,
            "min_img_per_s": min(rates), "max_img_per_s": max(rates)}

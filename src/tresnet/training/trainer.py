"""The training loop: recipes, transfer and high-resolution fine-tuning, exact resume, DDP.

:func:`train` runs a :class:`~tresnet.training.config.TrainConfig` and writes into ``cfg.run.output``:

- ``config.yaml``: the effective configuration (reusable with ``--config``);
- ``last.safetensors`` / ``best.safetensors``: weights in our format with the class names and the task
  (best is the model or its EMA, whichever scored higher: top-1 for multiclass, mAP for multilabel);
- ``resume.pt``: everything ``--resume`` needs (model, optimiser, scheduler, scaler, EMA, RNG states,
  epoch, step, metrics so far; when distilling, the teacher, its copied head and the projection, which
  never reach the weights files: :mod:`tresnet.training.distill`);
- ``metrics.csv``, ``tensorboard/`` (if installed), ``metrics.png`` (if matplotlib is installed);
- ``summary.json`` at the end.

Every file is replaced atomically after each epoch; ``resume.pt`` last, so a run killed at any moment
(or stopped by a full disk) restarts from a consistent epoch. Reproducibility: the data order and each
sample's augmentation derive from (seed, epoch, sample); the global RNGs (dropout, drop path, mixup) are
re-seeded from (seed, epoch, rank) at each epoch start. A resumed run thus ends with the same weights as an
uninterrupted one (bit for bit on CPU with ``deterministic``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from tqdm import tqdm

from tresnet import collectives
from tresnet.collectives import DistInfo
from tresnet.data.train_transforms import create_batch_mix
from tresnet.data.transforms import describe_normalisation
from tresnet.errors import TResNetError
from tresnet.files import write_text
from tresnet.inference.evaluate import evaluate
from tresnet.models import get_pretrained_cfg
from tresnet.runtime import autocast, check_precision, warn_if_bf16_is_emulated
from tresnet.tasks import LossOptions, Scores, get_task
from tresnet.training import distributed
from tresnet.training.config import CONFIG_FILE, TrainConfig, save_config, with_model_defaults
from tresnet.training.distill import BlendedStudent, StudentWithTeacherHead, ordinary_model
from tresnet.training.distributed import derive_seed
from tresnet.training.ema import ModelEma
from tresnet.training.model_setup import build_model_setup
from tresnet.training.optimisation import Optimisation
from tresnet.training.rng import rng_states, seed_everything, set_rng_states
from tresnet.training.run_data import LoaderOptions, build_loaders, build_train_data
from tresnet.training.run_files import (
    BEST_FILE,
    LAST_FILE,
    RESUME_FILE,
    SUMMARY_FILE,
    RunFiles,
    prepare_output,
    say,
    tensorboard_writer,
)
from tresnet.training.run_report import announce, run_summary
from tresnet.training.sections import RunSection

Callback = Callable[[str, dict], None]


class TrainingDivergedError(TResNetError):
    """The loss became NaN or infinite; the files of the last good epoch are kept."""


class _LossMeter:
    """The loss sums of an epoch, kept on the device; read (one synchronisation) once per log interval."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.pending = torch.zeros((), dtype=torch.float64, device=device)
        self.pending_steps = self.steps = self.images = 0

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.pending += loss.double()
        self.pending_steps += 1
        self.steps += 1
        self.images += images

    def settle(self) -> None:
        """Move the pending sum into the total (after it was checked)."""
        self.total += self.pending
        self.pending.zero_()
        self.pending_steps = 0


class Trainer:
    """A run composed of its parts: the data (:mod:`~tresnet.training.run_data`), the model
    (:mod:`~tresnet.training.model_setup`), the loss (the task's, or the distiller's), the optimisation
    (:class:`~tresnet.training.optimisation.Optimisation`) and the files (:class:`~tresnet.training.run_files.RunFiles`);
    it wires them into epochs of steps, evaluations and saves."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, callback: Callback | None) -> None:
        self.cfg, self.info, self.callback, self.device = cfg, info, callback, info.device
        self.task = get_task(cfg.task.name)

    def _event(self, name: str, **data) -> None:
        if self.callback is not None:
            self.callback(name, data)

    # set-up ------------------------------------------------------------------------------------------

    def build(self) -> None:
        """Every part, in an order that keeps the random streams of earlier versions."""
        cfg = self.cfg
        self.output, resume_state = prepare_output(cfg, self.info)
        check_precision(cfg.run.precision, self.device)
        warn_if_bf16_is_emulated(cfg.run.precision, self.device)
        pretrained_cfg = get_pretrained_cfg(cfg.model.name)
        self.img_size = cfg.model.img_size or int(pretrained_cfg["input_size"][-1])
        self.inputs = describe_normalisation(pretrained_cfg)
        self.data = build_train_data(cfg.data, self.task, cfg.augmentation, pretrained_cfg, self.img_size)
        loss = cfg.loss
        base_criterion = self.task.create_loss(loss.name, LossOptions(
            label_smoothing=loss.label_smoothing, gamma_neg=loss.asl_gamma_neg, gamma_pos=loss.asl_gamma_pos,
            clip=loss.asl_clip, focal_gamma=loss.focal_gamma, reduction=loss.reduction))
        self.setup = build_model_setup(cfg, self.info, self.data.class_names, self.img_size, base_criterion,
                                       resume_state)
        self.model, self.distiller = self.setup.model, self.setup.distiller
        self.loaders = build_loaders(self.data, LoaderOptions(
            cfg.optimisation.batch_size, cfg.optimisation.max_steps_per_epoch, cfg.run.seed, cfg.run.workers), self.info)
        self.optimisation = Optimisation(cfg.optimisation, cfg.run.precision, self.setup.trained, self.model,
                                         self.loaders.steps_per_epoch, self.device)
        self.criterion = self.distiller.criterion if self.distiller is not None else base_criterion
        mix = cfg.augmentation
        self.batch_mix = create_batch_mix(len(self.data.class_names), mix.mixup, mix.cutmix, mix.mix_prob)
        self.files = RunFiles(self.output, self.task, self.data.class_names)
        self.start_epoch, self.step = 0, 0
        self.history: list[dict] = []
        self.best: dict[str, Any] = {"score": -1.0, "epoch": 0, "weights": "model"}
        self.teacher_score: float | None = None
        if resume_state is not None:
            self._load_resume_state(resume_state)

    def _load_resume_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimisation.load_state_dict(state)
        set_rng_states(state["rng"])
        self.start_epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = [dict(row) for row in state["history"]]
        self.best = dict(state["best"])
        self.teacher_score = state.get("teacher_score")
        if "score" not in self.best:  # a run saved by an earlier version, which kept the top-1 only
            self.best["score"] = self.best.pop("top1")
        say(self.info, f"resuming {self.output} after epoch {self.start_epoch} (step {self.step})")

    def _resume_state(self, epoch: int) -> dict:
        return {"model": self.model.state_dict(), **self.optimisation.state_dict(), "rng": rng_states(),
                "epoch": epoch, "step": self.step, "history": self.history, "best": self.best,
                "distill": self.distiller.state_dict() if self.distiller is not None else None,
                "teacher_score": self.teacher_score}

    # one epoch ---------------------------------------------------------------------------------------

    def train_one_epoch(self, epoch: int) -> dict:
        """The optimiser steps of epoch ``epoch`` (from 0): mean loss over the processes, images, seconds."""
        cfg, info, steps = self.cfg, self.info, self.loaders.steps_per_epoch
        net = self.setup.ddp or self.setup.trained
        net.train()
        self.loaders.train_sampler.set_epoch(epoch)
        seed_everything(derive_seed(cfg.run.seed, epoch, 3, info.rank))
        meter = _LossMeter(self.device)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.optimisation.epochs}", unit="step",
                   disable=not (cfg.run.progress and info.is_main), dynamic_ncols=True, leave=False)
        start = time.perf_counter()
        try:
            for index, batch in enumerate(itertools.islice(self.loaders.train, steps)):
                meter.add(*self._train_step(net, batch))
                bar.update(1)
                if meter.pending_steps >= cfg.run.log_interval or index + 1 == steps:
                    self._check_and_show(meter, bar, epoch, time.perf_counter() - start)
                self._event("step", epoch=epoch, step=self.step, index=index, model=self.model)
        finally:
            bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        total_loss, total_steps = collectives.all_reduce_sum([meter.total.item(), float(meter.steps)], info)
        return {"train_loss": total_loss / max(total_steps, 1), "train_images": meter.images * info.world_size,
                "train_seconds": seconds}

    def _train_step(self, net: nn.Module, batch) -> tuple[torch.Tensor, int]:
        """One optimiser step (and schedule and EMA step) on ``batch``; its detached loss and image count."""
        cfg = self.cfg
        inputs, targets = batch[0], batch[1]
        if len(targets) == 0:
            raise TResNetError("a whole training batch was unreadable images: fix or remove the files reported above")
        inputs, targets = self.task.move(inputs, targets, self.device,
                                         channels_last=cfg.run.channels_last and self.batch_mix is None)
        if self.batch_mix is not None:  # mixed in the layout the batch came in, then made channels-last
            inputs, targets = self.batch_mix(inputs, targets)
            if cfg.run.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(cfg.run.precision, self.device):
            if self.distiller is not None:  # the teacher's forward is part of the step, and of its img/s
                loss = self.distiller.loss(net, inputs, targets)
            else:
                loss = self.task.training_loss(net, self.criterion, inputs, targets)
        self.optimisation.step(loss)
        self.step += 1
        return loss.detach(), len(inputs)

    def _check_and_show(self, meter: _LossMeter, bar, epoch: int, elapsed: float) -> None:
        """Stop on a NaN loss since the last check; otherwise show the loss, lr and speed on the bar."""
        seen_loss = self._check_loss(meter.pending, meter.pending_steps, epoch)
        meter.settle()
        bar.set_postfix(loss=f"{seen_loss:.4f}", lr=f"{self.optimisation.last_lr:.3g}",
                        img_s=f"{meter.images * self.info.world_size / max(elapsed, 1e-9):.0f}")

    def _check_loss(self, pending: torch.Tensor, steps: int, epoch: int) -> float:
        total, count = collectives.all_reduce_sum([pending.item(), float(steps)], self.info)
        mean = total / count
        if not math.isfinite(mean):
            last = self.history[-1]["epoch"] if self.history else None
            kept = (f"the files of epoch {last} in {self.output} are kept ({LAST_FILE}, {RESUME_FILE})"
                    if last else "no epoch had finished, so nothing was saved")
            raise TrainingDivergedError(
                f"the training loss became {mean} in epoch {epoch + 1} (step {self.step}): training stopped; "
                f"{kept}. Lower --lr, set --clip-grad, or use --precision fp32, and start a new run")
        return mean

    def evaluate(self, model: nn.Module, desc: str) -> Scores:
        """The task's scores of ``model`` over every process's share of the validation set (``score``: top-1,
        mAP...: a fraction; ``loss``; ``images``; the task's own figures)."""
        limit = self.cfg.data.max_val_images
        limit = None if limit is None else max(1, math.ceil(limit / self.info.world_size))  # per process
        tally = self.task.tally(self.device, threshold=self.cfg.task.threshold, data=self.data.val)
        return evaluate(model, self.loaders.val, tally, precision=self.cfg.run.precision,
                        channels_last=self.cfg.run.channels_last, limit=limit,
                        progress=self.cfg.run.progress and self.info.is_main, desc=desc, info=self.info, task=self.task)

    def _evaluate_blend(self) -> float | None:
        """th-kd with ``teacher_head_blend``: the score of the paper's blend of the student and teacher-head
        predictions (the student's checkpoint alone scores ``val``); None otherwise."""
        if self.distiller is None or not self.distiller.blend:
            return None
        student = cast(StudentWithTeacherHead, self.setup.trained)  # th-kd's, which the blend needs
        return self.evaluate(BlendedStudent(student, self.distiller.blend, self.task), "val blend").score

    # saving ------------------------------------------------------------------------------------------

    def _weights_metadata(self, epoch: int, score: float, weights: str) -> dict:
        # model, arch, norm, task, head and the classes are written by save_checkpoint itself; the
        # preprocessing and threshold of this run's validation, and the split of a bundled set, are the run's
        cfg, data = self.cfg, self.data
        assert data.preprocessing is not None and data.source is not None  # build_train_data sets both
        meta = {"epoch": epoch, self.task.metric: score, "weights": weights, "img_size": self.img_size,
                "precision": cfg.run.precision, "trained_on": str(cfg.data.train),
                "preprocessing": data.preprocessing.to_config(),
                **self.task.checkpoint_record(threshold=cfg.task.threshold)}
        if data.source.embedded:
            meta.update(val_split=str(cfg.data.val_split), split_seed=str(cfg.data.split_seed))
        return meta

    def _training_loss_title(self) -> str | None:
        """The training loss's name for the plot when it is not the validation loss (multiclass cross-entropy
        without distillation is): ``"ASL"``, ``"CE + th-kd"``..."""
        loss = self.cfg.loss.name or self.task.default_loss
        method = self.cfg.distillation.method
        if method is not None:
            return f"{loss.upper()} + {method}"
        return self.task.training_loss_title(loss)

    def save_epoch(self, epoch: int, row: dict, tensorboard) -> None:
        """Rank 0: weights, metrics and the resume state of a finished epoch (resume state last); raises
        :class:`~tresnet.errors.FileWriteError` as :meth:`RunFiles.write_epoch`."""
        weights = [(LAST_FILE, ordinary_model(self.model),
                    self._weights_metadata(epoch, row[f"val_{self.task.metric}"], "model"))]
        if self.best["epoch"] == epoch:
            ema = self.optimisation.ema  # the best weights are the EMA's only where there is one
            best_model = cast(ModelEma, ema).module if self.best["weights"] == "ema" else self.model
            weights.append((BEST_FILE, ordinary_model(best_model),
                            self._weights_metadata(epoch, self.best["score"], self.best["weights"])))
        self.files.write_epoch(epoch, weights, self.history, self._training_loss_title(), tensorboard,
                               lambda: self._resume_state(epoch))

    # run ---------------------------------------------------------------------------------------------

    def run(self) -> dict:
        """Build, train the remaining epochs (saving each), and write the summary."""
        session_start = time.perf_counter()
        self.build()
        if self.info.is_main:
            save_config(self.cfg, self.output / CONFIG_FILE)
            announce(self)
        if self.distiller is not None and self.teacher_score is None:
            self.teacher_score = self.evaluate(self.distiller.teacher, "val teacher").score
            say(self.info, f"teacher {self.distiller.teacher_name}: val {self.task.metric_title} "
                           f"{100 * self.teacher_score:.2f}%")
        tensorboard = tensorboard_writer(self.output, self.start_epoch + 1 if self.start_epoch else None) \
            if self.info.is_main else None
        try:
            for epoch in range(self.start_epoch, self.cfg.optimisation.epochs):
                self.run_epoch(epoch, tensorboard)
        finally:
            if tensorboard is not None:
                tensorboard.close()
        summary = run_summary(self, time.perf_counter() - session_start)
        if self.info.is_main:
            write_text(self.output / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
            metric = self.task.metric
            say(self.info, f"best val {self.task.metric_title} {100 * summary[f'best_{metric}']:.2f}% "
                           f"({summary['best_weights']} weights, epoch {summary['best_epoch']}) after "
                           f"{summary['epochs']} epochs, {summary['seconds'] / 60:.1f} min; weights in "
                           f"{self.output / BEST_FILE}")
        return summary

    def run_epoch(self, epoch: int, tensorboard) -> dict:
        """Train and evaluate epoch ``epoch`` (from 0), keep the best weights, save, report; its metrics row."""
        epoch_start = time.perf_counter()
        stats = self.train_one_epoch(epoch)
        val = self.evaluate(self.model, "val")
        ema = self.optimisation.ema
        ema_val = self.evaluate(ema.module, "val EMA") if ema is not None else None
        blend = self._evaluate_blend()
        row = {"epoch": epoch + 1, "train_loss": stats["train_loss"], "lr": self.optimisation.last_lr,
               "val_loss": val.loss, **self.task.row(val, ema_val), "val_blend": blend,
               "train_img_per_s": stats["train_images"] / max(stats["train_seconds"], 1e-9),
               "train_images": stats["train_images"], "train_seconds": stats["train_seconds"]}
        for score, weights in ((val.score, "model"), (ema_val.score if ema_val else -1.0, "ema")):
            if score > self.best["score"]:
                self.best = {"score": score, "epoch": epoch + 1, "weights": weights}
        row["epoch_seconds"] = time.perf_counter() - epoch_start
        self.history.append(row)
        if self.info.is_main:
            self.save_epoch(epoch + 1, row, tensorboard)
        collectives.barrier(self.info)
        title, metric = self.task.metric_title, self.task.metric
        ema_text = f"  EMA {title} {100 * row[f'ema_{metric}']:.2f}%" if ema_val else ""
        ema_text += f"  blend {title} {100 * blend:.2f}%" if blend is not None else ""
        say(self.info, f"epoch {epoch + 1}/{self.cfg.optimisation.epochs}  loss {row['train_loss']:.4f}  val {title} "
                       f"{100 * row[f'val_{metric}']:.2f}%{ema_text}  lr {row['lr']:.3g}  "
                       f"{row['train_img_per_s']:.0f} img/s  {row['epoch_seconds']:.1f} s")
        self._event("epoch", epoch=epoch, row=row)
        return row


@contextlib.contextmanager
def _runtime(run: RunSection, device: torch.device):
    """Thread count and deterministic algorithms for the run; the previous settings come back after."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    previous_threads = torch.get_num_threads()
    enabled = run.deterministic
    if run.threads:
        torch.set_num_threads(run.threads)
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = device.type == "cuda"
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = previous_benchmark
        torch.set_num_threads(previous_threads)


def train(cfg: TrainConfig, *, callback: Callback | None = None) -> dict:
    """Train as ``cfg`` says and return the summary (also written to ``summary.json``).

    ``callback(event, data)`` is called after every step (``"step"``: epoch (from 0), step, index in
    the epoch, model) and epoch (``"epoch"``: epoch, row); an exception it raises stops the run. Under
    ``torchrun`` this joins the process group and trains with DDP. The recipes and options are
    described in the training guide (docs/train.md).

    Raises :class:`ConfigError` (bad settings, a precision the device lacks, an output folder holding
    another run, ``resume`` where there is nothing to resume, a resumed run whose configuration differs from
    the saved one), :class:`DataError` (missing folders, no classes), :class:`CheckpointError` (an init, teacher
    or frozen-head checkpoint that is missing or of another model; a teacher of other classes or of the other
    task is a :class:`ConfigError`), :class:`TrainingDivergedError` (a NaN loss), and
    :class:`~tresnet.errors.FileWriteError` (a file that cannot be written, for want of space or permission:
    the message names the file, the cause and the checkpoints that remain intact).
    """
    cfg = with_model_defaults(cfg.validate())
    info = distributed.setup(cfg.run.device)
    try:
        with _runtime(cfg.run, info.device):
            return Trainer(cfg, info, callback).run()
    finally:
        distributed.cleanup(info)


__all__ = ["Trainer", "TrainingDivergedError", "train"]

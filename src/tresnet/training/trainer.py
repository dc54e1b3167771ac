"""The training loop: recipes, transfer and high-resolution fine-tuning, exact resume, DDP.

:func:`train` runs a :class:`~tresnet.training.config.TrainConfig` and writes into ``cfg.output``:

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
import csv
import io
import itertools
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tresnet import collectives
from tresnet.checkpoint import save_checkpoint
from tresnet.collectives import DistInfo
from tresnet.data.transforms import describe_normalisation
from tresnet.errors import ConfigError, FileWriteError, TResNetError
from tresnet.files import atomic_write, write_text
from tresnet.inference.evaluate import evaluate
from tresnet.runtime import autocast, check_precision, needs_grad_scaler, warn_if_bf16_is_emulated
from tresnet.tasks import LossOptions, Scores, Task, get_task
from tresnet.training import distributed
from tresnet.training.config import (
    CONFIG_FILE,
    TrainConfig,
    check_resume,
    save_config,
    saved_config,
    with_model_defaults,
)
from tresnet.training.distill import (
    BlendedStudent,
    create_distiller,
    frozen_head_source,
    install_frozen_head,
    install_saved_frozen_head,
    ordinary_model,
    saved_frozen_head_kind,
)
from tresnet.training.distributed import SeededSamples, ShardedEpochSampler, derive_seed
from tresnet.training.run_data import build_train_data, train_source

RESUME_FILE = "resume.pt"
LAST_FILE = "last.safetensors"
BEST_FILE = "best.safetensors"
METRICS_FILE = "metrics.csv"
PLOT_FILE = "metrics.png"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"


def metric_columns(task: Task) -> tuple[str, ...]:
    """The columns of ``metrics.csv`` for a run of ``task``: the epoch, the losses and lr, the task's own, the
    distillation blend's score and the speed."""
    return ("epoch", "train_loss", "lr", "val_loss", *task.columns, "val_blend", "train_img_per_s", "epoch_seconds")

Callback = Callable[[str, dict], None]


class TrainingDivergedError(TResNetError):
    """The loss became NaN or infinite; the files of the last good epoch are kept."""


# --- set-up helpers ----------------------------------------------------------------------------------


def _say(info: DistInfo, text: str) -> None:
    if info.is_main:
        print(text, flush=True)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """The global RNG states, in a form ``torch.load(weights_only=True)`` reads back."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    """Restore the global RNG states saved by :func:`rng_states` (CUDA's when the GPU count matches)."""
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def _default_workers(cfg: TrainConfig, info: DistInfo) -> int:
    if cfg.workers is not None:
        return cfg.workers
    if train_source(cfg).embedded:  # in-memory tensors: worker processes cost more than they save
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus // info.world_size - 1))


def _read_resume_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged file is a user-facing problem
        raise TResNetError(f"cannot read {path} to resume ({str(e).splitlines()[0][:200]}); "
                           f"delete it to start the run again") from e


def _prepare_output(cfg: TrainConfig, info: DistInfo) -> tuple[Path, dict | None]:
    """The output folder, and the resume state when resuming one that has it.

    Raises :class:`ConfigError` for an output that is a file, a folder holding a run without
    ``--resume``, and a resumed run whose configuration differs from the saved one.
    """
    output = Path(cfg.output).expanduser()
    resume_path = output / RESUME_FILE
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} is a file: pass a folder to --output")
    if not cfg.resume and resume_path.exists():
        raise ConfigError(f"output folder {output} already holds a run ({RESUME_FILE}): pass --resume to "
                          f"continue it, or choose another --output (or delete that folder)")
    if not cfg.resume:
        return output, None
    saved = saved_config(output)
    if saved is not None:
        check_resume(cfg.to_dict(), saved, output)
    if not resume_path.is_file():
        _say(info, f"--resume: nothing to resume in {output} yet; starting from the first epoch")
        return output, None
    return output, _read_resume_state(resume_path)


# --- output files ------------------------------------------------------------------------------------


def _write_metrics_csv(path: Path, history: list[dict], task: Task) -> None:
    columns = metric_columns(task)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    write_text(path, buffer.getvalue())


def metrics_figure(history: list[dict], task: str | Task = "multiclass", train_loss: str | None = None):
    """The matplotlib figure of ``metrics.png``: the losses and the validation score (the ``task``'s metric) of
    each row of ``history`` (the rows of ``metrics.csv``), on whole-epoch ticks. ``train_loss`` names the
    training loss when it is not the validation's (ASL against BCE, a distillation loss): the two then get a
    panel each, as their scales differ. Needs matplotlib (ImportError without it)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    task = get_task(task)
    metric, val_loss = task.metric, task.validation_loss
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3 if train_loss else 2, figsize=(14 if train_loss else 10, 4))
    if train_loss:
        _plot_curves(axes[0], epochs, {"train": [row["train_loss"] for row in history]}, f"training loss ({train_loss})")
        _plot_curves(axes[1], epochs, {"val": [row["val_loss"] for row in history]}, f"validation loss ({val_loss})")
    else:
        _plot_curves(axes[0], epochs, {"train (with label smoothing)": [row["train_loss"] for row in history],
                                       "val": [row["val_loss"] for row in history]}, val_loss)
    title = task.metric_title
    scores = {f"val {title}": [100 * row[f"val_{metric}"] for row in history]}
    if any(row.get(f"ema_{metric}") is not None for row in history):
        scores[f"EMA {title}"] = [100 * (row.get(f"ema_{metric}") or float("nan")) for row in history]
    _plot_curves(axes[-1], epochs, scores, f"{title} (%)")
    fig.tight_layout()
    return fig


def _write_plot(path: Path, history: list[dict], task: Task, train_loss: str | None = None) -> bool:
    """Write :func:`metrics_figure` to ``path``; False when matplotlib is not installed."""
    try:
        fig = metrics_figure(history, task, train_loss)
    except ImportError:
        return False
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return True


def _plot_curves(ax, epochs: list[int], curves: dict[str, list[float]], ylabel: str) -> None:
    """One panel of ``metrics.png``: ``curves`` (label -> a value per epoch) against whole epochs."""
    from matplotlib.ticker import MaxNLocator

    for label, values in curves.items():
        ax.plot(epochs, values, marker="o" if len(epochs) < 30 else None, markersize=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if len(curves) > 1:
        ax.legend()


def _kept_files(output: Path, epoch: int, previous: int | None, failure: FileWriteError) -> str:
    """What remains of a run whose files of ``epoch`` failed to be written (``previous``: the epoch before, whose
    resume state is whole), and what to do: files are written last first, ``resume.pt`` last."""
    weights_epoch = previous if Path(failure.path).name == LAST_FILE else epoch
    space = any(word in failure.reason for word in ("space", "quota", "part-way"))
    fix = "free some space" if space else f"make {output} writable"
    if previous is None:
        kept = (f"{output / LAST_FILE} of epoch {epoch} is intact, but no resume state was saved yet" if weights_epoch
                else "no epoch was saved yet")
        return f"{kept}: {fix} and run the command again"
    return (f"{output / LAST_FILE} of epoch {weights_epoch} and {RESUME_FILE} of epoch {previous} are intact: {fix} "
            f"and run again with --resume (it continues after epoch {previous})")


def _tensorboard(output: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output / TENSORBOARD_DIR), purge_step=purge_step)


# --- the loop ----------------------------------------------------------------------------------------


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


class _Trainer:
    def __init__(self, cfg: TrainConfig, info: DistInfo, callback: Callback | None) -> None:
        self.cfg = cfg
        self.info = info
        self.callback = callback
        self.device = info.device

    def _event(self, name: str, **data) -> None:
        if self.callback is not None:
            self.callback(name, data)

    # set-up ------------------------------------------------------------------------------------------

    def build(self) -> None:
        """Everything a run needs, in an order that keeps the random streams of earlier versions."""
        import tresnet

        cfg = self.cfg
        self.task = get_task(cfg.task)
        self.output, resume_state = _prepare_output(cfg, self.info)
        check_precision(cfg.precision, self.device)
        warn_if_bf16_is_emulated(cfg.precision, self.device)
        pretrained_cfg = tresnet.get_pretrained_cfg(cfg.model)
        self.img_size = cfg.img_size or int(pretrained_cfg["input_size"][-1])
        self.inputs = describe_normalisation(pretrained_cfg)
        self.data = build_train_data(cfg, pretrained_cfg, self.img_size)
        self._build_model(cfg.init_checkpoint if resume_state is None else None, resume_state)
        self._build_loaders()
        self._build_optimisation()
        self.start_epoch, self.step, self.history = 0, 0, []
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.metric = self.task.metric
        self.best = {"score": -1.0, "epoch": 0, "weights": "model"}
        self.teacher_score = None
        if resume_state is not None:
            self._load_resume_state(resume_state)

    def _choose_norms(self) -> None:
        """``self.norm`` for :func:`tresnet.create_model` and ``self.sync_plain_bn``: under DDP with
        ``sync_bn``, In-Place ABN becomes ``inplace_abn_sync`` and plain BN torch's ``SyncBatchNorm``
        (after the model is built), which runs on GPUs only: on the CPU plain BN stays per process."""
        cfg, info = self.cfg, self.info
        sync = info.distributed and cfg.sync_bn
        self.norm = "inplace_abn_sync" if sync and cfg.norm == "inplace_abn" else cfg.norm
        self.sync_plain_bn = sync and cfg.norm == "bn" and self.device.type != "cpu"
        if sync and cfg.norm == "bn" and not self.sync_plain_bn:
            _say(info, "note: BN statistics stay per process on the CPU (torch's SyncBatchNorm needs a GPU; "
                       "--no-sync-bn silences this)")

    def _norm_description(self) -> str:
        return f"{self.norm} (synchronised)" if self.sync_plain_bn else str(self.norm)

    def _build_model(self, init: str | None, resume_state: dict | None) -> None:
        """The model (``init`` weights, a head for the data's classes, sh-kd's frozen head) on the device, the
        distillation's teacher, and the DDP wrapper of what trains (the model, or th-kd's model and head)."""
        import tresnet

        cfg, info = self.cfg, self.info
        self._choose_norms()
        seed_everything(derive_seed(cfg.seed, 0))
        head_source, head = self._frozen_head_source(resume_state)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = tresnet.create_model(cfg.model, checkpoint_path=init, num_classes=len(self.data.class_names),
                                         drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path, norm=self.norm,
                                         head=head, task=cfg.task)
        for w in caught:
            _say(info, f"note: {w.message}")
        model.check_input_size(self.img_size, self.img_size)
        if self.sync_plain_bn:
            distributed.sync_batch_norm(model)
        if head_source is not None:
            install_frozen_head(model, head_source)
        elif resume_state is not None:
            install_saved_frozen_head(model, resume_state["model"])
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.distiller = None
        if cfg.distill is not None:
            self.distiller = create_distiller(cfg, self.data.class_names, model, self._base_criterion(),
                                              self.img_size, self.device, (resume_state or {}).get("distill"))
        self.net_module = self.distiller.student_net(model) if self.distiller is not None else model
        self.ddp = None
        if info.distributed:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.net_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=not (self.norm == "inplace_abn_sync" or self.sync_plain_bn))

    def _frozen_head_source(self, resume_state: dict | None) -> tuple[nn.Module | None, str | None]:
        """sh-kd (``frozen_head_from``): the student whose classifier is copied in (None when resuming: the
        saved model holds the copy), and the head kind to build; otherwise ``(None, cfg.head)``."""
        cfg = self.cfg
        if cfg.frozen_head_from is None:
            return None, cfg.head
        if resume_state is not None:
            return None, cfg.head or saved_frozen_head_kind(resume_state["model"])
        source = frozen_head_source(cfg.frozen_head_from, self.data.class_names, cfg.task)
        kind = source.pretrained_cfg.get("head", "fc")
        if cfg.head is not None and cfg.head != kind:
            raise ConfigError(f"the student checkpoint {cfg.frozen_head_from} has an {kind!r} head, and --head is "
                              f"{cfg.head!r}: the frozen head is the student's, so leave --head out")
        return source, kind

    def _build_loaders(self) -> None:
        """Sharded, seeded training and validation loaders, and the number of steps of an epoch."""
        from tresnet.data.loader import create_loader

        cfg, info = self.cfg, self.info
        workers = _default_workers(cfg, info)
        self.train_sampler = ShardedEpochSampler(len(self.data.train), seed=cfg.seed, rank=info.rank,
                                                 world_size=info.world_size, shuffle=True)
        self.train_loader = create_loader(SeededSamples(self.data.train), cfg.batch_size, workers, self.device,
                                          sampler=self.train_sampler, drop_last=True)
        val_sampler = ShardedEpochSampler(len(self.data.val), rank=info.rank, world_size=info.world_size,
                                          shuffle=False)
        self.val_loader = create_loader(self.data.val, cfg.batch_size, workers, self.device, sampler=val_sampler)
        self.steps_per_epoch = min(len(self.train_loader), cfg.max_steps_per_epoch or len(self.train_loader))
        if self.steps_per_epoch == 0:
            raise ConfigError(f"batch size {cfg.batch_size} x {info.world_size} process(es) is larger than the "
                              f"{len(self.data.train)} training images: lower --batch-size")

    def _build_optimisation(self) -> None:
        """Optimiser, schedule, loss scaler, EMA, loss and batch mixing."""
        from tresnet.data.train_transforms import create_batch_mix
        from tresnet.training.ema import ModelEma
        from tresnet.training.optim import create_optimizer, create_scheduler

        cfg = self.cfg
        self.optimizer = create_optimizer(self.net_module, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        self.scheduler = create_scheduler(
            self.optimizer, cfg.schedule, (cfg.schedule_epochs or cfg.epochs) * self.steps_per_epoch,
            warmup_steps=round(cfg.warmup_epochs * self.steps_per_epoch),
            warmup_start_factor=cfg.warmup_start_factor, final_lr_factor=cfg.final_lr_factor,
            pct_start=cfg.pct_start, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=needs_grad_scaler(cfg.precision, self.device))
        self.ema = ModelEma(self.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
        self.criterion = self.distiller.criterion if self.distiller is not None else self._base_criterion()
        self.batch_mix = create_batch_mix(len(self.data.class_names), cfg.mixup, cfg.cutmix, cfg.mix_prob)

    def _base_criterion(self) -> nn.Module:
        """The task's loss on the labels (what distillation adds its terms to)."""
        cfg = self.cfg
        return self.task.create_loss(cfg.loss, LossOptions(
            label_smoothing=cfg.label_smoothing, gamma_neg=cfg.asl_gamma_neg, gamma_pos=cfg.asl_gamma_pos,
            clip=cfg.asl_clip, focal_gamma=cfg.focal_gamma, reduction=cfg.loss_reduction))

    def _load_resume_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_states(state["rng"])
        self.start_epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = [dict(row) for row in state["history"]]
        self.best = dict(state["best"])
        self.teacher_score = state.get("teacher_score")
        if "score" not in self.best:  # a run saved by an earlier version, which kept the top-1 only
            self.best["score"] = self.best.pop("top1")
        _say(self.info, f"resuming {self.output} after epoch {self.start_epoch} (step {self.step})")

    def _resume_state(self, epoch: int) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_states(),
            "epoch": epoch,
            "step": self.step,
            "history": self.history,
            "best": self.best,
            "distill": self.distiller.state_dict() if self.distiller is not None else None,
            "teacher_score": self.teacher_score,
        }

    # one epoch ---------------------------------------------------------------------------------------

    def train_one_epoch(self, epoch: int) -> dict:
        """The optimiser steps of epoch ``epoch`` (from 0): mean loss over the processes, images, seconds."""
        cfg, info = self.cfg, self.info
        net = self.ddp or self.net_module
        net.train()
        self.train_sampler.set_epoch(epoch)
        seed_everything(derive_seed(cfg.seed, epoch, 3, info.rank))
        meter = _LossMeter(self.device)
        bar = self._progress_bar(epoch)
        start = time.perf_counter()
        try:
            for index, batch in enumerate(itertools.islice(self.train_loader, self.steps_per_epoch)):
                meter.add(*self._train_step(net, batch))
                bar.update(1)
                if meter.pending_steps >= cfg.log_interval or index + 1 == self.steps_per_epoch:
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

    def _progress_bar(self, epoch: int):
        from tqdm import tqdm

        return tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="step",
                    disable=not (self.cfg.progress and self.info.is_main), dynamic_ncols=True, leave=False)

    def _train_step(self, net: nn.Module, batch) -> tuple[torch.Tensor, int]:
        """One optimiser step (and schedule and EMA step) on ``batch``; its detached loss and image count."""
        cfg = self.cfg
        inputs, targets = batch[0], batch[1]
        if len(targets) == 0:
            raise TResNetError("a whole training batch was unreadable images: fix or remove the files reported above")
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.batch_mix is not None:
            inputs, targets = self.batch_mix(inputs, targets)
        if cfg.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(cfg.precision, self.device):
            if self.distiller is not None:  # the teacher's forward is part of the step, and of its img/s
                loss = self.distiller.loss(net, inputs, targets)
            else:
                loss = self.criterion(net(inputs), targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net_module.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():  # a step skipped by the scaler makes the scheduler warn
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return loss.detach(), len(inputs)

    def _check_and_show(self, meter: _LossMeter, bar, epoch: int, elapsed: float) -> None:
        """Stop on a NaN loss since the last check; otherwise show the loss, lr and speed on the bar."""
        seen_loss = self._check_loss(meter.pending, meter.pending_steps, epoch)
        meter.settle()
        bar.set_postfix(loss=f"{seen_loss:.4f}", lr=f"{self.last_lr:.3g}",
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
        tally = self.task.tally(self.device, threshold=self.cfg.threshold)
        return evaluate(model, self.val_loader, tally, precision=self.cfg.precision,
                        channels_last=self.cfg.channels_last, limit=self._val_limit(),
                        progress=self.cfg.progress and self.info.is_main, desc=desc, info=self.info)

    def _val_limit(self) -> int | None:
        if self.cfg.max_val_images is None:
            return None
        per_process = math.ceil(self.cfg.max_val_images / self.info.world_size)
        return max(1, per_process)

    # saving ------------------------------------------------------------------------------------------

    def _weights_metadata(self, epoch: int, score: float, weights: str) -> dict:
        # model, arch, norm, task, head and the classes are written by save_checkpoint itself; the
        # preprocessing and threshold of this run's validation, and the split of a bundled set, are the run's
        cfg = self.cfg
        meta = {"epoch": epoch, self.metric: score, "weights": weights, "img_size": self.img_size,
                "precision": cfg.precision, "trained_on": str(cfg.data),
                "preprocessing": self.data.preprocessing.to_config(),
                **self.task.checkpoint_record(threshold=cfg.threshold)}
        if train_source(cfg).embedded:
            meta.update(val_split=str(cfg.val_split), split_seed=str(cfg.split_seed))
        return meta

    def save_epoch(self, epoch: int, row: dict, tensorboard) -> None:
        """Rank 0: weights, metrics and the resume state of a finished epoch (resume state last).

        Raises :class:`~tresnet.errors.FileWriteError` when a file cannot be written (no space, no permission),
        naming the file, the cause and the files of earlier epochs that remain whole.
        """
        try:
            self._write_epoch_files(epoch, row, tensorboard)
        except FileWriteError as failure:  # a checkpoint's too (CheckpointWriteError)
            if not failure.reason:
                raise
            previous = self.history[-2]["epoch"] if len(self.history) > 1 else None
            raise FileWriteError(f"cannot write {failure.path}: {failure.reason}; "
                                 f"{_kept_files(self.output, epoch, previous, failure)}",
                                 path=failure.path, reason=failure.reason) from failure

    def _training_loss_title(self) -> str | None:
        """The training loss's name for the plot when it is not the validation loss (multiclass cross-entropy
        without distillation is): ``"ASL"``, ``"CE + th-kd"``..."""
        cfg = self.cfg
        loss = cfg.loss or self.task.default_loss
        if cfg.distill is not None:
            return f"{loss.upper()} + {cfg.distill}"
        return self.task.training_loss_title(loss)

    def _write_epoch_files(self, epoch: int, row: dict, tensorboard) -> None:
        names = self.data.class_names
        save_checkpoint(ordinary_model(self.model), self.output / LAST_FILE, class_names=names,
                        metadata=self._weights_metadata(epoch, row[f"val_{self.metric}"], "model"))
        if self.best["epoch"] == epoch:
            best_model = self.ema.module if self.best["weights"] == "ema" else self.model
            save_checkpoint(ordinary_model(best_model), self.output / BEST_FILE, class_names=names,
                            metadata=self._weights_metadata(epoch, self.best["score"], self.best["weights"]))
        _write_metrics_csv(self.output / METRICS_FILE, self.history, self.task)
        _write_plot(self.output / PLOT_FILE, self.history, self.task, self._training_loss_title())
        if tensorboard is not None:
            for key in ("train_loss", "val_loss", *self.task.columns, "val_blend", "lr", "train_img_per_s"):
                if row.get(key) is not None:
                    tensorboard.add_scalar(key.replace("_", "/", 1), row[key], epoch)
            tensorboard.flush()
        state = self._resume_state(epoch)
        atomic_write(self.output / RESUME_FILE, lambda tmp: torch.save(state, tmp))

    def summary(self, session_seconds: float) -> dict:
        train_images = sum(row["train_images"] for row in self.history)
        train_seconds = sum(row["train_seconds"] for row in self.history)
        last = self.history[-1] if self.history else {}
        metric = self.metric
        return {
            f"best_{metric}": self.best["score"],
            "best_epoch": self.best["epoch"],
            "best_weights": self.best["weights"],
            f"final_{metric}": last.get(f"val_{metric}"),
            f"final_ema_{metric}": last.get(f"ema_{metric}"),
            "epochs": len(self.history),
            "images_per_s": train_images / train_seconds if train_seconds else None,
            "seconds": sum(row["epoch_seconds"] for row in self.history),
            "session_seconds": session_seconds,
            "model": self.cfg.model,
            "task": self.cfg.task,
            "data": str(self.cfg.data),
            "num_classes": len(self.data.class_names),
            "img_size": self.img_size,
            "precision": self.cfg.precision,
            "world_size": self.info.world_size,
            "device": str(self.device),
            **self._distill_summary(),
        }

    def _distill_summary(self) -> dict:
        cfg = self.cfg
        if self.distiller is None:
            return {"frozen_head_from": cfg.frozen_head_from} if cfg.frozen_head_from else {}
        return {"distill": cfg.distill, "teacher": self.distiller.teacher_name,
                f"teacher_{self.metric}": self.teacher_score}

    # run ---------------------------------------------------------------------------------------------

    def run(self) -> dict:
        """Build, train the remaining epochs (saving each), and write the summary."""
        session_start = time.perf_counter()
        self.build()
        if self.info.is_main:
            save_config(self.cfg, self.output / CONFIG_FILE)
            self._announce()
        if self.distiller is not None and self.teacher_score is None:
            self.teacher_score = self.evaluate(self.distiller.teacher, "val teacher").score
            _say(self.info, f"teacher {self.distiller.teacher_name}: val {self.task.metric_title} "
                            f"{100 * self.teacher_score:.2f}%")
        tensorboard = _tensorboard(self.output, self.start_epoch + 1 if self.start_epoch else None) \
            if self.info.is_main else None
        try:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                self.run_epoch(epoch, tensorboard)
        finally:
            if tensorboard is not None:
                tensorboard.close()
        summary = self.summary(time.perf_counter() - session_start)
        if self.info.is_main:
            write_text(self.output / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
            _say(self.info, f"best val {self.task.metric_title} {100 * summary[f'best_{self.metric}']:.2f}% "
                            f"({summary['best_weights']} weights, "
                            f"epoch {summary['best_epoch']}) after {summary['epochs']} epochs, "
                            f"{summary['seconds'] / 60:.1f} min; weights in {self.output / BEST_FILE}")
        return summary

    def _announce(self) -> None:
        cfg, info = self.cfg, self.info
        n_params = sum(p.numel() for p in self.model.parameters())
        precision = f", precision {cfg.precision}" if cfg.precision != "fp32" else ""
        task = self.task.describe(cfg.loss or self.task.default_loss)
        head = ", ML-Decoder head" if self.model.pretrained_cfg.get("head") == "ml_decoder" else ""
        _say(info, f"training {cfg.model} ({n_params / 1e6:.1f}M parameters{head}) on {task}{self.data.description}; "
                   f"{cfg.epochs} epochs x {self.steps_per_epoch} steps of {cfg.batch_size}"
                   f"{f' x {info.world_size} processes' if info.distributed else ''}, {cfg.optimizer} "
                   f"{cfg.schedule} lr {cfg.lr:g}{precision}, norm {self._norm_description()}, inputs {self.inputs}, device {self.device}; writing to "
                   f"{self.output}")
        if self.distiller is not None:
            weights = f"weight {cfg.distill_weight:g}" + (f", teacher-head weight {cfg.teacher_head_weight:g}"
                                                          if cfg.distill == "th-kd" else "")
            _say(info, f"distilling ({cfg.distill}, T {cfg.distill_temperature:g}, {weights}) from "
                       f"{self.distiller.teacher_name}")
        if cfg.frozen_head_from:
            _say(info, f"classifier copied from {cfg.frozen_head_from} and frozen (sh-kd)")

    def _evaluate_blend(self) -> float | None:
        """th-kd with ``teacher_head_blend``: the score of the paper's blend of the student and teacher-head
        predictions (the student's checkpoint alone scores ``val``); None otherwise."""
        if self.distiller is None or not self.distiller.blend:
            return None
        blended = BlendedStudent(self.net_module, self.distiller.blend, self.task)
        return self.evaluate(blended, "val blend").score

    def run_epoch(self, epoch: int, tensorboard) -> dict:
        """Train and evaluate epoch ``epoch`` (from 0), keep the best weights, save, report; its metrics row."""
        epoch_start = time.perf_counter()
        stats = self.train_one_epoch(epoch)
        val = self.evaluate(self.model, "val")
        ema_val = self.evaluate(self.ema.module, "val EMA") if self.ema is not None else None
        blend = self._evaluate_blend()
        row = {
            "epoch": epoch + 1,
            "train_loss": stats["train_loss"],
            "lr": self.last_lr,
            "val_loss": val.loss,
            **self.task.row(val, ema_val),
            "val_blend": blend,
            "train_img_per_s": stats["train_images"] / max(stats["train_seconds"], 1e-9),
            "train_images": stats["train_images"],
            "train_seconds": stats["train_seconds"],
        }
        for score, weights in ((val.score, "model"), (ema_val.score if ema_val else -1.0, "ema")):
            if score > self.best["score"]:
                self.best = {"score": score, "epoch": epoch + 1, "weights": weights}
        row["epoch_seconds"] = time.perf_counter() - epoch_start
        self.history.append(row)
        if self.info.is_main:
            self.save_epoch(epoch + 1, row, tensorboard)
        collectives.barrier(self.info)
        title, metric = self.task.metric_title, self.metric
        ema_text = f"  EMA {title} {100 * row[f'ema_{metric}']:.2f}%" if ema_val else ""
        ema_text += f"  blend {title} {100 * blend:.2f}%" if blend is not None else ""
        _say(self.info, f"epoch {epoch + 1}/{self.cfg.epochs}  loss {row['train_loss']:.4f}  val {title} "
                        f"{100 * row[f'val_{metric}']:.2f}%{ema_text}  lr {row['lr']:.3g}  "
                        f"{row['train_img_per_s']:.0f} img/s  {row['epoch_seconds']:.1f} s")
        self._event("epoch", epoch=epoch, row=row)
        return row


@contextlib.contextmanager
def _runtime(cfg: TrainConfig, device: torch.device):
    """Thread count and deterministic algorithms for the run; the previous settings come back after."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    previous_threads = torch.get_num_threads()
    enabled = cfg.deterministic
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
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
    info = distributed.setup(cfg.device)
    try:
        with _runtime(cfg, info.device):
            return _Trainer(cfg, info, callback).run()
    finally:
        distributed.cleanup(info)


__all__ = ["TrainingDivergedError", "metrics_figure", "train"]

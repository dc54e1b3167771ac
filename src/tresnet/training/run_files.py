"""What a run keeps in its output folder, written atomically after each epoch, ``resume.pt`` last (so a run
killed at any moment, or stopped by a full disk, restarts from a consistent epoch): the weights (``last`` and
``best``), ``metrics.csv`` (the run's task's columns), ``metrics.png``, TensorBoard's events and the resume state;
and, when a run starts, the folder checked and the resume state read back."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tresnet.checkpoint import save_checkpoint
from tresnet.collectives import DistInfo
from tresnet.errors import ConfigError, FileWriteError, TResNetError
from tresnet.files import atomic_write, write_text
from tresnet.tasks import Task
from tresnet.training.config import TrainConfig, check_resume, saved_config
from tresnet.training.plot import write_plot

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


def say(info: DistInfo, text: str) -> None:
    """Print ``text`` on the main process."""
    if info.is_main:
        print(text, flush=True)


def _read_resume_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged file is a user-facing problem
        raise TResNetError(f"cannot read {path} to resume ({str(e).splitlines()[0][:200]}); "
                           f"delete it to start the run again") from e


def prepare_output(cfg: TrainConfig, info: DistInfo) -> tuple[Path, dict | None]:
    """The output folder, and the resume state when resuming one that has it.

    Raises :class:`ConfigError` for an output that is a file, a folder holding a run without
    ``--resume``, and a resumed run whose configuration differs from the saved one.
    """
    output = Path(cfg.run.output).expanduser()
    resume_path = output / RESUME_FILE
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} is a file: pass a folder to --output")
    if not cfg.run.resume and resume_path.exists():
        raise ConfigError(f"output folder {output} already holds a run ({RESUME_FILE}): pass --resume to "
                          f"continue it, or choose another --output (or delete that folder)")
    if not cfg.run.resume:
        return output, None
    saved = saved_config(output)
    if saved is not None:
        check_resume(cfg.options(), saved, output)
    if not resume_path.is_file():
        say(info, f"--resume: nothing to resume in {output} yet; starting from the first epoch")
        return output, None
    return output, _read_resume_state(resume_path)


def _write_metrics_csv(path: Path, history: list[dict], task: Task) -> None:
    columns = metric_columns(task)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    write_text(path, buffer.getvalue())


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


def tensorboard_writer(output: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output / TENSORBOARD_DIR), purge_step=purge_step)


class RunFiles:
    """The files of a run's output folder for one task: what :meth:`write_epoch` writes after each epoch."""

    def __init__(self, output: Path, task: Task, class_names: list[str]) -> None:
        self.output, self.task, self.class_names = output, task, class_names

    def write_epoch(self, epoch: int, weights: list[tuple[str, nn.Module, dict]], history: list[dict],
                    train_loss: str | None, tensorboard, resume_state: Callable[[], dict]) -> None:
        """Write the ``weights`` (file name, model, metadata) of epoch ``epoch``, the metrics of ``history`` and
        their plot (``train_loss``: the training loss's title when it is not the validation's), TensorBoard's
        scalars of the last row, then the resume state.

        Raises :class:`~tresnet.errors.FileWriteError` when a file cannot be written (no space, no permission),
        naming the file, the cause and the files of earlier epochs that remain whole.
        """
        try:
            self._write(epoch, weights, history, train_loss, tensorboard, resume_state)
        except FileWriteError as failure:  # a checkpoint's too (CheckpointWriteError)
            if not failure.reason:
                raise
            previous = history[-2]["epoch"] if len(history) > 1 else None
            raise FileWriteError(f"cannot write {failure.path}: {failure.reason}; "
                                 f"{_kept_files(self.output, epoch, previous, failure)}",
                                 path=failure.path, reason=failure.reason) from failure

    def _write(self, epoch: int, weights: list[tuple[str, nn.Module, dict]], history: list[dict],
               train_loss: str | None, tensorboard, resume_state: Callable[[], dict]) -> None:
        for name, model, metadata in weights:
            save_checkpoint(model, self.output / name, class_names=self.class_names, metadata=metadata)
        _write_metrics_csv(self.output / METRICS_FILE, history, self.task)
        write_plot(self.output / PLOT_FILE, history, self.task, train_loss)
        if tensorboard is not None:
            row = history[-1]
            for key in ("train_loss", "val_loss", *self.task.columns, "val_blend", "lr", "train_img_per_s"):
                if row.get(key) is not None:
                    tensorboard.add_scalar(key.replace("_", "/", 1), row[key], epoch)
            tensorboard.flush()
        state = resume_state()
        atomic_write(self.output / RESUME_FILE, lambda tmp: torch.save(state, tmp))


__all__ = ["BEST_FILE", "LAST_FILE", "METRICS_FILE", "PLOT_FILE", "RESUME_FILE", "SUMMARY_FILE", "TENSORBOARD_DIR",
           "RunFiles", "metric_columns", "prepare_output", "say", "tensorboard_writer"]

"""What a run leaves when its files cannot be written (a disk that fills up mid-file, a folder without permission):
one line that names the file, the cause and the checkpoints that remain, which resume; `--resume` where there is
nothing to resume; the plot of metrics.png."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from helpers import requires_matplotlib
from training.train_testdata import FAST, make_train_val
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.cli.main import main
from tresnet.errors import ConfigError, FileWriteError
from tresnet.files import intercept_writes
from tresnet.tasks import get_task
from tresnet.training.config import TrainConfig, build_config
from tresnet.training.plot import metrics_figure
from tresnet.training.trainer import train

GENET = {**FAST, "model": "genet_light"}
TORCH_WRITER_ERROR = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"

pytestmark = pytest.mark.usefixtures("one_math_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_train_val(tmp_path_factory.mktemp("data"))


def _fail_on(name: str, nth: int, error: BaseException):
    """A write hook: the ``nth`` write of the file ``name`` writes its first bytes, then raises ``error``."""
    seen = []

    def hook(path, write, tmp):
        if path.name == name:
            seen.append(path)
            if len(seen) == nth:
                with open(tmp, "wb") as f:
                    f.write(b"\0" * 4096)
                raise error
        write(tmp)

    return hook


def _temporary_files(run):
    return [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def _resume_epoch(run):
    return torch.load(run / "resume.pt", weights_only=True)["epoch"]


def test_a_full_disk_mid_resume_state_stops_in_one_line_and_the_run_resumes(folder, tmp_path):
    run = tmp_path / "run"
    cfg = build_config(None, {**GENET, "data": str(folder), "output": str(run), "epochs": 3})
    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with intercept_writes(_fail_on("resume.pt", 2, no_space)), pytest.raises(FileWriteError) as info:
        train(cfg)
    assert str(info.value) == (
        f"cannot write {run / 'resume.pt'}: no space left on device; {run / 'last.safetensors'} of epoch 2 and "
        f"resume.pt of epoch 1 are intact: free some space and run again with --resume (it continues after epoch 1)")
    assert info.value.path == run / "resume.pt" and info.value.reason == "no space left on device"
    assert _temporary_files(run) == [] and _resume_epoch(run) == 1
    assert read_checkpoint_metadata(run / "last.safetensors")["epoch"] == "2"
    summary = train(build_config(None, {"output": str(run), "resume": True}))
    assert summary["epochs"] == 3 and _resume_epoch(run) == 3


def test_torchs_writer_failing_in_the_first_epoch_is_one_line_on_the_command_line(folder, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--model", "genet_light", "--data", str(folder), "--output", str(run), "--img-size", "32",
            "--batch-size", "4", "--epochs", "1", "--max-steps-per-epoch", "1", "--max-val-images", "4",
            "--workers", "0", "--no-progress"]
    with intercept_writes(_fail_on("resume.pt", 1, RuntimeError(TORCH_WRITER_ERROR))):
        assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tresnet train: error: cannot write {run / 'resume.pt'}: the writer stopped part-way (PyTorch: "
                   f"{TORCH_WRITER_ERROR}); {run / 'last.safetensors'} of epoch 1 is intact, but no resume state was "
                   f"saved yet: free some space and run the command again"]
    assert not (run / "resume.pt").exists() and _temporary_files(run) == []


def test_a_weights_file_without_permission_keeps_the_previous_epoch(folder, tmp_path):
    run = tmp_path / "run"
    cfg = build_config(None, {**GENET, "data": str(folder), "output": str(run), "epochs": 2})
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    with intercept_writes(_fail_on("last.safetensors", 2, denied)), pytest.raises(FileWriteError) as info:
        train(cfg)
    assert str(info.value) == (
        f"cannot write {run / 'last.safetensors'}: permission denied; {run / 'last.safetensors'} of epoch 1 and "
        f"resume.pt of epoch 1 are intact: make {run} writable and run again with --resume (it continues after "
        f"epoch 1)")
    assert read_checkpoint_metadata(run / "last.safetensors")["epoch"] == "1" and _resume_epoch(run) == 1
    assert _temporary_files(run) == []


def test_resume_where_there_is_nothing_to_resume_says_so(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for output, found in ((empty, "no config.yaml, no resume.pt"), (tmp_path / "nowhere", "the folder does not exist")):
        assert main(["train", "--output", str(output), "--resume"]) == 1
        assert capsys.readouterr().err.strip() == (
            f"tresnet train: error: --resume: nothing to resume in {output} ({found}): point --output at the folder "
            f"of the run to continue, or drop --resume and pass --data DIR to start a new run")
    with pytest.raises(ConfigError, match=r"--resume: nothing to resume in .*empty \(no config.yaml"):
        TrainConfig.from_options({"output": str(empty), "resume": True}).validate()
    # with the whole configuration given, --resume on a new folder starts the run (scripts that always pass it)
    assert build_config(None, {**GENET, "data": "digits", "output": str(empty), "resume": True}).run.resume


def _history(metric: str, epochs: int = 3) -> list[dict]:
    return [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0 / e, f"val_{metric}": 0.5 + 0.1 * e,
             f"ema_{metric}": 0.55 + 0.1 * e} for e in range(1, epochs + 1)]


def _whole_epoch_ticks(ax) -> bool:
    low, high = ax.get_xlim()
    return all(float(t).is_integer() for t in ax.get_xticks() if low <= t <= high)


@requires_matplotlib
@pytest.mark.parametrize("epochs", [1, 3, 40])
def test_the_plot_has_whole_epoch_ticks_and_a_panel_per_kind_of_loss(epochs):
    import matplotlib.pyplot as plt

    multilabel = metrics_figure(_history("map", epochs), get_task("multilabel"), "ASL")
    classification = metrics_figure(_history("top1", epochs), "multiclass")  # a task's name does too
    try:
        labels = [ax.get_ylabel() for ax in multilabel.axes]
        assert labels == ["training loss (ASL)", "validation loss (BCE)", "mAP (%)"]
        assert [len(ax.get_lines()) for ax in multilabel.axes] == [1, 1, 2]
        assert [ax.get_ylabel() for ax in classification.axes] == ["cross-entropy", "top-1 (%)"]
        assert [len(ax.get_lines()) for ax in classification.axes] == [2, 2]  # train and val cross-entropy together
        assert all(_whole_epoch_ticks(ax) for ax in (*multilabel.axes, *classification.axes))
    finally:
        plt.close(multilabel)
        plt.close(classification)

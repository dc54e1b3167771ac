"""The task seam: a task defined here only, counting the digits in the bundled mosaics as a regression, with a data
source of its own, trains through the ordinary trainer and is evaluated and validated by the ordinary loops, with
no change to the engine."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

import tresnet
from tresnet.data.digits_mosaic import DigitsMosaicDataset
from tresnet.data.sources import DataSource, TrainData, ValidationOptions, register_source, unregister_source
from tresnet.data.transforms import Preprocessing
from tresnet.inference.evaluate import evaluate
from tresnet.inference.validate import validate
from tresnet.tasks import LossOptions, NetworkSpec, Task, get_task, register_task, unregister_task
from tresnet.training.config import TrainConfig
from tresnet.training.trainer import train

NAME = "digit-count"
IMAGES = 96  # mosaics drawn: enough for an epoch of a few steps
MEAN_COUNT = 2.5  # distinct digits in a mosaic of up to four, roughly


@dataclass(frozen=True)
class CountScores:
    """How well the counts were regressed: the share of exact (rounded) counts, the mean absolute error."""

    accuracy: float
    mae: float
    loss: float
    images: int
    skipped: int = 0
    seconds: float = 0.0
    img_per_s: float = 0.0

    @property
    def score(self) -> float:
        return self.accuracy

    def to_dict(self) -> dict:
        return dict(vars(self))


class CountTally:
    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.squared = self.absolute = self.exact = 0.0
        self.images = self.skipped = 0

    def add(self, logits: Tensor, targets: Tensor) -> None:
        error = logits.float().squeeze(1) - targets.float().squeeze(1)
        self.squared += float((error ** 2).sum())
        self.absolute += float(error.abs().sum())
        self.exact += float((logits.float().squeeze(1).round() == targets.float().squeeze(1)).sum())
        self.images += len(targets)

    def postfix(self) -> dict:
        return {"mae": f"{self.absolute / max(self.images, 1):.3f}"}

    def result(self, seconds: float, info=None) -> CountScores:
        n = self.images
        return CountScores(self.exact / n, self.absolute / n, self.squared / n, n, self.skipped, seconds,
                           n / seconds if seconds > 0 else float("inf"))


@dataclass(frozen=True)
class CountReport:
    mae: float
    accuracy: float
    images: int

    def to_dict(self) -> dict:
        return dict(vars(self))

    def lines(self, published: str | None = None) -> list[str]:
        return [f"count accuracy {100 * self.accuracy:.1f}%  MAE {self.mae:.3f}  ({self.images} images)"]


class DigitCount(Task):
    """How many distinct digits a mosaic shows, regressed by one output."""

    name = NAME
    metric = "count_accuracy"
    metric_title = "count accuracy"
    validation_loss = "MSE"
    losses = ("mse",)
    columns = ("val_count_accuracy", "ema_count_accuracy", "val_mae")
    heads = ("fc",)  # one regressed output: pooling + linear

    def __init__(self) -> None:
        self.asked: list[NetworkSpec] = []  # what the trainer asked the task to build

    def create_network(self, create, spec: NetworkSpec) -> nn.Module:
        self.asked.append(spec)
        network = super().create_network(create, spec)
        with torch.no_grad():  # a regression starts at the mean count of a mosaic
            network.head.fc.bias.fill_(MEAN_COUNT)
        return network

    def random_targets(self, batch: int, num_outputs: int, generator=None) -> Tensor:
        return torch.randint(1, 5, (batch, 1), generator=generator).float()

    def create_loss(self, name: str | None, options: LossOptions) -> nn.Module:
        self.check_loss(name)
        return nn.MSELoss()

    def divergence(self, student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
        return nn.functional.mse_loss(student_logits.float(), teacher_logits.detach().float())

    def probabilities(self, logits: Tensor) -> Tensor:
        return logits.float()

    def logits_of(self, probabilities: Tensor) -> Tensor:
        return probabilities

    def tally(self, device, *, threshold: float = 0.5, class_subset: Sequence[int] | None = None,
              data=None) -> CountTally:
        return CountTally(device)

    def row(self, val: CountScores, ema: CountScores | None) -> dict[str, Any]:
        return {"val_count_accuracy": val.accuracy, "ema_count_accuracy": ema.accuracy if ema else None,
                "val_mae": val.mae}

    def report(self, run: Any, scores: CountScores) -> CountReport:
        return CountReport(scores.mae, scores.accuracy, scores.images)


class CountedMosaics(Dataset):
    """The bundled digit mosaics with the number of distinct digits of each as a float target."""

    tasks = (NAME,)
    classes = ["count"]
    skipped, skipped_files = 0, set()

    def __init__(self, split: str, img_size: int, transform=None) -> None:
        self.mosaics = DigitsMosaicDataset(split, img_size, transform, num_images=IMAGES, val_fraction=0.25)
        self.root = self.source = f"digit counts ({split})"
        self.transform = None  # what validate sets: the images are drawn at their size already

    def __len__(self) -> int:
        return len(self.mosaics)

    def __getitem__(self, index: int):
        image, target = self.mosaics[index]
        return image, target.sum().reshape(1)


class CountSource(DataSource):
    name, tasks, usage, embedded = NAME, (NAME,), f"--data {NAME}", True

    def claims(self, data, annotations=None) -> bool:
        return str(data) == self.name

    def preprocessing(self, cfg, pretrained_cfg: dict, img_size: int) -> Preprocessing:
        return Preprocessing.of(pretrained_cfg, img_size=img_size, crop_mode="squash")

    def training_data(self, cfg, pretrained_cfg: dict, train_transform, img_size: int) -> TrainData:
        train, val = CountedMosaics("train", img_size), CountedMosaics("val", img_size)
        return TrainData(train, val, ["count"], f"digit counts: {len(train)} train / {len(val)} val images")

    def validation_data(self, data, options: ValidationOptions) -> Dataset:
        return CountedMosaics("val", 32)


@pytest.fixture
def digit_count():
    task, source = register_task(DigitCount()), register_source(CountSource())
    yield task
    unregister_task(task.name)
    unregister_source(source.name)


def test_a_task_of_the_tests_trains_and_evaluates_through_the_ordinary_loops(digit_count, tmp_path):
    cfg = TrainConfig.from_options(dict(
        model="genet_light", task=NAME, data=NAME, output=str(tmp_path / "run"), epochs=1, batch_size=16, img_size=32,
        max_steps_per_epoch=3, lr=1e-3, workers=0, threads=1, progress=False, ema_decay=0.9, seed=1))
    summary = train(cfg)
    run = tmp_path / "run"
    assert [(spec.name, spec.num_classes, spec.head) for spec in digit_count.asked] == [("genet_light", 1, None)]
    assert summary["task"] == NAME and 0.0 <= summary["best_count_accuracy"] <= 1.0
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[4:7] == list(DigitCount.columns) and float(rows[0]["val_mae"]) >= 0.0
    assert json.loads((run / "summary.json").read_text())["best_count_accuracy"] == summary["best_count_accuracy"]

    model = tresnet.create_model(checkpoint_path=run / "best.safetensors")
    assert model.pretrained_cfg["task"] == NAME and model.num_classes == 1
    loader = torch.utils.data.DataLoader(CountedMosaics("val", 32), batch_size=8)
    scores = evaluate(model, loader, get_task(NAME).tally("cpu"), progress=False)
    assert scores.images == len(CountedMosaics("val", 32)) and scores.mae >= 0.0
    assert 0.0 <= scores.accuracy <= 1.0

    report = validate(model, NAME, device="cpu", progress=False)  # the data opened by the task's own source
    assert isinstance(report, CountReport) and report.images == scores.images
    assert report.mae == pytest.approx(scores.mae, rel=1e-5)


def test_the_task_decides_the_heads_a_run_may_ask_for(digit_count, tmp_path):
    options = dict(model="genet_light", task=NAME, data=NAME, output=str(tmp_path / "run"), head="ml_decoder")
    with pytest.raises(tresnet.errors.ConfigError, match="head 'ml_decoder' does not fit task 'digit-count': use "
                                                         "one of fc$"):
        TrainConfig.from_options(options).validate()


def test_an_unknown_task_is_refused_with_the_registered_names():
    with pytest.raises(tresnet.errors.ConfigError, match="unknown task 'digit-count': use one of multiclass"):
        get_task(NAME)

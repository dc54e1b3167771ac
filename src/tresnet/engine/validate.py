"""Validate a classifier on an ImageNet-style folder (one sub-folder per class): what ``tresnet validate`` runs.

    import tresnet
    from tresnet.engine.validate import validate

    model = tresnet.create_model("tresnet_m", checkpoint_path="tresnet_m.pth")
    report = validate(model, "imagenet/val", batch_size=128, workers=8, precision="amp")
    print(report["top1"], report["top5"])
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from tresnet.data import ImageFolderDataset, create_eval_transform, create_loader
from tresnet.data.transforms import describe_eval_transform
from tresnet.engine.evaluate import evaluate
from tresnet.errors import ConfigError, DataError
from tresnet.runtime import check_precision, resolve_device


def check_classes(dataset: ImageFolderDataset, model: nn.Module) -> None:
    """Raise :class:`DataError` unless the folder has one class per model output, named as the
    checkpoint's classes when the checkpoint names them."""
    folder_classes, model_classes = len(dataset.classes), model.num_classes
    if folder_classes != model_classes:
        raise DataError(
            f"{dataset.root} has {folder_classes} class folders but the model has {model_classes} classes: "
            f"use a folder with one sub-folder per model class (ImageNet val: 1000 synset folders), "
            f"or the checkpoint trained on these classes"
        )
    info = getattr(model, "checkpoint_info", None)
    names = info.metadata.get("class_names") if info is not None else None
    if names and list(names) != list(dataset.classes):
        first = next((i for i, (a, b) in enumerate(zip(names, dataset.classes, strict=False)) if a != b), 0)
        raise DataError(
            f"the class folders of {dataset.root} are not the checkpoint's classes: index {first} is "
            f"{dataset.classes[first]!r} in the folder, {names[first]!r} in the checkpoint; "
            f"name the folders as the classes the model was trained on"
        )


def evenly_spaced(dataset: Dataset, limit: int) -> Dataset:
    """``limit`` samples taken evenly over ``dataset`` (so every class of a sorted folder is seen)."""
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if limit >= len(dataset):
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, num=limit).round().astype(int).tolist())


@dataclass
class Validation:
    """A validation ready to run: the model on its device, the (sub)set and its loader."""

    model: nn.Module
    dataset: ImageFolderDataset
    subset: Dataset
    loader: torch.utils.data.DataLoader
    img_size: int
    device: torch.device
    precision: str
    channels_last: bool
    settings: dict

    @property
    def preprocessing(self) -> str:
        return describe_eval_transform(self.model.pretrained_cfg, self.img_size)

    def run(self, progress: bool = True) -> dict:
        """Evaluate and return the report (see :func:`validate`)."""
        result = evaluate(self.model, self.loader, self.device, precision=self.precision,
                          channels_last=self.channels_last, progress=progress, desc="validate")
        return _report(self, result)


def prepare_validation(model: nn.Module, data: str | os.PathLike | ImageFolderDataset, *,
                       img_size: int | None = None, batch_size: int = 64, workers: int = 0,
                       device: str | torch.device = "auto", precision: str = "fp32",
                       channels_last: bool = False, limit: int | None = None,
                       strict: bool = False) -> Validation:
    """Check the folder against the model and build the loader; :meth:`Validation.run` evaluates.

    Raises :class:`DataError` (missing or empty folder, classes that do not match the model),
    :class:`ConfigError` (bad device, precision or limit) and
    :class:`~tresnet.errors.InputSizeError` (a size the model cannot take).
    """
    device = resolve_device(device)
    check_precision(precision, device)
    dataset = data if isinstance(data, ImageFolderDataset) else ImageFolderDataset(data, strict=strict)
    size = img_size or int(model.pretrained_cfg["input_size"][-1])
    model.check_input_size(size, size)
    check_classes(dataset, model)
    dataset.transform = create_eval_transform(model.pretrained_cfg, size)
    subset = evenly_spaced(dataset, limit) if limit is not None else dataset
    loader = create_loader(subset, batch_size, workers, device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    settings = dict(batch_size=batch_size, workers=workers, limit=limit)
    return Validation(model, dataset, subset, loader, size, device, precision, channels_last, settings)


def _report(run: Validation, result: dict) -> dict:
    info = getattr(run.model, "checkpoint_info", None)
    return dict(
        model=run.model.pretrained_cfg["model"],
        checkpoint=str(info.path) if info is not None else None,
        checkpoint_format=info.format if info is not None else None,
        data=str(run.dataset.root),
        num_classes=run.model.num_classes,
        img_size=run.img_size,
        preprocessing=run.preprocessing,
        top1=100.0 * result["top1"],
        top5=100.0 * result["top5"],
        accuracy_unit="percent",
        loss=result["loss"],
        images=result["images"],
        skipped=run.dataset.skipped,
        skipped_files=sorted(run.dataset.skipped_files),
        seconds=result["seconds"],
        img_per_s=result["img_per_s"],
        device=str(run.device),
        precision=run.precision,
        channels_last=run.channels_last,
        **run.settings,
    )


def validate(model: nn.Module, data: str | os.PathLike | ImageFolderDataset, *, progress: bool = True,
             **options) -> dict:
    """Top-1 / top-5 of ``model`` on the folder ``data``, with the model's own preprocessing.

    ``options`` are those of :func:`prepare_validation`. Returns the report that ``tresnet validate
    --json`` writes: ``top1``/``top5`` in percent, ``images``, ``skipped`` (unreadable files, counted
    rather than evaluated) and ``skipped_files``, ``loss``, ``seconds``, ``img_per_s``, and the settings.
    """
    return prepare_validation(model, data, **options).run(progress)


__all__ = ["Validation", "check_classes", "evenly_spaced", "prepare_validation", "validate"]

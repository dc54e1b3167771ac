"""Validate a classifier: what ``tresnet validate`` runs. A single-label model on a folder of class
sub-folders, mapped to the model's outputs by :func:`tresnet.data.class_mapping.resolve_class_mapping`
(synsets, class indices, sorted names or a class map; a subset of the classes is scored over those only),
or on a flat folder with a ground-truth file, optionally with ReaL labels: top-1 / top-5; a multi-label
model on COCO-style annotations or a labels CSV (:func:`tresnet.data.multilabel.open_multilabel`): mAP and
thresholded precision / recall.

    import tresnet
    from tresnet.inference.validate import validate

    model = tresnet.create_model("tresnet_m", checkpoint_path="tresnet_m.pth")
    report = validate(model, "imagenet/val", batch_size=128, workers=8, precision="amp")
    print(report.top1, report.top5)

    report = validate(model, "imagenet/val_flat", ground_truth="LOC_val_solution.csv", real_labels="real.json")
    print(report.top1, report.real["real_top1"])

    model = tresnet.create_model(checkpoint_path="tresnet_l_448_coco.pth")  # a multi-label checkpoint
    report = validate(model, "coco/val2014", annotations="coco/annotations/instances_val2014.json")
    print(report.map, report.threshold_metrics["cf1"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from tresnet.data import ImageFolderDataset, create_loader
from tresnet.data.bundled import BundledValidationSet
from tresnet.data.class_mapping import ClassMapping, name_mismatch, read_class_map, resolve_class_mapping
from tresnet.data.class_names import IMAGENET_NUM_CLASSES
from tresnet.data.datasets import GroundTruthDataset, RealLabelled
from tresnet.data.imagenet import read_real_labels
from tresnet.data.multilabel import MultiLabelDataset
from tresnet.data.sources import ValidationOptions, find_source, usages
from tresnet.data.transforms import Preprocessing
from tresnet.deploy.inference import check_inference_options, inference_model
from tresnet.errors import ConfigError, DataError
from tresnet.inference.bundled import bundled_split
from tresnet.inference.evaluate import evaluate, model_threshold, resolve_task
from tresnet.runtime import resolve_device
from tresnet.tasks import DEFAULT_TASK, DEFAULT_THRESHOLD, Task, check_threshold, get_task

ValidationData = ImageFolderDataset | MultiLabelDataset | BundledValidationSet

def open_validation_data(data: str | os.PathLike, *, task: str | Task = DEFAULT_TASK,
                         annotations: str | os.PathLike | None = None,
                         classes: Sequence[str] | str | os.PathLike | None = None, strict: bool = False,
                         without_labels: str = "skip",
                         ground_truth: str | os.PathLike | None = None) -> ValidationData:
    """The set to validate a ``task`` model on, opened by the data source that reads ``data`` for that task
    (:func:`tresnet.data.sources.find_source`): a bundled set by name (``digits``, ``digits-multilabel``:
    :class:`~tresnet.data.bundled.BundledValidationSet`, the validation split its training used), a folder of
    class sub-folders or, with ``ground_truth``, a flat folder labelled by that file (multiclass), COCO
    ``annotations`` of an images folder or a labels CSV with its ``classes`` (multilabel).

    Raises :class:`ConfigError` for data of another task and options the source does not read, and
    :class:`DataError` for data that cannot be read (see the readers).
    """
    task = get_task(task)
    source = find_source(data, task.name, annotations)
    return source.validation_data(data, ValidationOptions(annotations=annotations, classes=classes,
                                                          ground_truth=ground_truth, strict=strict,
                                                          without_labels=without_labels))


def _check_data_fits_task(dataset: ValidationData, task: Task) -> None:
    tasks = dataset.tasks  # the tasks its targets serve, as each kind of data declares them
    if task.name not in tasks:
        raise DataError(f"{dataset.root} is {tasks[0]} data and the model is {task.name}: use data of the model's "
                        f"task ({' or '.join(usages(task.name))}), or another checkpoint")


def _check_class_list(classes: Sequence[str], names: Sequence[str] | None, model: nn.Module, *,
                      count_text: str, names_text: str, data_word: str, fix: str) -> None:
    """``classes`` (the data's) against the model's count and the checkpoint's ``names``: a one-line
    :class:`DataError` naming the first difference; ``fix`` says what to pass instead."""
    if len(classes) != model.num_classes:
        raise DataError(f"{count_text} {len(classes)} classes but the model has {model.num_classes}: {fix}, "
                        f"or the checkpoint trained on these classes")
    if names and list(names) != list(classes):
        raise DataError(f"{name_mismatch(classes, names, names_text, data_word)}; {fix}")


def _checkpoint_class_names(model: nn.Module) -> list[str] | None:
    info = getattr(model, "checkpoint_info", None)
    return info.metadata.get("class_names") if info is not None else None


def check_classes(dataset: ValidationData, model: nn.Module, task: Task, *,
                  class_map: str | os.PathLike | None = None) -> ClassMapping | None:
    """Match the data's classes to the model's outputs: for a folder (or ground-truth file) the
    :class:`~tresnet.data.class_mapping.ClassMapping` of
    :func:`~tresnet.data.class_mapping.resolve_class_mapping` (``class_map``: a class-map file), applied
    to the dataset's targets (a task of one class per image: :attr:`Task.maps_classes`); otherwise a check that
    the data names one class per output, as the checkpoint names them (None is returned). Raises
    :class:`DataError` when they do not fit.
    """
    names = _checkpoint_class_names(model)
    if not task.maps_classes:
        if class_map is not None:
            raise ConfigError("--class-map maps class folders; multi-label classes come from --classes FILE")
        _check_class_list(dataset.classes, names, model, count_text=f"{dataset.source} names",
                          names_text=f"the classes of {dataset.source}", data_word="annotations",
                          fix="use annotations of the model's classes in its order (for a CSV: --classes FILE)")
        return None
    if isinstance(dataset, GroundTruthDataset):
        data = f"ground truth {dataset.ground_truth}"
    elif isinstance(dataset, BundledValidationSet):
        data = f"bundled set {dataset.root}"
    else:
        data = f"folder {dataset.root}"
    mapping = resolve_class_mapping(
        dataset.classes, model.num_classes, checkpoint_names=names, data=data,
        class_map=read_class_map(class_map, model.num_classes) if class_map is not None else None,
        class_map_source=str(class_map) if class_map is not None else None)
    dataset.map_classes(mapping.indices)
    return mapping


def with_real_labels(dataset: ImageFolderDataset, model: nn.Module, real_labels: str | os.PathLike) -> RealLabelled:
    """``dataset`` with its images' ReaL labels (:func:`tresnet.data.imagenet.read_real_labels`); the model
    must number its outputs as ImageNet-1k. Raises :class:`DataError` otherwise, or for images ReaL does not
    cover."""
    if model.num_classes != IMAGENET_NUM_CLASSES:
        raise DataError(f"ReaL labels are ImageNet-1k class indices but the model has {model.num_classes} classes")
    return RealLabelled(dataset, read_real_labels(real_labels), source=str(real_labels))


def evenly_spaced(dataset: Dataset, limit: int) -> Dataset:
    """``limit`` samples taken evenly over ``dataset`` (so every class of a sorted folder is seen)."""
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if limit >= len(dataset):
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, num=limit).round().astype(int).tolist())


@dataclass
class Validation:
    """A validation ready to run: the model on its device, the (sub)set and its loader, the task."""

    model: nn.Module
    dataset: ValidationData
    subset: Dataset
    loader: torch.utils.data.DataLoader
    preprocessing: Preprocessing
    device: torch.device
    precision: str
    channels_last: bool
    settings: dict
    task: Task = get_task(DEFAULT_TASK)
    threshold: float = DEFAULT_THRESHOLD
    class_mapping: ClassMapping | None = None
    real_labels: str | None = None
    runner: nn.Module | None = None  # what runs: the model, or its bf16 / int8 deployment form
    run_precision: str | None = None  # the autocast it runs under

    @property
    def img_size(self) -> int:
        """The side of the (square) input images."""
        return self.preprocessing.img_size[0]

    def run(self, progress: bool = True) -> Any:
        """Evaluate and return the task's report (see :func:`validate`)."""
        runner = self.runner if self.runner is not None else self.model
        mapping = self.class_mapping
        tally = self.task.tally(self.device, threshold=self.threshold,
                                class_subset=mapping.covered if mapping is not None and mapping.masked else None)
        scores = evaluate(runner, self.loader, tally, precision=self.run_precision or self.precision,
                          channels_last=self.channels_last, progress=progress, desc="validate")
        return self.task.report(self, scores)


def prepare_validation(model: nn.Module, data: str | os.PathLike | ValidationData, *,
                       preprocessing: Preprocessing | None = None, batch_size: int = 64, workers: int = 0,
                       device: str | torch.device = "auto", precision: str = "fp32",
                       channels_last: bool = False, limit: int | None = None,
                       strict: bool = False, task: str | None = None,
                       annotations: str | os.PathLike | None = None,
                       classes: Sequence[str] | str | os.PathLike | None = None,
                       threshold: float | None = None, without_labels: str = "skip",
                       ground_truth: str | os.PathLike | None = None, class_map: str | os.PathLike | None = None,
                       real_labels: str | os.PathLike | None = None,
                       calibration: str | os.PathLike | torch.Tensor | None = None,
                       calibration_images: int | None = None, int8_backend: str | None = None) -> Validation:
    """Check the data against the model and build the loader; :meth:`Validation.run` evaluates.

    ``task`` None is the model's (``pretrained_cfg["task"]``, else multiclass). ``data`` is a dataset
    already open, or a path (or a bundled set's name) read by :func:`open_validation_data` (with
    ``annotations``, ``classes``, ``without_labels`` for a multilabel task, ``ground_truth`` for a flat
    folder). Classes are matched to the model's outputs by :func:`check_classes` (``class_map``: a
    class-map file); ``real_labels``: the ReaL ``real.json`` of ImageNet val, scored beside the original
    labels. ``preprocessing`` None is the model's (:meth:`Preprocessing.of`: the one its checkpoint
    recorded, else the registered model's); pass ``Preprocessing.of(model, img_size=..., crop_pct=...)``
    to override (e.g. a centre crop of 0.875 to compare with timm's 448-pixel TResNet rows).
    ``threshold``: the probability above which a label counts as predicted (multilabel; None: the
    checkpoint's, else 0.5). ``precision`` is one of :data:`tresnet.deploy.inference.INFERENCE_PRECISIONS`:
    ``bf16`` validates the folded bfloat16 model and ``int8`` the model quantized on ``calibration`` (a
    folder of images, ``calibration_images`` of them; ``int8_backend`` as
    :func:`tresnet.deploy.inference.inference_model` takes it), what that function builds.

    Raises :class:`DataError` (missing or empty data, classes that do not match the model, data that
    does not fit the task), :class:`ConfigError` (bad device, precision, limit, task or threshold, a task
    other than the checkpoint's) and :class:`~tresnet.errors.InputSizeError` (a size the model cannot take).
    """
    device = resolve_device(device)
    check_inference_options(precision, device, calibration, calibration_images, int8_backend)
    task = resolve_task(model, task)
    threshold = check_threshold(model_threshold(model) if threshold is None else threshold)
    preprocessing = preprocessing or Preprocessing.of(model)
    if isinstance(data, ImageFolderDataset | MultiLabelDataset | BundledValidationSet):
        dataset = data
    else:
        dataset = open_validation_data(data, task=task, annotations=annotations, classes=classes, strict=strict,
                                       without_labels=without_labels, ground_truth=ground_truth)
    _check_data_fits_task(dataset, task)
    if real_labels is not None and not task.maps_classes:
        raise ConfigError(f"--real-labels are ImageNet's single-label validation labels: not for a {task.name} task")
    model.check_input_size(*preprocessing.img_size)
    mapping = check_classes(dataset, model, task, class_map=class_map)
    _apply_preprocessing(dataset, model, preprocessing)
    scored = with_real_labels(dataset, model, real_labels) if real_labels is not None else dataset
    subset = evenly_spaced(scored, limit) if limit is not None else scored
    loader = create_loader(subset, batch_size, workers, device)
    runner, run_precision = _runner(model, device, precision, channels_last, preprocessing,
                                    dict(calibration=calibration, calibration_images=calibration_images,
                                         int8_backend=int8_backend))
    settings = _settings(batch_size, workers, limit, precision, calibration, runner)
    return Validation(model, dataset, subset, loader, preprocessing, device, precision, channels_last, settings,
                      task, threshold, mapping, str(real_labels) if real_labels is not None else None,
                      runner, run_precision)


def _runner(model: nn.Module, device: torch.device, precision: str, channels_last: bool,
            preprocessing: Preprocessing, deployment: dict) -> tuple[nn.Module, str]:
    """The model on its device (channels-last if asked) and what runs for ``precision`` (its deployment
    form for bf16 and int8: :func:`~tresnet.deploy.inference.inference_model` with ``deployment``)."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return inference_model(model, precision, device, img_size=preprocessing.img_size[0], **deployment)


def _apply_preprocessing(dataset: ValidationData, model: nn.Module, preprocessing: Preprocessing) -> None:
    """Give the data the preprocessing: a file set its transform, a bundled set is drawn at its size."""
    if isinstance(dataset, BundledValidationSet):
        val_split, split_seed = bundled_split(model, dataset.root)
        dataset.prepare(preprocessing, val_split=val_split, split_seed=split_seed)
    else:
        dataset.transform = preprocessing.transform()


def _settings(batch_size: int, workers: int, limit: int | None, precision: str, calibration,
              runner: nn.Module) -> dict:
    """The run's settings for the report; int8 adds its calibration folder and image count."""
    settings = dict(batch_size=batch_size, workers=workers, limit=limit)
    if precision == "int8":
        settings.update(calibration=None if isinstance(calibration, torch.Tensor) else str(calibration),
                        calibration_images=runner.calibrated_on)
    return settings


def validate(model: nn.Module, data: str | os.PathLike | ValidationData, *, progress: bool = True,
             **options) -> dict:
    """Validate ``model`` on ``data`` with the model's own preprocessing; the report ``tresnet validate
    --json`` writes.

    ``options`` are those of :func:`prepare_validation` (``task`` None: the model's). Both reports hold
    ``task``, ``images``, ``skipped`` (unreadable files, counted rather than evaluated) and
    ``skipped_files``, ``loss``, ``seconds``, ``img_per_s``, the model, checkpoint and settings. Multiclass:
    ``top1``/``top5`` in percent and ``class_mapping`` (:meth:`ClassMapping.to_dict`); when the data covers
    a subset of the classes (the figures are then over that subset) also ``top1_all_classes`` /
    ``top5_all_classes``; with ReaL labels ``real_top1``, ``real_top5`` and ``real_images``. Multilabel: ``map``, ``ap_per_class`` (null for a class without
    positives in the data), ``cp``, ``cr``, ``cf1``, ``op``, ``or``, ``of1``, all in percent, with
    ``classes``, ``threshold`` (a probability), ``classes_with_positives`` and ``annotations``.
    """
    return prepare_validation(model, data, **options).run(progress)


__all__ = ["Validation", "ValidationData", "check_classes", "evenly_spaced",
           "open_validation_data", "prepare_validation", "validate", "with_real_labels"]

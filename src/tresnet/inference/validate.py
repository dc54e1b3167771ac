"""Validate a classifier: what ``tresnet validate`` runs. A single-label model on a folder of class
sub-folders, mapped to the model's outputs by :func:`tresnet.data.class_mapping.resolve_class_mapping`
(synsets, class indices, sorted names or a class map; a subset of the classes is scored over those only),
or on a flat folder with a ground-truth file, optionally with ReaL labels: top-1 / top-5; a multi-label
model on COCO-style annotations or a labels CSV (:func:`tresnet.data.multilabel.open_multilabel`): mAP and
thresholded precision / recall.

    import tresnet
    from tresnet.data.sources import ValidationOptions
    from tresnet.inference.evaluate import Scoring
    from tresnet.inference.runner import RunOptions
    from tresnet.inference.validate import validate

    model = tresnet.create_model("tresnet_m", checkpoint_path="tresnet_m.pth")
    report = validate(model, "imagenet/val", batch_size=128, workers=8, run=RunOptions(precision="amp"))
    print(report.top1, report.top5)

    report = validate(model, "imagenet/val_flat", data_options=ValidationOptions(ground_truth="LOC_val_solution.csv"),
                      scoring=Scoring(real_labels="real.json"))
    print(report.top1, report.real["real_top1"])

    model = tresnet.create_model(checkpoint_path="tresnet_l_448_coco.pth")  # a multi-label checkpoint
    report = validate(model, "coco/val2014",
                      data_options=ValidationOptions(annotations="coco/annotations/instances_val2014.json"))
    print(report.map, report.threshold_metrics["cf1"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from tresnet.data import ImageFolderDataset, create_loader
from tresnet.data.bundled import BundledValidationSet
from tresnet.data.class_mapping import ClassMapping, name_mismatch, read_class_map, resolve_class_mapping
from tresnet.data.class_names import IMAGENET_NUM_CLASSES
from tresnet.data.datasets import GroundTruthDataset, RealLabelled
from tresnet.data.detection import CocoDetection
from tresnet.data.imagenet import read_real_labels
from tresnet.data.multilabel import MultiLabelDataset
from tresnet.data.sources import ValidationData, ValidationOptions, find_source, usages
from tresnet.data.transforms import Preprocessing
from tresnet.errors import ConfigError, DataError
from tresnet.inference.bundled import bundled_split
from tresnet.inference.evaluate import Scoring, evaluate
from tresnet.inference.runner import InferenceModel, RunOptions, make_inference_model
from tresnet.runtime import resolve_device
from tresnet.tasks import DEFAULT_TASK, DEFAULT_THRESHOLD, Task, get_task


def open_validation_data(data: str | os.PathLike, *, task: str | Task = DEFAULT_TASK,
                         options: ValidationOptions | None = None) -> ValidationData:
    """The set to validate a ``task`` model on, opened by the data source that reads ``data`` for that task
    (:func:`tresnet.data.sources.find_source`): a bundled set by name (``digits``, ``digits-multilabel``:
    :class:`~tresnet.data.bundled.BundledValidationSet`, the validation split its training used), a folder of
    class sub-folders or, with ``options.ground_truth``, a flat folder labelled by that file, a published set
    ``NAME:ROOT`` (its test split, or the one ``options.split`` names:
    :class:`~tresnet.data.published.PublishedDataset`) (multiclass), COCO ``options.annotations`` of an images
    folder or a labels CSV with its ``options.classes`` (multilabel).

    Raises :class:`ConfigError` for data of another task and options the source does not read, and
    :class:`DataError` for data that cannot be read (see the readers).
    """
    task = get_task(task)
    options = options or ValidationOptions()
    source = find_source(data, task.name, options.annotations)
    if options.split is not None and options.split not in source.splits:
        offered = (f"its splits are {', '.join(source.splits)}" if source.splits else
                   "only a published set (--data NAME:ROOT) has named splits")
        raise ConfigError(f"--split {options.split} does not apply to --data {data}: {offered}")
    return source.validation_data(data, options)


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
    num_classes = cast(int, model.num_classes)
    mapping = resolve_class_mapping(
        dataset.classes, num_classes, checkpoint_names=names, data=data,
        class_map=read_class_map(class_map, num_classes) if class_map is not None else None,
        class_map_source=str(class_map) if class_map is not None else None)
    # a task of one class per image reads class folders or a bundled set: both renumber their targets
    cast(ImageFolderDataset | BundledValidationSet, dataset).map_classes(mapping.indices)
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
    size = len(cast(Sized, dataset))
    if limit >= size:
        return dataset
    return Subset(dataset, np.linspace(0, size - 1, num=limit).round().astype(int).tolist())


@dataclass
class Validation:
    """A validation ready to run: the data (the opened set, the scored subset and its loader), the preprocessing,
    the inference model, and how its outputs are scored (task, threshold, class mapping, ReaL labels)."""

    model: nn.Module
    dataset: ValidationData
    subset: Dataset
    loader: torch.utils.data.DataLoader
    preprocessing: Preprocessing
    inference: InferenceModel
    settings: dict
    task: Task
    threshold: float = DEFAULT_THRESHOLD
    class_mapping: ClassMapping | None = None
    real_labels: str | None = None
    results_file: str | None = None  # where the last run wrote each image's predictions (detection's COCO results)

    @property
    def img_size(self) -> int:
        """The side of the (square) input images."""
        return self.preprocessing.img_size[0]

    @property
    def device(self) -> torch.device:
        return self.inference.device

    @property
    def precision(self) -> str:
        return self.inference.options.precision

    @property
    def channels_last(self) -> bool:
        return self.inference.options.channels_last

    def run(self, progress: bool = True, results_file: str | os.PathLike | None = None) -> Any:
        """Evaluate and return the task's report (see :func:`validate`). ``results_file``: where to write each
        image's predictions in the data's own format (detection: COCO results, with the data's category ids), for
        any other tool to score; :class:`ConfigError` for a task that has no such format."""
        if results_file is not None:
            self.task.check_run(self.inference.options.number_format, results_file)
        self.results_file = str(results_file) if results_file is not None else None
        mapping = self.class_mapping
        tally = self.task.tally(self.device, threshold=self.threshold,
                                class_subset=mapping.covered if mapping is not None and mapping.masked else None,
                                data=self.dataset)
        scores = evaluate(self.inference.runner, self.loader, tally, precision=self.precision,
                          channels_last=self.channels_last, progress=progress, desc="validate", task=self.task)
        if self.results_file is not None:
            self.task.write_results(tally, self.results_file)
        return self.task.report(self, scores)


def prepare_validation(model: nn.Module, data: str | os.PathLike | ValidationData, *,
                       data_options: ValidationOptions | None = None, preprocessing: Preprocessing | None = None,
                       device: str | torch.device = "auto", run: RunOptions | None = None,
                       scoring: Scoring | None = None, batch_size: int = 64, workers: int = 0,
                       limit: int | None = None) -> Validation:
    """Compose a validation: open the data, make the inference model, and set up how it is scored;
    :meth:`Validation.run` evaluates.

    ``data`` is a dataset already open, or a path (or a bundled set's name) that :func:`open_validation_data`
    opens with ``data_options`` (COCO annotations, a CSV's classes, a flat folder's ground truth, strictness).
    ``preprocessing`` None is the model's (:meth:`Preprocessing.of`: the one its checkpoint recorded, else the
    registered model's); pass ``Preprocessing.of(model, img_size=..., crop_pct=...)`` to override. ``run`` says
    how the model runs (:class:`~tresnet.inference.runner.RunOptions`: autocast precision, number format,
    channels-last, int8 calibration); ``scoring`` how its outputs are read
    (:class:`~tresnet.inference.evaluate.Scoring`: task, threshold, class map, ReaL labels). ``limit`` takes that
    many images evenly over the data.

    Raises :class:`DataError` (missing or empty data, classes that do not match the model, data that
    does not fit the task), :class:`ConfigError` (bad device, precision or number format, limit, task or
    threshold, a task other than the checkpoint's) and :class:`~tresnet.errors.InputSizeError` (a size the model
    cannot take).
    """
    device = resolve_device(device)
    run = (run or RunOptions()).check(device)
    scoring = scoring or Scoring()
    task, threshold = scoring.resolve(model)
    task.check_run(run.number_format)
    preprocessing = preprocessing or Preprocessing.of(model)
    if isinstance(data, ImageFolderDataset | MultiLabelDataset | BundledValidationSet | CocoDetection):
        dataset = data
    else:
        dataset = open_validation_data(data, task=task, options=data_options)
    _check_data_fits_task(dataset, task)
    if scoring.real_labels is not None and not task.maps_classes:
        raise ConfigError(f"--real-labels are ImageNet's single-label validation labels: not for a {task.name} task")
    task.check_input_size(model, *preprocessing.img_size)
    mapping = check_classes(dataset, model, task, class_map=scoring.class_map)
    _apply_preprocessing(dataset, model, preprocessing, task)
    real_labels = scoring.real_labels
    # ReaL labels name ImageNet validation files: a multiclass task's image folder
    folder = cast(ImageFolderDataset, dataset)
    scored = with_real_labels(folder, model, real_labels) if real_labels is not None else dataset
    subset = evenly_spaced(scored, limit) if limit is not None else scored
    loader = create_loader(subset, batch_size, workers, device)
    inference = make_inference_model(model, device, run, img_size=preprocessing.img_size[0])
    settings = dict(batch_size=batch_size, workers=workers, limit=limit, **inference.settings())
    return Validation(model, dataset, subset, loader, preprocessing, inference, settings, task, threshold, mapping,
                      str(real_labels) if real_labels is not None else None)


def _apply_preprocessing(dataset: ValidationData, model: nn.Module, preprocessing: Preprocessing, task: Task) -> None:
    """Give the data the preprocessing: a file set its transform (the task's), a bundled set is drawn at its size."""
    if isinstance(dataset, BundledValidationSet):
        val_split, split_seed = bundled_split(model, dataset.root)
        dataset.prepare(preprocessing, val_split=val_split, split_seed=split_seed)
    else:
        dataset.transform = task.eval_transform(preprocessing)


def validate(model: nn.Module, data: str | os.PathLike | ValidationData, *, progress: bool = True,
             results_file: str | os.PathLike | None = None, **options) -> Any:
    """Validate ``model`` on ``data`` with the model's own preprocessing; the report ``tresnet validate
    --json`` writes.

    ``options`` are those of :func:`prepare_validation`; ``results_file`` that of :meth:`Validation.run`. The report is the task's (``to_dict()`` is the JSON;
    ``lines()`` what the command prints). Both tasks' reports hold
    ``task``, ``images``, ``skipped`` (unreadable files, counted rather than evaluated) and
    ``skipped_files``, ``loss``, ``seconds``, ``img_per_s``, the model, checkpoint and settings. Multiclass:
    ``top1``/``top5`` in percent and ``class_mapping`` (:meth:`ClassMapping.to_dict`); when the data covers
    a subset of the classes (the figures are then over that subset) also ``top1_all_classes`` /
    ``top5_all_classes``; with ReaL labels ``real_top1``, ``real_top5`` and ``real_images``. Multilabel: ``map``, ``ap_per_class`` (null for a class without
    positives in the data), ``cp``, ``cr``, ``cf1``, ``op``, ``or``, ``of1``, all in percent, with
    ``classes``, ``threshold`` (a probability), ``classes_with_positives`` and ``annotations``.
    """
    return prepare_validation(model, data, **options).run(progress, results_file)


__all__ = ["Validation", "ValidationData", "check_classes", "evenly_spaced",
           "open_validation_data", "prepare_validation", "validate", "with_real_labels"]

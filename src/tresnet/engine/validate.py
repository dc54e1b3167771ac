"""Validate a classifier: what ``tresnet validate`` runs. A single-label model on a folder of class
sub-folders, mapped to the model's outputs by :func:`tresnet.data.class_mapping.resolve_class_mapping`
(synsets, class indices, sorted names or a class map; a subset of the classes is scored over those only),
or on a flat folder with a ground-truth file, optionally with ReaL labels: top-1 / top-5; a multi-label
model on COCO-style annotations or a labels CSV (:func:`tresnet.data.multilabel.open_multilabel`): mAP and
thresholded precision / recall.

    import tresnet
    from tresnet.engine.validate import validate

    model = tresnet.create_model("tresnet_m", checkpoint_path="tresnet_m.pth")
    report = validate(model, "imagenet/val", batch_size=128, workers=8, precision="amp")
    print(report["top1"], report["top5"])

    report = validate(model, "imagenet/val_flat", ground_truth="LOC_val_solution.csv", real_labels="real.json")
    print(report["top1"], report["real_top1"])

    model = tresnet.create_model(checkpoint_path="tresnet_l_448_coco.pth")  # a multi-label checkpoint
    report = validate(model, "coco/val2014", annotations="coco/annotations/instances_val2014.json")
    print(report["map"], report["cf1"], report["of1"])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from tresnet.data import ImageFolderDataset, create_loader
from tresnet.data.bundled import BUNDLED_SETS, BundledValidationSet, bundled_set
from tresnet.data.class_mapping import ClassMapping, name_mismatch, read_class_map, resolve_class_mapping
from tresnet.data.class_names import IMAGENET_NUM_CLASSES
from tresnet.data.datasets import GroundTruthDataset, RealLabelled
from tresnet.data.imagenet import read_real_labels
from tresnet.data.multilabel import MultiLabelDataset, open_multilabel
from tresnet.data.transforms import Preprocessing
from tresnet.deploy.inference import check_inference_options, inference_model
from tresnet.engine.bundled import bundled_split
from tresnet.engine.evaluate import evaluate, evaluate_multilabel, model_threshold, resolve_task
from tresnet.errors import ConfigError, DataError
from tresnet.runtime import resolve_device
from tresnet.tasks import DEFAULT_THRESHOLD, MULTICLASS, MULTILABEL, check_task, check_threshold

ValidationData = ImageFolderDataset | MultiLabelDataset | BundledValidationSet

_MULTILABEL_DATA = "pass --annotations FILE (COCO json, with --data the images folder) or --data labels.csv"


def open_validation_data(data: str | os.PathLike, *, task: str = MULTICLASS,
                         annotations: str | os.PathLike | None = None,
                         classes: Sequence[str] | str | os.PathLike | None = None, strict: bool = False,
                         without_labels: str = "skip",
                         ground_truth: str | os.PathLike | None = None) -> ValidationData:
    """The set to validate a ``task`` model on: a bundled set by name (``digits``, ``digits-multilabel``:
    :class:`~tresnet.data.bundled.BundledValidationSet`, the validation split its training used), a folder
    of class sub-folders (multiclass), or with ``ground_truth`` the images of ``data`` labelled by that file
    (:class:`GroundTruthDataset`), else :func:`~tresnet.data.multilabel.open_multilabel`'s ``data`` with
    ``annotations`` / ``classes``.

    Raises :class:`ConfigError` for ``annotations`` or ``classes`` with a multiclass task (``ground_truth``
    with a multilabel one), and :class:`DataError` for data that cannot be read (see the readers).
    """
    check_task(task)
    if bundled_set(data) is not None:
        if annotations is not None or classes is not None or ground_truth is not None:
            raise ConfigError(f"{data} is a bundled data set with its own labels: drop --annotations, --classes "
                              f"and --ground-truth")
        return BundledValidationSet(str(data))
    if task == MULTICLASS:
        if annotations is not None or classes is not None:
            raise ConfigError("--annotations and --classes describe multi-label data, but the task is multiclass: "
                              "pass --task multilabel")
        if ground_truth is not None:
            return GroundTruthDataset(data, ground_truth, strict=strict)
        return ImageFolderDataset(data, strict=strict)
    if ground_truth is not None:
        raise ConfigError("--ground-truth labels ImageNet validation images, one class each: it does not apply to "
                          "a multilabel task")
    return open_multilabel(data, annotations=annotations, classes=classes, strict=strict,
                           without_labels=without_labels)


def _data_task(dataset: ValidationData) -> str:
    """The task a validation set's targets serve."""
    return getattr(dataset, "task", MULTILABEL if isinstance(dataset, MultiLabelDataset) else MULTICLASS)


def _check_data_fits_task(dataset: ValidationData, task: str) -> None:
    if isinstance(dataset, BundledValidationSet) and task != dataset.task:
        other = next(name for name, spec in BUNDLED_SETS.items() if spec.task == task)
        raise DataError(f"{dataset.root} is a {dataset.task} set and the model is {task}: use --data {other}")
    if task == MULTILABEL and _data_task(dataset) != MULTILABEL:
        raise DataError(f"a multilabel validation needs multi-label targets, not the class folders of "
                        f"{dataset.root}: {_MULTILABEL_DATA} (or --task multiclass)")
    if task == MULTICLASS and _data_task(dataset) == MULTILABEL:
        raise DataError(f"{dataset.source} holds multi-label targets but the task is multiclass: "
                        f"pass --task multilabel")


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


def check_classes(dataset: ValidationData, model: nn.Module, *,
                  class_map: str | os.PathLike | None = None) -> ClassMapping | None:
    """Match the data's classes to the model's outputs: for a folder (or ground-truth file) the
    :class:`~tresnet.data.class_mapping.ClassMapping` of
    :func:`~tresnet.data.class_mapping.resolve_class_mapping` (``class_map``: a class-map file), applied
    to the dataset's targets; for multi-label annotations a check that they name one class per output,
    as the checkpoint names them (None is returned). Raises :class:`DataError` when they do not fit.
    """
    names = _checkpoint_class_names(model)
    if _data_task(dataset) == MULTILABEL:
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
    task: str = MULTICLASS
    threshold: float = DEFAULT_THRESHOLD
    class_mapping: ClassMapping | None = None
    real_labels: str | None = None
    runner: nn.Module | None = None  # what runs: the model, or its bf16 / int8 deployment form
    run_precision: str | None = None  # the autocast it runs under

    @property
    def img_size(self) -> int:
        """The side of the (square) input images."""
        return self.preprocessing.img_size[0]

    def run(self, progress: bool = True) -> dict:
        """Evaluate and return the report (see :func:`validate`)."""
        runner = self.runner if self.runner is not None else self.model
        precision = self.run_precision or self.precision
        if self.task == MULTILABEL:
            result = evaluate_multilabel(runner, self.loader, self.device, precision=precision,
                                         channels_last=self.channels_last, progress=progress, desc="validate",
                                         threshold=self.threshold)
            return _multilabel_report(self, result)
        mapping = self.class_mapping
        result = evaluate(runner, self.loader, self.device, precision=precision,
                          channels_last=self.channels_last, progress=progress, desc="validate",
                          class_subset=mapping.covered if mapping is not None and mapping.masked else None)
        return _report(self, result)


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
    if real_labels is not None and task == MULTILABEL:
        raise ConfigError("--real-labels are ImageNet's single-label validation labels: not for a multilabel task")
    model.check_input_size(*preprocessing.img_size)
    mapping = check_classes(dataset, model, class_map=class_map)
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


def _path_or_none(path: os.PathLike | None) -> str | None:
    return None if path is None else str(path)


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


def _multilabel_report(run: Validation, result: dict) -> dict:
    info = getattr(run.model, "checkpoint_info", None)
    dataset = run.dataset
    return dict(
        model=run.model.pretrained_cfg["model"],
        checkpoint=str(info.path) if info is not None else None,
        checkpoint_format=info.format if info is not None else None,
        task=MULTILABEL,
        data=str(dataset.root),
        annotations=str(dataset.source),
        num_classes=run.model.num_classes,
        classes=list(dataset.classes),
        img_size=run.img_size,
        preprocessing=run.preprocessing.to_dict(),
        map=_percent(result["map"]),
        ap_per_class=[_percent(ap) for ap in result["ap_per_class"]],
        **{key: _percent(result[key]) for key in ("cp", "cr", "cf1", "op", "or", "of1")},
        metric_unit="percent",
        threshold=result["threshold"],
        classes_with_positives=result["classes_with_positives"],
        loss=result["loss"],
        images=result["images"],
        skipped=dataset.skipped,
        skipped_files=sorted(dataset.skipped_files),
        seconds=result["seconds"],
        img_per_s=result["img_per_s"],
        device=str(run.device),
        precision=run.precision,
        channels_last=run.channels_last,
        **run.settings,
    )


def _subset_and_real_figures(run: Validation, result: dict) -> dict:
    """The prediction over all classes when a subset was masked, and the ReaL figures, in percent."""
    figures = {}
    if "top1_all_classes" in result:
        figures.update(top1_all_classes=100.0 * result["top1_all_classes"],
                       top5_all_classes=100.0 * result["top5_all_classes"])
    if run.real_labels is not None:
        figures.update(real_labels=run.real_labels, real_top1=_percent(result["real_top1"]),
                       real_top5=_percent(result["real_top5"]), real_images=result["real_images"])
    return figures


def _report(run: Validation, result: dict) -> dict:
    info = getattr(run.model, "checkpoint_info", None)
    return dict(
        model=run.model.pretrained_cfg["model"],
        checkpoint=str(info.path) if info is not None else None,
        checkpoint_format=info.format if info is not None else None,
        task=MULTICLASS,
        data=str(run.dataset.root),
        ground_truth=_path_or_none(getattr(run.dataset, "ground_truth", None)),
        num_classes=run.model.num_classes,
        class_mapping=run.class_mapping.to_dict() if run.class_mapping is not None else None,
        img_size=run.img_size,
        preprocessing=run.preprocessing.to_dict(),
        top1=100.0 * result["top1"],
        top5=100.0 * result["top5"],
        **_subset_and_real_figures(run, result),
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

"""Where images and labels come from: a registry of data sources, each declaring the tasks it serves.

``--data`` names a bundled set (``digits``, ``digits-multilabel``), a public fine-tuning set as distributed
(``NAME:ROOT``: ``cifar10:~/data``, see :mod:`tresnet.data.published`), or a path that one of the file sources
reads: ImageNet-style class folders (``folders``, with a ground-truth file for a flat folder), a COCO instances
json of an images folder (``coco``), or a labels CSV (``csv``). :func:`find_source` picks the source of a ``--data``
for a task: the one it names, else the file source that recognises it (``--annotations`` given: COCO; a
``.csv``: CSV), else the task's default file source. A source opens the training pair
(:meth:`DataSource.training_data`: augmented train set, evaluated validation set, classes) and a validation set
(:meth:`DataSource.validation_data`). A new source is one :func:`register_source` call; the task names it
serves are the words of :mod:`tresnet.tasks`.

The training options a source reads are a run's configuration fields (``val_split``, ``split_seed``,
``annotations``, ``val_data``, ``val_annotations``, ``classes``, the augmentation); an option it does not read
is refused with a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from tresnet.data.bundled import BUNDLED_SETS, BundledSet, BundledValidationSet
from tresnet.data.datasets import GroundTruthDataset, ImageFolderDataset
from tresnet.data.detection import CocoDetection, create_detection_eval_transform
from tresnet.data.multilabel import MultiLabelDataset, open_multilabel
from tresnet.data.published import PUBLISHED_SETS, PublishedDataset, PublishedSet, published_set
from tresnet.data.splits import stratified_split
from tresnet.data.train_transforms import create_tensor_eval_transform
from tresnet.data.transforms import Preprocessing, create_eval_transform, normalisation
from tresnet.errors import ConfigError, DataError

# What a source's validation_data opens (a published set and a ground-truth folder are image folders).
ValidationData = ImageFolderDataset | MultiLabelDataset | BundledValidationSet | CocoDetection

TRAIN_FOLDERS = ("train",)
VAL_FOLDERS = ("val", "validation")
# The training options that describe files of labels, refused by a source that does not read them.
LABEL_FILE_OPTIONS = ("annotations", "val_annotations", "classes")


@dataclass
class TrainData:
    """The two sets of a run, its classes, a line for the log, and the preprocessing of its validation
    (what the run's checkpoints record, so that every command evaluates them the same way)."""

    train: Dataset
    val: Dataset
    class_names: list[str]
    description: str
    preprocessing: Preprocessing | None = None
    source: DataSource | None = None  # where they came from (whether it is held in memory, for one)


@dataclass(frozen=True)
class ValidationOptions:
    """What ``validate`` may say about its data besides the path: COCO ``annotations``, the ``classes`` of a
    CSV, a ``ground_truth`` file of a flat folder, and how to treat unreadable files or images without labels."""

    annotations: str | os.PathLike | None = None
    classes: Sequence[str] | str | os.PathLike | None = None
    ground_truth: str | os.PathLike | None = None
    strict: bool = False
    without_labels: str = "skip"
    split: str | None = None

    def given(self, names: Sequence[str]) -> list[str]:
        return [name for name in names if getattr(self, name) is not None]


class DataSource:
    """A kind of data: its name, the tasks it serves, how ``--data`` names it, and how to open it.

    A training run hands its methods its ``data`` section (:class:`tresnet.training.sections.DataSection`:
    ``train``, ``annotations``, ``val``, ``val_annotations``, ``classes``, ``val_split``, ``split_seed``,
    ``crop_pct``, ``crop_mode``)."""

    name: str
    tasks: tuple[str, ...]
    usage: str  # how to name it on the command line, for messages
    embedded: bool = False  # held in memory (no worker processes; its split is recorded in checkpoints)
    splits: tuple[str, ...] = ()  # the named splits validation may take (ValidationOptions.split)

    def claims(self, data: str | os.PathLike, annotations: Any = None) -> bool:
        """Whether ``data`` (with ``annotations``) is unmistakably this source's."""
        return False

    def misnamed(self, data: str | os.PathLike) -> str | None:
        """What to pass instead when ``data`` looks meant for this source but does not name it (None: it does not)."""
        return None

    def check(self, section: Any) -> None:
        """:class:`ConfigError` for a training option this source does not read."""

    def preprocessing(self, section: Any, pretrained_cfg: dict, img_size: int) -> Preprocessing:
        """The evaluation preprocessing of a run: the model's at ``img_size``, with the run's crop overrides."""
        return Preprocessing.of(eval_config(pretrained_cfg, section), img_size=img_size)

    def training_data(self, section: Any, pretrained_cfg: dict, train_transform: Callable, img_size: int) -> TrainData:
        raise NotImplementedError

    def validation_data(self, data: str | os.PathLike, options: ValidationOptions) -> ValidationData:
        raise NotImplementedError


def eval_config(pretrained_cfg: dict, section: Any) -> dict:
    """The model's preprocessing configuration with the run's ``crop_pct`` / ``crop_mode`` overrides."""
    out = dict(pretrained_cfg)
    if section.crop_pct is not None:
        out["crop_pct"] = section.crop_pct
    if section.crop_mode is not None:
        out["crop_mode"] = section.crop_mode
    return out


def _mean_std(pretrained_cfg: dict) -> dict:
    """The model's input normalisation as ``mean`` / ``std`` keywords (None for TResNet's [0, 1])."""
    norm = normalisation(pretrained_cfg)
    return dict(mean=norm[0], std=norm[1]) if norm is not None else {}


class BundledSource(DataSource):
    """A bundled set (:data:`tresnet.data.bundled.BUNDLED_SETS`), drawn in memory; named by its name."""

    embedded = True

    def __init__(self, spec: BundledSet) -> None:
        self.spec, self.name, self.tasks, self.usage = spec, spec.name, (spec.task,), f"--data {spec.name}"

    def claims(self, data: str | os.PathLike, annotations: Any = None) -> bool:
        return str(data) == self.name

    def check(self, section: Any) -> None:
        if section.annotations or section.val:
            raise ConfigError(f"--data {self.name} is embedded: it takes no --annotations or --val-data")

    def preprocessing(self, section: Any, pretrained_cfg: dict, img_size: int) -> Preprocessing:
        # drawn at the size and evaluated whole: a squash to the size leaves such an image as it is
        return Preprocessing.of(pretrained_cfg, img_size=img_size, crop_mode="squash")

    def training_data(self, section: Any, pretrained_cfg: dict, train_transform: Callable, img_size: int) -> TrainData:
        eval_transform = (create_detection_eval_transform() if self.spec.boxes
                          else create_tensor_eval_transform(**_mean_std(pretrained_cfg)))
        train = self.spec.draw("train", img_size, train_transform, section.val_split, section.split_seed)
        val = self.spec.draw("val", img_size, eval_transform, section.val_split, section.split_seed)
        return TrainData(train, val, list(train.classes), f"{self.spec.title}: {len(train)} train / {len(val)} val "
                                                          f"images at {img_size}px")

    def validation_data(self, data: str | os.PathLike, options: ValidationOptions) -> ValidationData:
        if options.given(("annotations", "classes", "ground_truth")):
            raise ConfigError(f"{data} is a bundled data set with its own labels: drop --annotations, --classes "
                              f"and --ground-truth")
        return BundledValidationSet(str(data))


def _published_root(data: str | os.PathLike) -> str:
    """ROOT of ``NAME:ROOT`` data that a :class:`PublishedSource` claimed."""
    named = published_set(data)
    assert named is not None  # the source claimed it
    return named[1]


class PublishedSource(DataSource):
    """A public fine-tuning set as distributed (:data:`tresnet.data.published.PUBLISHED_SETS`), named ``NAME:ROOT``.
    A run validates on the split ``val`` names (``--val-data``: ``val`` where the set has one, or ``test``, the
    default) and trains on the set's other splits; validation evaluates the test split unless
    ``ValidationOptions.split`` names another."""

    tasks = ("multiclass",)

    def __init__(self, spec: PublishedSet) -> None:
        self.spec, self.name, self.splits = spec, spec.name, spec.splits
        # one usage for all of them, so that a message lists them once
        self.usage = f"--data NAME:ROOT (a public fine-tuning set as distributed: {', '.join(PUBLISHED_SETS)})"

    def claims(self, data: str | os.PathLike, annotations: Any = None) -> bool:
        named = published_set(data)
        return named is not None and named[0] is self.spec

    def misnamed(self, data: str | os.PathLike) -> str | None:
        if str(data) != self.name or Path(data).expanduser().exists():
            return None
        return f"{data} is a published set without its folder: pass --data {data}:ROOT, ROOT the folder that holds " \
               f"{self.spec.folder}/"

    def check(self, section: Any) -> None:
        given = [name for name in LABEL_FILE_OPTIONS if getattr(section, name)]
        if given:
            raise ConfigError(f"{self.spec.title} has its own labels: drop {', '.join(given)}")
        if section.val is not None and section.val not in self.spec.eval_splits:
            raise ConfigError(f"--val-data with --data {self.name}:ROOT names the split validated on: "
                              f"{' or '.join(self.spec.eval_splits)} (default {self.spec.test_split}), not "
                              f"{section.val!r}")

    def preprocessing(self, section: Any, pretrained_cfg: dict, img_size: int) -> Preprocessing:
        if self.spec.native_size is not None and section.crop_pct is None and section.crop_mode is None:
            # small images upscaled to the input: a centre crop would cut their border away
            return Preprocessing.of(eval_config(pretrained_cfg, section), img_size=img_size, crop_mode="squash")
        return super().preprocessing(section, pretrained_cfg, img_size)

    def training_data(self, section: Any, pretrained_cfg: dict, train_transform: Callable, img_size: int) -> TrainData:
        root, val_split = _published_root(section.train), section.val or self.spec.test_split
        train = PublishedDataset(self.spec, root, self.spec.train_splits(val_split), train_transform)
        val = PublishedDataset(self.spec, root, (val_split,),
                               self.preprocessing(section, pretrained_cfg, img_size).transform())
        if val.classes != train.classes:
            raise DataError(f"{self.spec.title}: the {val_split} split names other classes than the training split "
                            f"({len(val.classes)} against {len(train.classes)}): a split list is incomplete")
        side = self.spec.native_size
        resized = f"; its {side}x{side} images are resized to {img_size}x{img_size}" if side and side != img_size else ""
        return TrainData(train, val, list(train.classes),
                         f"{self.spec.title} at {train.root}: {len(train)} {'+'.join(train.splits)} / {len(val)} "
                         f"{val_split} images, {len(train.classes)} classes at {img_size}px{resized}")

    def validation_data(self, data: str | os.PathLike, options: ValidationOptions) -> ValidationData:
        given = options.given(("annotations", "classes", "ground_truth"))
        if given:
            raise ConfigError(f"{self.spec.title} has its own labels: drop --{', --'.join(given).replace('_', '-')}")
        return PublishedDataset(self.spec, _published_root(data), (options.split or self.spec.test_split,),
                                strict=options.strict)


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _check_same_classes(train: ImageFolderDataset, val: ImageFolderDataset) -> None:
    if val.classes != train.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:3]
        only_val = sorted(set(val.classes) - set(train.classes))[:3]
        raise DataError(f"{train.root} and {val.root} have different classes (only in train: {only_train}, "
                        f"only in val: {only_val}); they must hold the same class folders")


class ImageFolders(DataSource):
    """ImageNet-style class folders: ``train/`` with ``val/`` (or ``validation/``), or one folder of class
    sub-folders from which a stratified validation split is carved; for validation a folder of class
    sub-folders, or a flat folder labelled by a ground-truth file."""

    name, tasks = "folders", ("multiclass",)
    usage = "--data a folder of class sub-folders (ImageNet-style)"

    def check(self, section: Any) -> None:
        given = [name for name in LABEL_FILE_OPTIONS if getattr(section, name)]
        if given:
            raise ConfigError(f"{', '.join(given)} describe multilabel data: pass --task multilabel, or drop them")

    def training_data(self, section: Any, pretrained_cfg: dict, train_transform: Callable, img_size: int) -> TrainData:
        eval_transform = create_eval_transform(eval_config(pretrained_cfg, section), img_size)
        root = Path(section.train).expanduser()
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist: pass an ImageNet-style folder or 'digits'")
        train_dir = _find(root, TRAIN_FOLDERS)
        val_dir = _find(root, VAL_FOLDERS) if train_dir is not None else None
        train_full = ImageFolderDataset(train_dir or root, train_transform)
        if val_dir is None:
            return _carved_folder(section, train_full, eval_transform, img_size)
        val = ImageFolderDataset(val_dir, eval_transform)
        _check_same_classes(train_full, val)
        described = f"{train_dir} ({len(train_full)} images) / {val_dir} ({len(val)} images)"
        return TrainData(train_full, val, list(train_full.classes),
                         f"{described}, {len(train_full.classes)} classes at {img_size}px")

    def validation_data(self, data: str | os.PathLike, options: ValidationOptions) -> ValidationData:
        if options.given(("annotations", "classes")):
            raise ConfigError("--annotations and --classes describe multi-label data, but the task is multiclass: "
                              "pass --task multilabel")
        if options.ground_truth is not None:
            return GroundTruthDataset(data, options.ground_truth, strict=options.strict)
        return ImageFolderDataset(data, strict=options.strict)


def _carved_folder(section: Any, train_full: ImageFolderDataset, eval_transform, img_size: int) -> TrainData:
    """Val carved out of the one folder there is: a stratified ``val_split`` drawn with ``split_seed``."""
    train_dir = train_full.root
    train_idx, val_idx = stratified_split(train_full.targets, section.val_split, section.split_seed)
    if not val_idx or not train_idx:
        raise DataError(f"{train_dir} has too few images ({len(train_full)}) to carve a validation split")
    val_full = ImageFolderDataset(train_dir, eval_transform)
    return TrainData(Subset(train_full, train_idx), Subset(val_full, val_idx), list(train_full.classes),
                     f"{train_dir}: {len(train_idx)} train / {len(val_idx)} val images (val carved with seed "
                     f"{section.split_seed}), {len(train_full.classes)} classes at {img_size}px")


def random_split(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random ``(train, val)`` split of ``range(count)``, val ``round(val_fraction * count)``
    indices (at least one), both sorted (multi-label sets have no single class to stratify by)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = min(count - 1, max(1, round(val_fraction * count)))
    return sorted(order[cut:]), sorted(order[:cut])


class LabelledImages(DataSource):
    """Images with their sets of labels, read by :func:`tresnet.data.multilabel.open_multilabel`: a COCO
    instances json of an images folder (``coco``) or a labels CSV (``csv``); validation from ``val_data``, else
    a seeded random ``val_split`` of the training images."""

    tasks = ("multilabel",)

    def __init__(self, name: str, usage: str, claims: Callable[[str, Any], bool]) -> None:
        self.name, self.usage, self._claims = name, usage, claims

    def claims(self, data: str | os.PathLike, annotations: Any = None) -> bool:
        return self._claims(str(data), annotations)

    def training_data(self, section: Any, pretrained_cfg: dict, train_transform: Callable, img_size: int) -> TrainData:
        eval_transform = create_eval_transform(eval_config(pretrained_cfg, section), img_size)
        train = open_multilabel(section.train, annotations=section.annotations, classes=section.classes, transform=train_transform)
        if section.val:
            val = open_multilabel(section.val, annotations=section.val_annotations, classes=section.classes or train.classes,
                                  transform=eval_transform)
            if list(val.classes) != list(train.classes):
                raise DataError(f"the classes of {val.source} differ from those of {train.source} (first: "
                                f"{list(val.classes)[:3]} vs {list(train.classes)[:3]}): they must be the same, "
                                f"in order")
            return TrainData(train, val, list(train.classes),
                             f"{train.source} ({len(train)} images) / {val.source} ({len(val)} images), "
                             f"{len(train.classes)} classes (multilabel) at {img_size}px")
        if len(train) < 2:
            raise DataError(f"{train.source} has too few images ({len(train)}) to carve a validation split")
        train_idx, val_idx = random_split(len(train), section.val_split, section.split_seed)
        val_full = copy.copy(train)
        val_full.transform, val_full.skipped_files = eval_transform, set()
        return TrainData(Subset(train, train_idx), Subset(val_full, val_idx), list(train.classes),
                         f"{train.source}: {len(train_idx)} train / {len(val_idx)} val images (val carved with "
                         f"seed {section.split_seed}), {len(train.classes)} classes (multilabel) at {img_size}px")

    def validation_data(self, data: str | os.PathLike, options: ValidationOptions) -> ValidationData:
        if options.ground_truth is not None:
            raise ConfigError("--ground-truth labels ImageNet validation images, one class each: it does not apply "
                              "to a multilabel task")
        return open_multilabel(data, annotations=options.annotations, classes=options.classes,
                               strict=options.strict, without_labels=options.without_labels)


class CocoBoxes(DataSource):
    """Images with boxes: a COCO instances json of an images folder (:class:`~tresnet.data.detection.CocoDetection`;
    images without boxes are kept as negatives); validation from ``val_data``, else a seeded random ``val_split`` of
    the training images. The detector resizes and normalises the images itself: the evaluation transform only
    converts them."""

    name, tasks = "coco-detection", ("detection",)
    usage = "--annotations FILE (a COCO instances json with boxes, with --data the images folder)"

    def claims(self, data: str | os.PathLike, annotations: Any = None) -> bool:
        return annotations is not None or str(data).lower().endswith(".json")

    def check(self, section: Any) -> None:
        if section.classes:
            raise ConfigError("--classes names a CSV's classes: a COCO file names its categories")
        if not section.annotations:
            raise ConfigError(f"detection data {section.train} needs its boxes: {self.usage}")

    def training_data(self, section: Any, pretrained_cfg: dict, train_transform: Callable, img_size: int) -> TrainData:
        eval_transform = create_detection_eval_transform()
        train = CocoDetection(section.train, section.annotations, transform=train_transform, for_training=True)
        if section.val:
            if not section.val_annotations:
                raise ConfigError("--val-data of detection needs its boxes: pass --val-annotations FILE")
            val = CocoDetection(section.val, section.val_annotations, transform=eval_transform)
            if list(val.category_ids) != list(train.category_ids):
                raise DataError(f"the categories of {val.source} differ from those of {train.source} (ids "
                                f"{list(val.category_ids)[:5]} vs {list(train.category_ids)[:5]}): they must be the same")
            return TrainData(train, val, list(train.classes), f"{train.source} ({len(train)} images) / {val.source} "
                                                               f"({len(val)} images), {len(train.classes)} classes (boxes)")
        if len(train) < 2:
            raise DataError(f"{train.source} has too few images ({len(train)}) to carve a validation split")
        train_idx, val_idx = random_split(len(train), section.val_split, section.split_seed)
        val_full = CocoDetection(section.train, section.annotations, transform=eval_transform)
        return TrainData(Subset(train, train_idx), Subset(val_full, val_idx), list(train.classes),
                         f"{train.source}: {len(train_idx)} train / {len(val_idx)} val images (val carved with seed "
                         f"{section.split_seed}), {len(train.classes)} classes (boxes)")

    def validation_data(self, data: str | os.PathLike, options: ValidationOptions) -> ValidationData:
        if options.ground_truth is not None or options.classes is not None:
            raise ConfigError("--ground-truth and --classes label classification data: a COCO file names the boxes")
        if options.annotations is None:
            raise ConfigError(f"detection data {data} needs its boxes: {self.usage}")
        return CocoDetection(data, options.annotations, transform=create_detection_eval_transform(),
                             strict=options.strict)


_SOURCES: dict[str, DataSource] = {}


def register_source(source: DataSource) -> DataSource:
    """Register ``source`` under its name (replacing one of that name); return it."""
    _SOURCES[source.name] = source
    return source


def unregister_source(name: str) -> None:
    """Remove the source called ``name``."""
    _SOURCES.pop(name, None)


def list_sources() -> list[DataSource]:
    """The registered sources, the bundled sets first."""
    return list(_SOURCES.values())


def _claiming(data: str | os.PathLike, annotations: Any = None) -> list[DataSource]:
    """The sources ``data`` (with ``annotations``) unmistakably belongs to: a bundled set it names, a COCO json (for
    labels and for boxes), a CSV; none for a plain folder, which several tasks' sources could read."""
    return [source for source in _SOURCES.values() if source.claims(data, annotations)]


def data_tasks(data: str | os.PathLike, annotations: Any = None) -> list[str]:
    """The tasks the sources that unmistakably read ``data`` (with ``annotations``) serve, in order: a bundled set's
    one, a COCO file's (multilabel: its labels; detection: its boxes); empty for a plain folder."""
    tasks = [task for source in _claiming(data, annotations) for task in source.tasks]
    return list(dict.fromkeys(tasks))


def find_source(data: str | os.PathLike, task: str, annotations: Any = None) -> DataSource:
    """The source that reads ``data`` for ``task``: the one it names or that recognises it, else the task's
    first file source. Raises :class:`ConfigError` when that source serves other tasks (naming the sources of
    ``task``), and :class:`DataError` when no source of ``task`` can read a plain path, or when ``data`` looks meant
    for a source it does not name (:meth:`DataSource.misnamed`: a published set without its ``:ROOT``)."""
    hint = next((text for text in (s.misnamed(data) for s in _SOURCES.values()) if text is not None), None)
    if hint is not None:
        raise DataError(hint)
    claiming = _claiming(data, annotations)
    source = next((s for s in claiming if task in s.tasks), claiming[0] if claiming else None)
    if source is None:
        source = next((s for s in _SOURCES.values() if task in s.tasks and not s.embedded
                       and not isinstance(s, LabelledImages)), None)
    if source is None:
        path = Path(data).expanduser()
        if path.suffix.lower() == ".json":
            raise DataError(f"{path} is an annotation file: pass the images folder as the data and --annotations "
                            f"{path}")
        raise DataError(f"{task} data {path} needs its labels: {' or '.join(usages(task))}")
    if task not in source.tasks:
        given = f"--data {data}" + (" with --annotations" if annotations is not None else "")
        raise ConfigError(f"{given} is {source.tasks[0]} data ({source.name}), but the task is {task}: pass "
                          f"--task {source.tasks[0]}, or for {task}: {' or '.join(usages(task))}")
    return source


def usages(task: str) -> list[str]:
    """How to name each source that serves ``task``, for messages."""
    return list(dict.fromkeys(source.usage for source in _SOURCES.values() if task in source.tasks))


for _spec in BUNDLED_SETS.values():
    register_source(BundledSource(_spec))
register_source(ImageFolders())
for _published in PUBLISHED_SETS.values():
    register_source(PublishedSource(_published))
register_source(LabelledImages("coco", "--annotations FILE (a COCO instances json, with --data the images folder)",
                               lambda data, annotations: annotations is not None or data.lower().endswith(".json")))
register_source(CocoBoxes())
register_source(LabelledImages("csv", "--data labels.csv ('file,labels')",
                               lambda data, annotations: data.lower().endswith(".csv")))

__all__ = ["CocoBoxes", "DataSource", "ImageFolders", "LabelledImages", "PublishedSource", "TrainData",
           "ValidationOptions", "data_tasks", "eval_config", "find_source", "list_sources", "random_split",
           "register_source", "unregister_source", "usages"]

"""The data sets of a training run, with the training augmentation and the model's eval transform; both
normalise as the model's configuration says (:func:`tresnet.data.transforms.normalisation`).

Multiclass: ImageNet-style folders (with a val split carved out when there is none) or the bundled
digits. Multilabel: COCO-format annotations of an images folder or a labels CSV
(:func:`tresnet.data.multilabel.open_multilabel`; val from ``val_data``, else a seeded random
``val_split`` of the training images), or the bundled digit mosaics (``digits-multilabel``)."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from tresnet.data.datasets import ImageFolderDataset
from tresnet.data.splits import stratified_split
from tresnet.data.transforms import Preprocessing, normalisation
from tresnet.engine.config import DIGITS, DIGITS_MULTILABEL, EMBEDDED_DATA, TrainConfig
from tresnet.errors import DataError

TRAIN_FOLDERS = ("train",)
VAL_FOLDERS = ("val", "validation")


@dataclass
class TrainData:
    """The two sets of a run, its classes, a line for the log, and the preprocessing of its validation
    (what the run's checkpoints record, so that every command evaluates them the same way)."""

    train: Dataset
    val: Dataset
    class_names: list[str]
    description: str
    preprocessing: Preprocessing | None = None


def run_preprocessing(cfg: TrainConfig, pretrained_cfg: dict, img_size: int) -> Preprocessing:
    """The evaluation preprocessing of a run: the bundled sets are drawn at ``img_size`` and evaluated whole
    (a squash to ``img_size``, which leaves an image of that size as it is); other data get the model's
    preprocessing at ``img_size`` with the run's ``crop_pct`` / ``crop_mode``."""
    if cfg.data in EMBEDDED_DATA:
        return Preprocessing.of(pretrained_cfg, img_size=img_size, crop_mode="squash")
    return Preprocessing.of(eval_config(pretrained_cfg, cfg), img_size=img_size)


def eval_config(pretrained_cfg: dict, cfg: TrainConfig) -> dict:
    """The model's preprocessing configuration with the run's ``crop_pct`` / ``crop_mode`` overrides."""
    out = dict(pretrained_cfg)
    if cfg.crop_pct is not None:
        out["crop_pct"] = cfg.crop_pct
    if cfg.crop_mode is not None:
        out["crop_mode"] = cfg.crop_mode
    return out


def carve_split(targets: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deprecated: use :func:`tresnet.data.splits.stratified_split` (the same split)."""
    warnings.warn("tresnet.engine.data.carve_split is deprecated: use tresnet.data.splits.stratified_split",
                  DeprecationWarning, stacklevel=2)
    return stratified_split(targets, val_fraction, seed)


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _mean_std(pretrained_cfg: dict) -> dict:
    """The model's input normalisation as ``mean`` / ``std`` keywords (None for TResNet's [0, 1])."""
    norm = normalisation(pretrained_cfg)
    return dict(mean=norm[0], std=norm[1]) if norm is not None else {}


def _train_transform(cfg: TrainConfig, pretrained_cfg: dict, img_size: int):
    from tresnet.data.train_transforms import create_train_transform

    return create_train_transform(
        img_size, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, auto_augment=cfg.auto_augment,
        randaugment_magnitude=cfg.randaugment_magnitude, randaugment_ops=cfg.randaugment_ops,
        random_erase=cfg.random_erase, random_erase_mode=cfg.random_erase_mode,
        interpolation=pretrained_cfg.get("interpolation", "bilinear"), crop_mode=cfg.train_crop_mode,
        cutout=cfg.cutout, **_mean_std(pretrained_cfg))


def _digits_data(cfg: TrainConfig, pretrained_cfg: dict, train_tf, img_size: int) -> TrainData:
    from tresnet.data.digits import DigitsDataset
    from tresnet.data.train_transforms import create_tensor_eval_transform

    eval_tf = create_tensor_eval_transform(**_mean_std(pretrained_cfg))
    train = DigitsDataset("train", img_size, train_tf, cfg.val_split, cfg.split_seed)
    val = DigitsDataset("val", img_size, eval_tf, cfg.val_split, cfg.split_seed)
    return TrainData(train, val, list(DigitsDataset.classes),
                     f"digits (scikit-learn): {len(train)} train / {len(val)} val images at {img_size}px")


def _check_same_classes(train: ImageFolderDataset, val: ImageFolderDataset) -> None:
    if val.classes != train.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:3]
        only_val = sorted(set(val.classes) - set(train.classes))[:3]
        raise DataError(f"{train.root} and {val.root} have different classes (only in train: {only_train}, "
                        f"only in val: {only_val}); they must hold the same class folders")


def _carved_data(cfg: TrainConfig, train_full: ImageFolderDataset, eval_tf, img_size: int) -> TrainData:
    """Val carved out of the one folder there is: a stratified ``cfg.val_split`` drawn with ``cfg.split_seed``."""
    train_dir = train_full.root
    train_idx, val_idx = stratified_split(train_full.targets, cfg.val_split, cfg.split_seed)
    if not val_idx or not train_idx:
        raise DataError(f"{train_dir} has too few images ({len(train_full)}) to carve a validation split")
    val_full = ImageFolderDataset(train_dir, eval_tf)
    return TrainData(Subset(train_full, train_idx), Subset(val_full, val_idx), list(train_full.classes),
                     f"{train_dir}: {len(train_idx)} train / {len(val_idx)} val images (val carved with seed "
                     f"{cfg.split_seed}), {len(train_full.classes)} classes at {img_size}px")


def _folder_data(cfg: TrainConfig, pretrained_cfg: dict, train_tf, img_size: int) -> TrainData:
    from tresnet.data.transforms import create_eval_transform

    eval_tf = create_eval_transform(eval_config(pretrained_cfg, cfg), img_size)
    root = Path(cfg.data).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist: pass an ImageNet-style folder or 'digits'")
    train_dir = _find(root, TRAIN_FOLDERS)
    val_dir = _find(root, VAL_FOLDERS) if train_dir is not None else None
    train_full = ImageFolderDataset(train_dir or root, train_tf)
    if val_dir is None:
        return _carved_data(cfg, train_full, eval_tf, img_size)
    val = ImageFolderDataset(val_dir, eval_tf)
    _check_same_classes(train_full, val)
    described = f"{train_dir} ({len(train_full)} images) / {val_dir} ({len(val)} images)"
    return TrainData(train_full, val, list(train_full.classes),
                     f"{described}, {len(train_full.classes)} classes at {img_size}px")


def _digits_mosaic_data(cfg: TrainConfig, pretrained_cfg: dict, train_tf, img_size: int) -> TrainData:
    from tresnet.data.digits_mosaic import DigitsMosaicDataset
    from tresnet.data.train_transforms import create_tensor_eval_transform

    eval_tf = create_tensor_eval_transform(**_mean_std(pretrained_cfg))
    train = DigitsMosaicDataset("train", img_size, train_tf, val_fraction=cfg.val_split, split_seed=cfg.split_seed)
    val = DigitsMosaicDataset("val", img_size, eval_tf, val_fraction=cfg.val_split, split_seed=cfg.split_seed)
    return TrainData(train, val, list(train.classes),
                     f"digit mosaics (scikit-learn's digits, multilabel): {len(train)} train / {len(val)} val "
                     f"images at {img_size}px, val from other source digits")


def random_split(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random ``(train, val)`` split of ``range(count)``, val ``round(val_fraction * count)``
    indices (at least one), both sorted (multi-label sets have no single class to stratify by)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = min(count - 1, max(1, round(val_fraction * count)))
    return sorted(order[cut:]), sorted(order[:cut])


def _multilabel_files(cfg: TrainConfig, pretrained_cfg: dict, train_tf, img_size: int) -> TrainData:
    """Annotated images (COCO json or labels CSV); val from ``val_data`` or carved out with ``split_seed``."""
    from tresnet.data.multilabel import open_multilabel
    from tresnet.data.transforms import create_eval_transform

    eval_tf = create_eval_transform(eval_config(pretrained_cfg, cfg), img_size)
    train = open_multilabel(cfg.data, annotations=cfg.annotations, classes=cfg.classes, transform=train_tf)
    if cfg.val_data:
        val = open_multilabel(cfg.val_data, annotations=cfg.val_annotations, classes=cfg.classes or train.classes,
                              transform=eval_tf)
        if list(val.classes) != list(train.classes):
            raise DataError(f"the classes of {val.source} differ from those of {train.source} (first: "
                            f"{list(val.classes)[:3]} vs {list(train.classes)[:3]}): they must be the same, in order")
        return TrainData(train, val, list(train.classes),
                         f"{train.source} ({len(train)} images) / {val.source} ({len(val)} images), "
                         f"{len(train.classes)} classes (multilabel) at {img_size}px")
    if len(train) < 2:
        raise DataError(f"{train.source} has too few images ({len(train)}) to carve a validation split")
    train_idx, val_idx = random_split(len(train), cfg.val_split, cfg.split_seed)
    val_full = copy.copy(train)
    val_full.transform, val_full.skipped_files = eval_tf, set()
    return TrainData(Subset(train, train_idx), Subset(val_full, val_idx), list(train.classes),
                     f"{train.source}: {len(train_idx)} train / {len(val_idx)} val images (val carved with seed "
                     f"{cfg.split_seed}), {len(train.classes)} classes (multilabel) at {img_size}px")


def build_train_data(cfg: TrainConfig, pretrained_cfg: dict, img_size: int) -> TrainData:
    """Training set (with augmentation) and validation set (with the eval transform) named by ``cfg.data``.

    A folder holding ``train/`` (and ``val/`` or ``validation/``) is used as such; a folder of class
    sub-folders, or ``train/`` alone, gives val by a stratified ``cfg.val_split`` carved with
    ``cfg.split_seed`` (:func:`tresnet.data.splits.stratified_split`). Multilabel data: see the module
    docstring. Raises :class:`DataError` for missing folders or files, folders without classes, bad
    annotations, or train and val sets with different classes.
    """
    train_tf = _train_transform(cfg, pretrained_cfg, img_size)
    if cfg.data == DIGITS:
        data = _digits_data(cfg, pretrained_cfg, train_tf, img_size)
    elif cfg.data == DIGITS_MULTILABEL:
        data = _digits_mosaic_data(cfg, pretrained_cfg, train_tf, img_size)
    elif cfg.task == "multilabel":
        data = _multilabel_files(cfg, pretrained_cfg, train_tf, img_size)
    else:
        data = _folder_data(cfg, pretrained_cfg, train_tf, img_size)
    data.preprocessing = run_preprocessing(cfg, pretrained_cfg, img_size)
    return data


__all__ = ["TrainData", "build_train_data", "carve_split", "eval_config", "random_split", "run_preprocessing"]

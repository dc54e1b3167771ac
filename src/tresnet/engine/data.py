"""The data sets of a training run: ImageNet-style folders (with a val split carved out when there
is none) or the bundled digits, with the training augmentation and the model's eval transform."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from tresnet.engine.config import DIGITS, TrainConfig
from tresnet.errors import DataError

TRAIN_FOLDERS = ("train",)
VAL_FOLDERS = ("val", "validation")


@dataclass
class TrainData:
    train: Dataset
    val: Dataset
    class_names: list[str]
    description: str


def eval_config(pretrained_cfg: dict, cfg: TrainConfig) -> dict:
    """The model's preprocessing configuration with the run's ``crop_pct`` / ``crop_mode`` overrides."""
    out = dict(pretrained_cfg)
    if cfg.crop_pct is not None:
        out["crop_pct"] = cfg.crop_pct
    if cfg.crop_mode is not None:
        out["crop_mode"] = cfg.crop_mode
    return out


def carve_split(targets: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified ``(train, val)`` indices: about ``val_fraction`` of each class (at least one image when
    the class has two or more) goes to val; fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(targets)
    train, val = [], []
    for cls in labels.unique(sorted=True).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        n_val = min(len(members) - 1, max(1, int(round(val_fraction * len(members)))))
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def build_train_data(cfg: TrainConfig, pretrained_cfg: dict, img_size: int) -> TrainData:
    """Training set (with augmentation) and validation set (with the eval transform) named by ``cfg.data``.

    A folder holding ``train/`` (and ``val/`` or ``validation/``) is used as such; a folder of class
    sub-folders, or ``train/`` alone, gives val by a stratified ``cfg.val_split`` carved with
    ``cfg.split_seed``. Raises :class:`DataError` for missing folders, folders without classes, or
    train and val folders with different classes.
    """
    from tresnet.data.train_transforms import create_tensor_eval_transform, create_train_transform

    train_tf = create_train_transform(
        img_size, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, auto_augment=cfg.auto_augment,
        randaugment_magnitude=cfg.randaugment_magnitude, randaugment_ops=cfg.randaugment_ops,
        random_erase=cfg.random_erase, random_erase_mode=cfg.random_erase_mode,
        interpolation=pretrained_cfg.get("interpolation", "bilinear"))
    if cfg.data == DIGITS:
        from tresnet.data.digits import DigitsDataset

        eval_tf = create_tensor_eval_transform()
        train = DigitsDataset("train", img_size, train_tf, cfg.val_split, cfg.split_seed)
        val = DigitsDataset("val", img_size, eval_tf, cfg.val_split, cfg.split_seed)
        return TrainData(train, val, list(DigitsDataset.classes),
                         f"digits (scikit-learn): {len(train)} train / {len(val)} val images at {img_size}px")

    from tresnet.data.datasets import ImageFolderDataset
    from tresnet.data.transforms import create_eval_transform

    eval_tf = create_eval_transform(eval_config(pretrained_cfg, cfg), img_size)
    root = Path(cfg.data).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist: pass an ImageNet-style folder or 'digits'")
    train_dir = _find(root, TRAIN_FOLDERS)
    val_dir = _find(root, VAL_FOLDERS) if train_dir is not None else None
    train_dir = train_dir or root
    train_full = ImageFolderDataset(train_dir, train_tf)
    if val_dir is not None:
        val = ImageFolderDataset(val_dir, eval_tf)
        if val.classes != train_full.classes:
            only_train = sorted(set(train_full.classes) - set(val.classes))[:3]
            only_val = sorted(set(val.classes) - set(train_full.classes))[:3]
            raise DataError(f"{train_dir} and {val_dir} have different classes (only in train: {only_train}, "
                            f"only in val: {only_val}); they must hold the same class folders")
        described = f"{train_dir} ({len(train_full)} images) / {val_dir} ({len(val)} images)"
        return TrainData(train_full, val, list(train_full.classes),
                         f"{described}, {len(train_full.classes)} classes at {img_size}px")
    train_idx, val_idx = carve_split(train_full.targets, cfg.val_split, cfg.split_seed)
    if not val_idx or not train_idx:
        raise DataError(f"{train_dir} has too few images ({len(train_full)}) to carve a validation split")
    val_full = ImageFolderDataset(train_dir, eval_tf)
    return TrainData(Subset(train_full, train_idx), Subset(val_full, val_idx), list(train_full.classes),
                     f"{train_dir}: {len(train_idx)} train / {len(val_idx)} val images (val carved with seed "
                     f"{cfg.split_seed}), {len(train_full.classes)} classes at {img_size}px")


__all__ = ["TrainData", "build_train_data", "carve_split", "eval_config"]

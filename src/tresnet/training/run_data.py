"""The data sets of a training run: the data source ``cfg.data`` names for the run's task
(:func:`tresnet.data.sources.find_source`) opened with the training augmentation and the model's eval transform;
both normalise as the model's configuration says (:func:`tresnet.data.transforms.normalisation`)."""

from __future__ import annotations

from tresnet.data.sources import DataSource, TrainData, find_source
from tresnet.data.train_transforms import create_train_transform
from tresnet.data.transforms import normalisation
from tresnet.training.config import TrainConfig


def train_source(cfg: TrainConfig) -> DataSource:
    """The source of ``cfg.data`` for the run's task, checked against the run's options (:class:`ConfigError`
    for data of another task or an option the source does not read)."""
    source = find_source(cfg.data, cfg.task, cfg.annotations)
    source.check(cfg)
    return source


def _train_transform(cfg: TrainConfig, pretrained_cfg: dict, img_size: int):
    norm = normalisation(pretrained_cfg)
    return create_train_transform(
        img_size, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, auto_augment=cfg.auto_augment,
        randaugment_magnitude=cfg.randaugment_magnitude, randaugment_ops=cfg.randaugment_ops,
        random_erase=cfg.random_erase, random_erase_mode=cfg.random_erase_mode,
        interpolation=pretrained_cfg.get("interpolation", "bilinear"), crop_mode=cfg.train_crop_mode,
        cutout=cfg.cutout, **(dict(mean=norm[0], std=norm[1]) if norm is not None else {}))


def build_train_data(cfg: TrainConfig, pretrained_cfg: dict, img_size: int) -> TrainData:
    """Training set (with augmentation) and validation set (with the eval transform) named by ``cfg.data``, and
    the preprocessing of that validation (what the run's checkpoints record).

    Raises :class:`ConfigError` for data of another task, and :class:`DataError` for missing folders or files,
    folders without classes, bad annotations, or train and val sets with different classes (see the sources).
    """
    source = train_source(cfg)
    data = source.training_data(cfg, pretrained_cfg, _train_transform(cfg, pretrained_cfg, img_size), img_size)
    data.preprocessing = source.preprocessing(cfg, pretrained_cfg, img_size)
    return data


__all__ = ["build_train_data", "train_source"]

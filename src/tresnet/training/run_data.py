"""The data sets of a training run: the data source its ``data`` section names for the run's task
(:func:`tresnet.data.sources.find_source`) opened with the ``augmentation`` section's training transform and the
model's eval transform; both normalise as the model's configuration says
(:func:`tresnet.data.transforms.normalisation`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch.utils.data import DataLoader

from tresnet.collectives import DistInfo
from tresnet.data.loader import create_loader
from tresnet.data.sources import DataSource, TrainData, find_source
from tresnet.errors import ConfigError
from tresnet.tasks import Task, get_task
from tresnet.training.distributed import SeededSamples, ShardedEpochSampler
from tresnet.training.sections import AugmentationSection, DataSection


def train_source(data: DataSection, task: str) -> DataSource:
    """The source of ``data.train`` for ``task``, checked against the data options (:class:`ConfigError` for data
    of another task or an option the source does not read)."""
    source = find_source(data.train, task, data.annotations)
    source.check(data)
    return source


def build_train_data(data: DataSection, task: str | Task, augmentation: AugmentationSection, pretrained_cfg: dict,
                     img_size: int) -> TrainData:
    """Training set (with ``augmentation``) and validation set (with the eval transform) named by ``data`` for
    ``task``, and the preprocessing of that validation (what the run's checkpoints record).

    Raises :class:`ConfigError` for data of another task, and :class:`DataError` for missing folders or files,
    folders without classes, bad annotations, or train and val sets with different classes (see the sources).
    """
    task = get_task(task)
    source = train_source(data, task.name)
    opened = source.training_data(data, pretrained_cfg, task.train_transform(augmentation, pretrained_cfg, img_size),
                                  img_size)
    opened.preprocessing, opened.source = source.preprocessing(data, pretrained_cfg, img_size), source
    return opened


@dataclass
class LoaderOptions:
    """What the loaders take from the run's sections: ``batch_size`` and ``max_steps_per_epoch``
    (optimisation), ``seed`` and ``workers`` (run; None: chosen for the source and the machine)."""

    batch_size: int
    max_steps_per_epoch: int | None
    seed: int
    workers: int | None


@dataclass
class Loaders:
    """A run's sharded, seeded loaders: the training sampler (set to each epoch), both loaders, and the number of
    optimiser steps of an epoch."""

    train_sampler: ShardedEpochSampler
    train: DataLoader
    val: DataLoader
    steps_per_epoch: int


def _default_workers(workers: int | None, info: DistInfo, data: TrainData) -> int:
    if workers is not None:
        return workers
    if data.source is not None and data.source.embedded:  # in-memory tensors: worker processes cost more than they save
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus // info.world_size - 1))


def build_loaders(data: TrainData, batching: LoaderOptions, info: DistInfo) -> Loaders:
    """Sharded, seeded training and validation loaders of ``data`` for this process; :class:`ConfigError` when
    an epoch would have no step (a batch larger than the training set)."""
    workers = _default_workers(batching.workers, info, data)
    train_sampler = ShardedEpochSampler(len(data.train), seed=batching.seed, rank=info.rank, world_size=info.world_size,
                                        shuffle=True)
    train = create_loader(SeededSamples(data.train), batching.batch_size, workers, info.device, sampler=train_sampler,
                          drop_last=True)
    val_sampler = ShardedEpochSampler(len(data.val), rank=info.rank, world_size=info.world_size, shuffle=False)
    val = create_loader(data.val, batching.batch_size, workers, info.device, sampler=val_sampler)
    steps = min(len(train), batching.max_steps_per_epoch or len(train))
    if steps == 0:
        raise ConfigError(f"batch size {batching.batch_size} x {info.world_size} process(es) is larger than the "
                          f"{len(data.train)} training images: lower --batch-size")
    return Loaders(train_sampler, train, val, steps)


__all__ = ["LoaderOptions", "Loaders", "build_loaders", "build_train_data", "train_source"]

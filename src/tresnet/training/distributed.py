"""Distributed training helpers: process group set-up from ``torchrun``'s environment, sharding
samplers whose order derives from (seed, epoch) only, and synchronised norms (the collectives are
:mod:`tresnet.collectives`).

Under ``torchrun --nproc_per_node N`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set) training uses
DDP with NCCL on CUDA and gloo on CPU; without it, one process and no process group. Synchronised norms:
In-Place ABN has its own (``inplace_abn_sync``); plain BN becomes torch's ``SyncBatchNorm`` through
:func:`sync_batch_norm`, which keeps the activation of :class:`~tresnet.layers.BatchNormAct2d`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from tresnet.collectives import DistInfo
from tresnet.layers import BatchNormAct2d
from tresnet.runtime import resolve_device


def setup(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (if any) and pick the device
    (:func:`tresnet.runtime.resolve_device`; ``cuda`` is the process's ``LOCAL_RANK`` GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup(info: DistInfo) -> None:
    """Leave the process group joined by :func:`setup`."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers (so that seed 1 epoch 0 differs from seed 0 epoch 1)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SyncBatchNormAct2d(BatchNormAct2d, nn.SyncBatchNorm):
    """:class:`~tresnet.layers.BatchNormAct2d` whose batch statistics span the process group.

    ``BatchNormAct2d.forward`` normalises with its parent's ``forward``, which in this class's method
    order is ``nn.SyncBatchNorm``'s, then applies its activation. torch's ``convert_sync_batchnorm``
    would make a plain ``SyncBatchNorm`` and lose the activation. Without a process group (or in eval
    mode) it computes as ``BatchNormAct2d``; torch synchronises on GPUs only.
    """


def _synced(bn: nn.BatchNorm2d, process_group) -> nn.Module:
    if type(bn) is BatchNormAct2d:
        synced = SyncBatchNormAct2d(bn.num_features, bn.activation, bn.activation_param, eps=bn.eps,
                                    momentum=bn.momentum)
        synced.process_group = process_group
    else:
        synced = nn.SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                                  process_group)
    synced.load_state_dict(bn.state_dict())
    for ours, theirs in zip(synced.parameters(), bn.parameters(), strict=True):
        ours.requires_grad_(theirs.requires_grad)
    return synced.to(bn.weight.device if bn.weight is not None else "cpu").train(bn.training)


def sync_batch_norm(model: nn.Module, process_group=None) -> nn.Module:
    """``model`` with every ``BatchNorm2d`` synchronised across ``process_group`` (default: all processes),
    in place: :class:`SyncBatchNormAct2d` for ``BatchNormAct2d`` (the activation kept), torch's
    ``SyncBatchNorm`` for a plain ``BatchNorm2d``. Same names, so the state dict is unchanged."""
    for name, child in model.named_children():
        if type(child) in (BatchNormAct2d, nn.BatchNorm2d):
            setattr(model, name, _synced(child, process_group))
        else:
            sync_batch_norm(child, process_group)
    return model


class ShardedEpochSampler(Sampler):
    """Indices for one process: the epoch's order derives from ``(seed, epoch)`` only, and process
    ``rank`` takes every ``world_size``-th index, so the union of the processes' ``k``-th batches is the
    ``k``-th batch of one process with a ``world_size`` times larger batch.

    ``shuffle=True`` (training): a seeded permutation, cut to a multiple of ``world_size`` so every
    process runs the same number of steps; each index comes with its own augmentation seed
    (``(index, seed)`` pairs, read by :class:`SeededSamples`). ``shuffle=False`` (validation): the
    dataset order, plain indices, no sample dropped (shards may differ by one).
    """

    def __init__(self, num_samples: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration give epoch ``epoch``'s order."""
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.num_samples, self.world_size))
        usable = self.num_samples - self.num_samples % self.world_size
        return self._order()[:usable][self.rank::self.world_size]

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 1))
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator:
        indices = self._indices()
        if not self.shuffle:
            return iter(indices)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2))
        sample_seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator).tolist()
        return iter([(i, sample_seeds[i]) for i in indices])

    def __len__(self) -> int:
        return len(self._indices()) if not self.shuffle else (self.num_samples // self.world_size)


class SeededSamples(torch.utils.data.Dataset):
    """Wraps a dataset so that ``dataset[(index, seed)]`` runs its random transform under ``seed``:
    augmentation then depends on the sample and epoch only, not on workers, processes or resumes."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset  # loaders look for ``collate`` / ``report_skipped`` through ``.dataset``

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


__all__ = ["SeededSamples", "ShardedEpochSampler", "SyncBatchNormAct2d", "cleanup", "derive_seed", "setup",
           "sync_batch_norm"]

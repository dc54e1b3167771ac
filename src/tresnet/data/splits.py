"""Train/validation splits: one stratified, seeded split for every data set that has no validation part."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tresnet.errors import ConfigError

SPLITS = ("train", "val")


def check_split(split: str, val_fraction: float, what: str = "digits") -> None:
    """:class:`ConfigError` for a ``split`` other than train or val, or a ``val_fraction`` outside (0, 1), of the
    bundled set ``what``."""
    if split not in SPLITS:
        raise ConfigError(f"{what} split must be 'train' or 'val', got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"digits val_fraction must lie in (0, 1), got {val_fraction}")


def stratified_split(targets: Sequence[int] | torch.Tensor, val_fraction: float,
                     seed: int = 0) -> tuple[list[int], list[int]]:
    """Sorted ``(train, val)`` indices: of each class of ``n`` samples, ``round(val_fraction * n)`` go to
    val, at least one when the class has two or more and never the whole class; fixed by ``seed``.

    ``targets`` holds the class index of every sample. The classes are taken in increasing order and
    each is shuffled by one generator seeded with ``seed``, so the split depends on the labels and the
    seed only.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(targets)
    train: list[int] = []
    val: list[int] = []
    for cls in labels.unique(sorted=True).tolist():
        indices = torch.nonzero(labels == cls).flatten()
        members = indices[torch.randperm(len(indices), generator=generator)].tolist()
        n_val = min(len(members) - 1, max(1, round(val_fraction * len(members))))
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


__all__ = ["stratified_split"]

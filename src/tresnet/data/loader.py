"""DataLoaders for evaluation and training: pinned memory on CUDA, persistent workers, skip reporting."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tresnet.errors import ConfigError


def find_attribute(dataset, attribute: str):
    """``attribute`` of ``dataset`` or of the dataset it wraps (``Subset``), or None."""
    while dataset is not None:
        if hasattr(dataset, attribute):
            return getattr(dataset, attribute)
        dataset = getattr(dataset, "dataset", None)
    return None


class ReportingLoader(DataLoader):
    """A DataLoader that hands each batch's unreadable files (``batch.skipped``) to the dataset's
    ``report_skipped`` in the main process, where counting and ``strict`` errors work."""

    # A generator over the base iterator's batches; DataLoader's stub names its own iterator class.
    def __iter__(self) -> Iterator:  # type: ignore[override]
        report = find_attribute(self.dataset, "report_skipped")
        for batch in super().__iter__():
            if report is not None:
                try:
                    for item in getattr(batch, "skipped", ()):
                        report(item)
                except BaseException:
                    self._stop_workers()
                    raise
            yield batch

    def _stop_workers(self) -> None:
        # Persistent workers left behind an error would idle until garbage collection, which cannot
        # always stop them cleanly (each then costs a 5 s join timeout); stop them now.
        iterator = getattr(self, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._iterator = None


def create_loader(dataset: Dataset, batch_size: int, workers: int, device: str | torch.device,
                  shuffle: bool = False, sampler: Sampler | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` with ``workers`` processes (0: load in this process).

    Memory is pinned when ``device`` is CUDA and workers persist between epochs. A dataset that
    provides ``collate`` (:class:`~tresnet.data.datasets.ImageFolderDataset`, also inside a ``Subset``)
    gets it, so unreadable files are reported and counted. Raises :class:`ConfigError` for a
    non-positive batch size, negative workers, or ``shuffle`` together with a ``sampler``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"workers must be 0 (load in the main process) or more, got {workers}")
    if shuffle and sampler is not None:
        raise ConfigError("shuffle and sampler exclude each other: let the sampler shuffle")
    device = torch.device(device)
    return ReportingLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=find_attribute(dataset, "collate"),
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=workers > 0,
    )


__all__ = ["ReportingLoader", "create_loader", "find_attribute"]

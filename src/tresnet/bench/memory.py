"""Memory accounting: bytes that autograd keeps for backward (per image and per step), and peak memory."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import torch
from torch import nn

from tresnet.runtime import autocast

MIB = 1024 ** 2


def saved_tensor_bytes(model: nn.Module, inputs: torch.Tensor, loss_fn=None) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass of ``model`` on ``inputs``.

    Counted with ``torch.autograd.graph.saved_tensors_hooks``: each storage once (a tensor written in
    place and saved by two nodes counts once), parameters and buffers excluded. The forward is run
    in the model's current mode; backward is not run.
    """
    excluded = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in excluded and ptr != 0:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(inputs)
        if loss_fn is not None:
            out = loss_fn(out)
    del out
    return sum(seen.values())


# The benchmark's two batches: the smallest a training-mode BatchNorm takes, and twice it.
SLOPE_BATCHES = (2, 4)


@dataclass(frozen=True)
class SavedMemory:
    """What autograd keeps for backward in one training forward, split by how it grows with the batch.

    ``bytes_per_image`` is the slope between the two ``batch_sizes``; ``constant_bytes`` what is kept once
    per step whatever the batch (under autocast mainly the low-precision copies of the weights, which a
    figure measured at one batch and divided by it would spread over its few images).
    """

    bytes_per_image: float
    constant_bytes: float
    batch_sizes: tuple[int, int]

    def to_dict(self) -> dict[str, float | list[int]]:
        """The figures in MiB, with the batches they were measured at."""
        return {"saved_mib_per_img": self.bytes_per_image / MIB, "saved_constant_mib": self.constant_bytes / MIB,
                "batch_sizes": list(self.batch_sizes)}


def saved_memory(model: nn.Module, img_size: int = 224, batch_sizes: tuple[int, int] = SLOPE_BATCHES, *,
                 precision: str = "fp32", device: str | torch.device = "cpu", channels_last: bool = False,
                 in_chans: int = 3) -> SavedMemory:
    """:func:`saved_tensor_bytes` of a training-mode forward and loss at two batch sizes, under the autocast
    of ``precision`` (:mod:`tresnet.runtime`), as a per-image slope and a per-step constant.

    Raises ValueError unless the two batches are distinct and at least 1.
    """
    small, large = batch_sizes
    if not 1 <= small < large:
        raise ValueError(f"the slope needs two batch sizes with 1 <= small < large, got {batch_sizes}")
    device = torch.device(device)
    model.train()
    totals = []
    for batch in batch_sizes:
        x = torch.rand(batch, in_chans, img_size, img_size, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            totals.append(saved_tensor_bytes(model, x, loss_fn=lambda out: out.float().logsumexp(1).mean()))
    per_image = (totals[1] - totals[0]) / (large - small)
    return SavedMemory(bytes_per_image=per_image, constant_bytes=totals[0] - small * per_image,
                       batch_sizes=(small, large))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def image_peak_rss_bytes() -> int:
    """Peak resident set size of this process since it last exec'd, where the OS tells it apart.

    On Linux, ``getrusage`` carries the parent's peak over ``fork`` + ``exec`` (a subprocess started by
    a big process reports at least the parent's size); ``VmHWM`` in ``/proc/self/status`` belongs to the
    current program image only. Elsewhere this is :func:`peak_rss_bytes`.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return peak_rss_bytes()

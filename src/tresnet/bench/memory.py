"""Memory accounting: bytes that autograd keeps for backward, and peak memory of a training step."""

from __future__ import annotations

import resource
import sys

import torch
from torch import nn


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


def saved_bytes_per_image(model: nn.Module, img_size: int = 224, batch_size: int = 2, *,
                          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                          channels_last: bool = False, in_chans: int = 3) -> float:
    """:func:`saved_tensor_bytes` of a training-mode forward and loss, divided by the batch size."""
    model.train()
    x = torch.rand(batch_size, in_chans, img_size, img_size, device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return saved_tensor_bytes(model, x, loss_fn=lambda out: out.float().logsumexp(1).mean()) / batch_size


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

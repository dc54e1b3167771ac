"""Where a process stands in a distributed run (:class:`DistInfo`) and the few collectives the loops use:
sums and row gathers over every process, and a barrier. In one process (no process group) each returns at once
with its own values, so the loops call them unconditionally."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``; rank 0 writes files."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sums of ``values`` over all processes (the values themselves in one process)."""
    if not info.distributed:
        return list(values)
    device = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(info: DistInfo) -> None:
    """Wait until every process gets here (returns at once in one process)."""
    if info.distributed:
        dist.barrier()


def all_gather_rows(rows: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The concatenation, in rank order, of every process's ``(n_r, ...)`` tensor ``rows`` (``n_r`` may differ
    between processes); ``rows`` itself in one process. A collective: every process must call it, with one
    dtype and one number of dimensions. A process with no rows may give any trailing shape (say ``(0, 0)``);
    the others must agree on theirs, or ``ValueError``. The result lies on ``rows``' device. Works with gloo
    (CPU tensors) and NCCL (the process's GPU)."""
    if not info.distributed:
        return rows
    device = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
    shape = torch.tensor(rows.shape, dtype=torch.int64, device=device)
    shapes = [torch.empty_like(shape) for _ in range(info.world_size)]
    dist.all_gather(shapes, shape)
    shapes = [tuple(s.tolist()) for s in shapes]
    trailing = {s[1:] for s in shapes if s[0] > 0}
    if len(trailing) > 1:
        raise ValueError(f"all_gather_rows: the processes' rows differ in shape beyond the first dimension: {shapes}")
    trailing_shape = trailing.pop() if trailing else tuple(rows.shape[1:])
    longest = max(s[0] for s in shapes)
    if longest == 0:
        return rows
    padded = torch.zeros((longest, *trailing_shape), dtype=rows.dtype, device=device)
    if rows.shape[0] > 0:
        padded[: rows.shape[0]] = rows.to(device)
    gathered = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: s[0]] for g, s in zip(gathered, shapes, strict=True)]).to(rows.device)


__all__ = ["DistInfo", "all_gather_rows", "all_reduce_sum", "barrier"]

"""Worker functions for multi-process tests (a module of its own so that spawned processes can import it)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def tiny_tresnet(norm: str):
    """A TResNet with every kind of block (SE, anti-aliasing, downsample, fused tails), small enough for tests."""
    from tresnet.models.tresnet import TResNet, TResNetArch

    torch.manual_seed(0)
    arch = TResNetArch(layers=(1, 1, 2, 1), width_factor=0.25, v2=True)
    model = TResNet(arch, num_classes=5, norm=norm, memory_efficient=True)
    with torch.no_grad():  # non-zero residual norms so that every branch carries gradient
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def sync_step(rank: int, world: int, init_file: str, inputs: torch.Tensor, targets: torch.Tensor, out_file: str):
    """One training step of the sync model on this rank's share of the batch; rank 0 saves what it saw."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = tiny_tresnet("inplace_abn_sync").train()
        share = inputs.shape[0] // world
        x = inputs[rank * share:(rank + 1) * share].clone().requires_grad_()
        out = model(x)
        loss = (out * targets[rank * share:(rank + 1) * share]).sum()
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        for g in grads.values():
            dist.all_reduce(g)
        outs = [torch.empty_like(out) for _ in range(world)]
        dist.all_gather(outs, out.detach())
        dxs = [torch.empty_like(x.grad) for _ in range(world)]
        dist.all_gather(dxs, x.grad)
        if rank == 0:
            buffers = {k: b.clone() for k, b in model.named_buffers() if "running" in k}
            torch.save({"out": torch.cat(outs), "dx": torch.cat(dxs), "grads": grads, "buffers": buffers}, out_file)
        dist.barrier()  # tear down only once every rank is done, or gloo may abort a rank mid-exit
    finally:
        dist.destroy_process_group()


def gather_multilabel(rank: int, world: int, init_file: str, logits: torch.Tensor, targets: torch.Tensor,
                      out_file: str):
    """Evaluate this rank's shard (every world-th row, as ShardedEpochSampler(shuffle=False)) through a
    MultiLabelRows in batches of 3; rank 0 saves the gathered rows and their metrics."""
    from tresnet.collectives import DistInfo, all_gather_rows
    from tresnet.tasks.multilabel_metrics import MultiLabelRows, multilabel_metrics
    from tresnet.training.distributed import ShardedEpochSampler

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        info = DistInfo(rank=rank, world_size=world)
        shard = list(ShardedEpochSampler(len(logits), rank=rank, world_size=world, shuffle=False))
        tally = MultiLabelRows()
        for start in range(0, len(shard), 3):
            rows = shard[start:start + 3]
            tally.add(logits[rows].to(torch.bfloat16), targets[rows])
        seen_logits, seen_targets = tally.gather(info)
        one_sided = all_gather_rows(targets[:2] if rank == 0 else torch.empty(0, 0), info)  # rank 1 has no rows
        if rank == 0:
            torch.save({"logits": seen_logits, "targets": seen_targets, "images": tally.images,
                        "metrics": multilabel_metrics(seen_logits, seen_targets), "one_sided": one_sided},
                       out_file)
        dist.barrier()
    finally:
        dist.destroy_process_group()

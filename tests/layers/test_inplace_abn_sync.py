"""InPlaceABNSync across a 2-process gloo group equals one process on the whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from dist_workers import sync_step, tiny_tresnet
from helpers import max_rel_diff


@pytest.mark.slow
def test_two_process_sync_equals_one_process_on_the_whole_batch(tmp_path):
    torch.manual_seed(3)
    inputs = torch.rand(4, 3, 32, 32)
    targets = torch.randn(4, 5)
    out_file = tmp_path / "rank0.pt"
    mp.spawn(sync_step, args=(2, str(tmp_path / "init"), inputs, targets, str(out_file)), nprocs=2, join=True)
    seen = torch.load(out_file)

    model = tiny_tresnet("inplace_abn").train()
    x = inputs.clone().requires_grad_()
    out = model(x)
    (out * targets).sum().backward()

    assert max_rel_diff(seen["out"], out) < 1e-5
    assert max_rel_diff(seen["dx"], x.grad) < 1e-4
    for name, p in model.named_parameters():
        assert max_rel_diff(seen["grads"][name], p.grad) < 1e-4, name
    for name, b in model.named_buffers():
        if "running" in name:
            assert torch.allclose(seen["buffers"][name], b, atol=1e-5), name

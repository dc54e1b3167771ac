"""The fused Bottleneck tail: exact gradients by both backward routes, and what it keeps for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tresnet.layers.residual_tail as tail_mod
from helpers import max_rel_diff
from tresnet.layers.residual_tail import bottleneck_tail


def reference(x, gate, w, g, b, shortcut, keep):
    e = x * gate if gate is not None else x
    d = F.batch_norm(F.conv2d(e, w), None, None, g, b, True, 0.1, 1e-5)
    if keep is not None:
        d = d * keep.view(-1, 1, 1, 1)
    return torch.relu(d + shortcut) if shortcut is not None else d


def make_inputs(dtype, with_gate=True, with_shortcut=True, channels_last=False, n=3, c_in=5, c_out=8, hw=4):
    x = torch.randn(n, c_in, hw, hw, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gate = torch.rand(n, c_in, 1, 1, dtype=dtype) if with_gate else None
    w = torch.randn(c_out, c_in, 1, 1, dtype=dtype)
    g = torch.rand(c_out, dtype=dtype) + 0.5
    g[0] = -g[0]  # a negative scale too
    b = torch.randn(c_out, dtype=dtype)
    s = torch.randn(n, c_out, hw, hw, dtype=dtype) if with_shortcut else None
    tensors = [t for t in (x, gate, w, g, b, s) if t is not None]
    for t in tensors:
        t.requires_grad_()
    return x, gate, w, g, b, s


@pytest.mark.parametrize("strategy", ["recompute", "gram"])
@pytest.mark.parametrize("with_gate,with_shortcut,drop", [(True, True, False), (False, True, True),
                                                          (False, False, False), (True, True, True)])
def test_gradcheck_float64(monkeypatch, strategy, with_gate, with_shortcut, drop):
    monkeypatch.setattr(tail_mod, "BACKWARD_STRATEGY", strategy)
    x, gate, w, g, b, s = make_inputs(torch.float64, with_gate, with_shortcut)
    keep = torch.tensor([2.0, 0.0, 2.0], dtype=torch.float64) if drop else None
    inputs = [t for t in (x, gate, w, g, b, s) if t is not None]

    def fn(*args):
        it = iter(args)
        xx = next(it)
        gg = next(it) if gate is not None else None
        ww, g2, bb = next(it), next(it), next(it)
        ss = next(it) if s is not None else None
        return bottleneck_tail(xx, gg, ww, g2, bb, ss, keep, None, None, 0.1, 1e-5)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)
    dy = torch.randn_like(reference(x, gate, w, g, b, s, keep))
    ours = torch.autograd.grad(fn(*inputs), inputs, dy)
    theirs = torch.autograd.grad(reference(x, gate, w, g, b, s, keep), inputs, dy)
    for a, e in zip(ours, theirs, strict=True):
        assert max_rel_diff(a, e) < 1e-10


@pytest.mark.parametrize("strategy", ["recompute", "gram"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fp32_matches_autograd_and_updates_running_stats(monkeypatch, strategy, channels_last):
    monkeypatch.setattr(tail_mod, "BACKWARD_STRATEGY", strategy)
    x, gate, w, g, b, s = make_inputs(torch.float32, channels_last=channels_last, n=4, c_in=16, c_out=32, hw=6)
    rm, rv = torch.zeros(32), torch.ones(32)
    out = bottleneck_tail(x, gate, w, g, b, s, None, rm, rv, 0.1, 1e-5)
    ref = reference(x, gate, w, g, b, s, None)
    assert max_rel_diff(out, ref) < 1e-5
    dy = torch.randn_like(ref)
    inputs = (x, gate, w, g, b, s)
    for a, e in zip(torch.autograd.grad(out, inputs, dy), torch.autograd.grad(ref, inputs, dy), strict=True):
        assert max_rel_diff(a, e) < 1e-4
    bn = torch.nn.BatchNorm2d(32)
    bn(F.conv2d(x * gate, w).detach())
    assert torch.allclose(rm, bn.running_mean, atol=1e-6) and torch.allclose(rv, bn.running_var, atol=1e-5)


def test_keeps_neither_the_scaled_input_nor_the_norm_output():
    x, gate, w, g, b, s = make_inputs(torch.float32, n=2, c_in=8, c_out=32, hw=6)
    x = x.detach() * 1.0
    x.requires_grad_()
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        out = bottleneck_tail(x, gate, w, g, b, s, None, None, None, 0.1, 1e-5)
    wide = [t for t in kept if t.numel() >= out.numel()]
    assert [t.data_ptr() for t in wide] == [out.data_ptr()]  # of the wide tensors, only the output
    narrow = [t for t in kept if t.numel() == x.numel()]
    assert [t.data_ptr() for t in narrow] == [x.data_ptr()]

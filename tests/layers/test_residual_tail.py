"""The fused Bottleneck tail: exact gradients by both backward routes, and what it keeps for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import max_rel_diff
from tresnet.errors import ConfigError
from tresnet.layers import ConvNormAct, InPlaceABN
from tresnet.layers.residual_tail import (
    backward_strategy,
    bottleneck_tail,
    get_backward_strategy,
    lean_tail_applies,
    set_backward_strategy,
)


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
def test_gradcheck_float64(strategy, with_gate, with_shortcut, drop):
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

    with backward_strategy(strategy):  # read when backward runs
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)
        dy = torch.randn_like(reference(x, gate, w, g, b, s, keep))
        ours = torch.autograd.grad(fn(*inputs), inputs, dy)
    theirs = torch.autograd.grad(reference(x, gate, w, g, b, s, keep), inputs, dy)
    for a, e in zip(ours, theirs, strict=True):
        assert max_rel_diff(a, e) < 1e-10


@pytest.mark.parametrize("strategy", ["recompute", "gram"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fp32_matches_autograd_and_updates_running_stats(strategy, channels_last):
    x, gate, w, g, b, s = make_inputs(torch.float32, channels_last=channels_last, n=4, c_in=16, c_out=32, hw=6)
    rm, rv = torch.zeros(32), torch.ones(32)
    out = bottleneck_tail(x, gate, w, g, b, s, None, rm, rv, 0.1, 1e-5)
    ref = reference(x, gate, w, g, b, s, None)
    assert max_rel_diff(out, ref) < 1e-5
    dy = torch.randn_like(ref)
    inputs = (x, gate, w, g, b, s)
    with backward_strategy(strategy):
        ours = torch.autograd.grad(out, inputs, dy)
    for a, e in zip(ours, torch.autograd.grad(ref, inputs, dy), strict=True):
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


def test_backward_strategy_is_validated_and_restored():
    assert get_backward_strategy() == "auto"
    with backward_strategy("gram"):
        assert get_backward_strategy() == "gram"
    assert get_backward_strategy() == "auto"
    with pytest.raises(ConfigError, match="unknown backward strategy 'fast'; choose one of auto, recompute, gram"):
        set_backward_strategy("fast")
    assert get_backward_strategy() == "auto"


def test_lean_tail_applies_only_when_asked_in_training_with_inplace_abn():
    unit = ConvNormAct(8, 16, 1, 1, "identity", 0.0)
    assert isinstance(unit.bn, InPlaceABN) and not lean_tail_applies(unit, unit.bn)  # not asked
    unit.memory_efficient = True
    assert lean_tail_applies(unit, unit.bn)
    with torch.no_grad():
        assert not lean_tail_applies(unit, unit.bn)
    assert not lean_tail_applies(unit.eval(), unit.bn)
    plain = ConvNormAct(8, 16, 1, 1, "identity", 0.0, norm="bn")
    plain.memory_efficient = True
    assert not lean_tail_applies(plain, plain.bn)

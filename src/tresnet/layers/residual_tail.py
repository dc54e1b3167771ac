"""The tail of a Bottleneck as one memory-lean op: SE scale, 1x1 conv, BatchNorm, residual add, ReLU.

Also used without the add and ReLU for the 1x1 conv + BatchNorm of the residual downsample path.

``out = relu(bn(conv1x1(x * gate)) * keep + shortcut)``, where ``keep`` is the per-sample
drop-path factor. Autograd on the separate ops keeps the scaled input ``x * gate`` (for the conv)
and the BatchNorm's input or output: five times the narrow width per position. This op keeps only
``x`` (already kept by the block's SE and 3x3 conv), the gate and the output ``out`` (kept anyway
as the next block's input), and computes the exact gradients from them:

With ``Z = W E`` (``E = x * gate``), ``xhat = (Z - mu) * s``, and ``dD`` the gradient reaching the
BatchNorm's output, BatchNorm's backward needs ``xhat`` at every position only through linear
terms, which collapse onto small per-channel matrices: ``sum(xhat * dD) = s * (rowsum(W * M) - mu * sum(dD))``
with ``M = sum(dD E^T)``, and the ``xhat`` part of ``W^T dZ`` is ``(W^T diag(c) W) E`` (a 1x1 conv with a
``C_in x C_in`` weight), and of ``dW`` it is ``diag(c) (W Gram - mu sum(E)^T)`` with ``Gram = sum(E E^T)``.
No activation is inverted; the BN scale follows In-Place ABN's convention (``|scale| >= eps``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from tresnet.errors import ConfigError
from tresnet.layers.inplace_abn import (
    InPlaceABN,
    all_reduce_sums,
    channel_view,
    invertible_scale,
    normalize_,
    stat_dtype,
)

# How backward gets the BatchNorm's input terms: "recompute" the conv output, or through the "gram"
# matrices; "auto" picks the cheaper per call. Both give the same gradients to rounding.
BACKWARD_STRATEGIES = ("auto", "recompute", "gram")
_backward_strategy = "auto"


def set_backward_strategy(name: str) -> str:
    """Make every later backward of :func:`bottleneck_tail` take route ``name``; return the previous one.

    Raises :class:`~tresnet.errors.ConfigError` for a name not in :data:`BACKWARD_STRATEGIES`.
    """
    global _backward_strategy
    if name not in BACKWARD_STRATEGIES:
        raise ConfigError(f"unknown backward strategy {name!r}; choose one of {', '.join(BACKWARD_STRATEGIES)}")
    previous, _backward_strategy = _backward_strategy, name
    return previous


def get_backward_strategy() -> str:
    """The backward route now in use (one of :data:`BACKWARD_STRATEGIES`)."""
    return _backward_strategy


@contextmanager
def backward_strategy(name: str) -> Iterator[None]:
    """Take backward route ``name`` inside the ``with`` block (the route is read when backward runs)."""
    previous = set_backward_strategy(name)
    try:
        yield
    finally:
        set_backward_strategy(previous)


def _weight_grad(grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, need_input: bool):
    """``(W^T grad, sum(grad inp^T))`` of a 1x1 conv through the backend's own kernel."""
    d_inp, d_w, _ = torch.ops.aten.convolution_backward(
        grad, inp, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [need_input, True, False]
    )
    return d_inp, d_w


class _BottleneckTailFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate, weight, bn_weight, bn_bias, shortcut, keep, running_mean, running_var,
                momentum, eps, group):
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            w = weight.to(dtype)
            e = x * gate.to(dtype) if gate is not None else x
            z = F.conv2d(e, w)
            del e
            scale = invertible_scale(bn_weight, eps, stat_dtype(x))
            shift = bn_bias.detach().to(scale.dtype)
            mean, invstd, count = normalize_(z, scale, shift, running_mean, running_var, True, momentum, eps,
                                             group)
            if keep is not None:
                z.mul_(keep.to(dtype).view(-1, 1, 1, 1))
            out = z.add_(shortcut).relu_() if shortcut is not None else z
        # Without the ReLU nothing about the output is needed: it is not kept.
        ctx.save_for_backward(x, gate, weight, scale, out if shortcut is not None else None, mean, invstd, keep)
        ctx.config = (count, group, bn_weight.dtype, bn_bias.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        x, gate, weight, scale, out, mean, invstd, keep = ctx.saved_tensors
        count, group, bnw_dtype, bnb_dtype = ctx.config
        need = ctx.needs_input_grad
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            if out is not None:  # through the ReLU
                d_shortcut = torch.ops.aten.threshold_backward(d_out, out, 0)
            else:
                d_shortcut = d_out
            d_bn_out = d_shortcut if keep is None else d_shortcut * keep.to(dtype).view(-1, 1, 1, 1)
            e = x * gate.to(dtype) if gate is not None else x
            c_out, c_in = weight.shape[:2]
            positions = e.numel() // c_in
            # Recomputing Z costs C_out*C_in per position; the Gram route 2*C_in^2 per position plus
            # 2*C_out*C_in^2 once. Take the cheaper one (the Gram route wins at large batches).
            strategy = _backward_strategy
            if strategy == "auto":
                cheaper = c_out * c_in * positions <= 2 * c_in * c_in * (positions + c_out)
                strategy = "recompute" if cheaper else "gram"
            if strategy == "recompute":
                d_e, d_weight, d_bn_weight, d_bn_bias = _backward_recompute(
                    d_bn_out, e, weight, scale, mean, invstd, count, group, need[2])
            else:
                d_e, d_weight, d_bn_weight, d_bn_bias = _backward_gram(
                    d_bn_out, e, weight, scale, mean, invstd, count, group, need[2])
            d_x = d_gate = None
            if gate is not None:
                d_x = d_e * gate.to(dtype) if need[0] else None
                if need[1]:
                    d_gate = (d_e * x).sum((2, 3), keepdim=True, dtype=scale.dtype).to(gate.dtype)
            else:
                d_x = d_e if need[0] else None
        return (d_x, d_gate, d_weight, d_bn_weight.to(bnw_dtype) if need[3] else None,
                d_bn_bias.to(bnb_dtype) if need[4] else None, d_shortcut if (need[5] and out is not None) else None,
                None, None, None, None, None, None)


def _backward_recompute(d_bn_out, e, weight, scale, mean, invstd, count, group, need_weight):
    """Recompute the conv output Z, then BatchNorm's and the conv's own backward kernels."""
    dtype = e.dtype
    w = weight.detach().to(dtype)
    z = F.conv2d(e, w)
    if group is None:
        d_z, d_bn_weight, d_bn_bias = torch.ops.aten.native_batch_norm_backward(
            d_bn_out, z, scale, None, None, mean, invstd, True, 0.0, [True, True, True])
    else:
        dims = [0, 2, 3]
        xhat = (z.to(scale.dtype) - channel_view(mean, 4)) * channel_view(invstd, 4)
        d = d_bn_out.to(scale.dtype)
        d_bn_bias = d.sum(dims)
        d_bn_weight = (xhat * d).sum(dims)
        sum_d, sum_xd = all_reduce_sums([d_bn_bias, d_bn_weight], group)
        d_z = ((d - channel_view(sum_d / count, 4) - xhat * channel_view(sum_xd / count, 4))
               * channel_view(scale * invstd, 4)).to(dtype)
    del z
    d_e, d_w = _weight_grad(d_z, e, w, True)
    d_weight = d_w.to(weight.dtype) if need_weight else None
    return d_e, d_weight, d_bn_weight, d_bn_bias


def _backward_gram(d_bn_out, e, weight, scale, mean, invstd, count, group, need_weight):
    """The xhat terms through ``M = sum(dD E^T)`` and ``Gram = sum(E E^T)``: no C_out-wide recompute."""
    dtype = e.dtype
    acc = scale.dtype
    w32 = weight.detach().to(acc).flatten(1)
    dims = [0, 2, 3]
    sum_d = d_bn_out.sum(dims, dtype=acc)
    sum_e = e.sum(dims, dtype=acc)
    gain = scale * invstd  # d(bn out) / d(Z - mu) per channel
    # One call gives W^T (gain * dD) and M = sum(dD E^T).
    d_e, m = _weight_grad(d_bn_out, e, (w32 * gain[:, None]).to(dtype)[:, :, None, None], True)
    m = m.to(acc).flatten(1)
    sum_xd = invstd * ((w32 * m).sum(1) - mean * sum_d)
    d_bn_weight, d_bn_bias = sum_xd, sum_d
    sum_d_all, sum_xd_all = all_reduce_sums([sum_d, sum_xd], group)
    m1 = sum_d_all / count
    k = sum_xd_all / count
    c = gain * k * invstd
    _, gram = _weight_grad(e, e, torch.empty(e.shape[1], e.shape[1], 1, 1, dtype=dtype, device=e.device), False)
    gram = gram.to(acc).flatten(1)
    # dE = W^T (gain dD) - (W^T diag(c) W) E + W^T (c mu - gain m1)
    g_mat = w32.t() @ (c[:, None] * w32)
    h = w32.t() @ (c * mean - gain * m1)
    d_e = d_e - F.conv2d(e, g_mat.to(dtype)[:, :, None, None]) + channel_view(h.to(dtype), 4)
    d_weight = None
    if need_weight:
        # dW = diag(gain) (M - m1 sum(E)^T) - diag(c) (W Gram - mu sum(E)^T)
        d_weight = (gain[:, None] * (m - m1[:, None] * sum_e[None, :])
                    - c[:, None] * (w32 @ gram - mean[:, None] * sum_e[None, :]))
        d_weight = d_weight.view_as(weight).to(weight.dtype)
    return d_e, d_weight, d_bn_weight, d_bn_bias


def bottleneck_tail(x: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor, bn_weight: torch.Tensor,
                    bn_bias: torch.Tensor, shortcut: torch.Tensor | None, keep: torch.Tensor | None,
                    running_mean: torch.Tensor | None, running_var: torch.Tensor | None, momentum: float,
                    eps: float, group=None) -> torch.Tensor:
    """``relu(batch_norm(conv1x1(x * gate)) * keep + shortcut)`` in training mode, keeping little for backward.

    ``gate`` is ``(N, C_in, 1, 1)`` or None, ``weight`` the ``(C_out, C_in, 1, 1)`` conv weight, ``keep``
    an ``(N,)`` drop-path factor or None. With ``shortcut=None`` it is ``batch_norm(conv1x1(x * gate))``
    alone (no add, no ReLU), which keeps only ``x``. Batch statistics span ``group`` when given.
    """
    return _BottleneckTailFunction.apply(x, gate, weight, bn_weight, bn_bias, shortcut, keep, running_mean,
                                         running_var, momentum, eps, group)


def lean_tail_applies(module: nn.Module, norm: nn.Module) -> bool:
    """Whether ``module`` runs its 1x1 conv and ``norm`` as one :func:`lean_tail` op in this forward.

    True when ``module.memory_efficient`` is set, it is training with gradients, ``norm`` is an
    :class:`~tresnet.layers.InPlaceABN` with running statistics, and nothing traces or scripts it.
    """
    return (getattr(module, "memory_efficient", False) and module.training and isinstance(norm, InPlaceABN)
            and norm.track_running_stats and torch.is_grad_enabled()
            and not torch.jit.is_scripting() and not torch.jit.is_tracing())


def lean_tail(x: torch.Tensor, conv_weight: torch.Tensor, norm: InPlaceABN, *, gate: torch.Tensor | None = None,
              shortcut: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`bottleneck_tail` with ``norm``'s parameters and statistics; records the batch in ``norm``."""
    return bottleneck_tail(x, gate, conv_weight, norm.weight, norm.bias, shortcut, keep, norm.running_mean,
                           norm.running_var, norm.count_batch(), norm.eps, norm.stats_group())

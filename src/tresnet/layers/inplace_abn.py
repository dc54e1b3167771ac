"""In-Place Activated BatchNorm (Rota Bulo et al., CVPR 2018) in pure PyTorch.

BatchNorm and its activation run as one op that overwrites its input and keeps only its output
for backward. Backward inverts the activation and the affine step to recover the normalised
input, so the conv output that plain BatchNorm keeps is never stored.

Weight convention: ``weight`` is the plain BatchNorm scale (signed), exactly as in
``nn.BatchNorm2d`` and timm, so plain-BN checkpoints load unchanged and official In-Place ABN
checkpoints load after ``w = |w| + eps``. The affine step must be invertible, so a channel whose
``|weight|`` is below ``eps`` is computed with ``|scale| = eps`` (the sign kept); its gradient is
taken as if the scale were the weight itself. Official checkpoints never hit this, since their
effective scale is ``|w| + eps >= eps`` by construction.
"""

from __future__ import annotations

import warnings
from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tresnet.errors import TResNetError

ACTIVATIONS = ("leaky_relu", "elu", "identity")


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over an ``ndim``-dimensional (N, C, ...) tensor."""
    return t.view(1, -1, *([1] * (ndim - 2)))


def stat_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics and affine parameters are computed in fp32 (fp64 for fp64 inputs)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def invertible_scale(weight: torch.Tensor, eps: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The BatchNorm scale used by In-Place ABN: ``weight``, with ``|scale| >= eps`` (sign kept)."""
    w = weight.detach().to(dtype)
    floor = torch.where(w < 0, torch.full_like(w, -eps), torch.full_like(w, eps))  # traceable to ONNX
    return torch.where(w.abs() < eps, floor, w)


def activate_(x: torch.Tensor, activation: str, param: float) -> torch.Tensor:
    """Apply the activation in place."""
    if activation == "leaky_relu":
        return F.leaky_relu_(x, param)
    if activation == "elu":
        return F.elu_(x, param)
    return x


def invert_activation(y: torch.Tensor, dy: torch.Tensor, activation: str, param: float):
    """From the activation's output and its gradient, the pre-activation and its gradient."""
    if activation == "leaky_relu":
        # leaky_relu with slope 1/param undoes leaky_relu with slope param.
        z = F.leaky_relu(y, 1.0 / param)
        dz = torch.ops.aten.leaky_relu_backward(dy, y, param, True)
    elif activation == "elu":
        # Saturated outputs (y == -alpha in floating point) cannot be inverted exactly: clamp them
        # to the nearest invertible value rather than produce -inf.
        neg = y < 0
        ratio = (y / param).clamp_min(-1.0 + torch.finfo(y.dtype).eps)
        z = torch.where(neg, torch.log1p(ratio), y)
        dz = torch.ops.aten.elu_backward(dy, param, 1.0, 1.0, True, y)
    else:
        z, dz = y, dy
    return z, dz


def _check_batch(x: torch.Tensor, count: int) -> None:
    if count <= 1:
        raise TResNetError(
            f"In-Place ABN in training needs more than one value per channel, got input of shape "
            f"{tuple(x.shape)}; use a batch size above 1 or call model.eval()"
        )


def _sync_stats(x: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and biased variance over the whole process group, combined exactly from local ones."""
    dims = [0] + list(range(2, x.dim()))
    count = x.numel() // x.shape[1]
    var, mean = torch.var_mean(x.to(stat_dtype(x)), dim=dims, correction=0)
    local = torch.cat([mean, var, torch.tensor([float(count)], device=x.device)])
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    stats = torch.stack(gathered)
    c = x.shape[1]
    means, variances, counts = stats[:, :c], stats[:, c : 2 * c], stats[:, 2 * c :]
    total = counts.sum()
    g_mean = (means * counts).sum(0) / total
    g_var = ((variances + (means - g_mean) ** 2) * counts).sum(0) / total
    return g_mean, g_var, int(total.item())


def normalize_(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, running_mean: torch.Tensor | None,
               running_var: torch.Tensor | None, training: bool, momentum: float, eps: float,
               group=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Overwrite ``x`` with ``scale * xhat + shift`` per channel; return ``(mean, invstd, count)``.

    In training the statistics are the batch's (in fp32, over ``group`` when given) and the running
    statistics are updated as ``nn.BatchNorm2d`` does (unbiased variance); otherwise the running ones.
    """
    ndim = x.dim()
    count = x.numel() // x.shape[1]
    if training and group is None:
        _check_batch(x, count)
        mean = torch.empty(x.shape[1], dtype=stat_dtype(x), device=x.device)
        invstd = torch.empty_like(mean)
        if x.device.type == "cpu":
            # The CPU kernel normalises element by element, so the output may alias the input.
            torch.ops.aten.native_batch_norm.out(
                x, scale, shift, running_mean, running_var, True, momentum, eps,
                out=x, save_mean=mean, save_invstd=invstd,
            )
        else:
            out, mean, invstd = torch.native_batch_norm(x, scale, shift, running_mean, running_var, True,
                                                        momentum, eps)
            x.copy_(out)
        return mean, invstd, count
    if training:
        mean, var, count = _sync_stats(x, group)
        _check_batch(x, count)
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            cast(torch.Tensor, running_var).mul_(1 - momentum).add_(var * (count / (count - 1)), alpha=momentum)
        invstd = torch.rsqrt(var + eps)
    else:  # eval normalises with the running statistics, which such a norm has
        mean = cast(torch.Tensor, running_mean).to(stat_dtype(x))
        invstd = torch.rsqrt(cast(torch.Tensor, running_var).to(stat_dtype(x)) + eps)
    a = scale * invstd
    x.mul_(channel_view(a, ndim)).add_(channel_view(shift - mean * a, ndim))
    return mean, invstd, count


def all_reduce_sums(tensors: list[torch.Tensor], group) -> list[torch.Tensor]:
    """Sum each tensor over ``group`` (one collective); unchanged without a group."""
    if group is None:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    return list(flat.split([t.numel() for t in tensors]))


class _InPlaceABNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps,
                activation, activation_param, group):
        scale = invertible_scale(weight, eps, stat_dtype(x))
        shift = bias.detach().to(scale.dtype)
        mean, invstd, count = normalize_(x, scale, shift, running_mean, running_var, training, momentum, eps,
                                         group)
        activate_(x, activation, activation_param)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x, scale, shift, mean, invstd)
        ctx.config = (training, eps, activation, activation_param, group, count, weight.dtype, bias.dtype)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        y, scale, shift, mean, invstd = ctx.saved_tensors
        training, eps, activation, activation_param, group, count, w_dtype, b_dtype = ctx.config
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        ndim = y.dim()
        dims = [0] + list(range(2, ndim))
        dy = dy.contiguous(memory_format=_memory_format(y))
        z, dz = invert_activation(y, dy, activation, activation_param)
        # xhat = (z - shift) / scale: the normalised input, recovered from the output.
        inv_scale = 1.0 / scale
        if training and group is None:
            # The native kernel, told that z was normalised with mean `shift` and inverse std `1/scale`,
            # sees exactly xhat; a weight of scale^2 * invstd then gives dx its true gain scale * invstd.
            dx, dw, db = torch.ops.aten.native_batch_norm_backward(
                dz, z, scale * scale * invstd, None, None, shift, inv_scale, True, eps, [need_x, need_w, need_b]
            )
        else:
            xhat = (z.to(scale.dtype) - channel_view(shift, ndim)) * channel_view(inv_scale, ndim)
            dzf = dz.to(scale.dtype)
            sum_dz = dzf.sum(dims)
            sum_xhat_dz = (xhat * dzf).sum(dims)
            dw, db = sum_xhat_dz, sum_dz
            dx = None
            if need_x:
                gain = channel_view(scale * invstd, ndim)
                if training:
                    sum_dz, sum_xhat_dz = all_reduce_sums([sum_dz, sum_xhat_dz], group)
                    dx = (dzf - channel_view(sum_dz / count, ndim)
                          - xhat * channel_view(sum_xhat_dz / count, ndim)) * gain
                else:
                    dx = dzf * gain
                dx = dx.to(y.dtype)
        dw = dw.to(w_dtype) if need_w else None
        db = db.to(b_dtype) if need_b else None
        return dx if need_x else None, dw, db, None, None, None, None, None, None, None, None


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def inplace_abn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                activation: str = "leaky_relu", activation_param: float = 0.01,
                group=None) -> torch.Tensor:
    """Functional In-Place ABN: normalises, scales, shifts and activates ``x`` in place."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    return _InPlaceABNFunction.apply(x, weight, bias, running_mean, running_var, training, momentum, eps,
                                     activation, activation_param, group)


class InPlaceABN(nn.BatchNorm2d):
    """BatchNorm2d + activation as one in-place op that keeps only its output for backward.

    Same parameters and buffers as ``nn.BatchNorm2d`` (so its checkpoints and timm's load as they
    are); ``activation`` is ``"leaky_relu"``, ``"elu"`` or ``"identity"``. When no gradient is
    needed the eval path is a plain affine step and activation.
    """

    def __init__(self, num_features: int, activation: str = "leaky_relu", activation_param: float = 0.01,
                 eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        if not affine:
            raise ValueError("InPlaceABN needs affine=True: the backward pass inverts the affine step")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if activation != "identity" and not activation_param > 0:
            raise ValueError(f"activation_param must be > 0 for {activation} to be invertible, "
                             f"got {activation_param}")
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True,
                         track_running_stats=track_running_stats)
        self.activation = activation
        self.activation_param = activation_param

    def count_batch(self) -> float:
        """Record one training batch (``num_batches_tracked += 1``, as ``nn.BatchNorm2d`` does); return the momentum.

        The momentum is that of this batch's running-statistics update: ``momentum``, or with
        ``momentum=None`` the cumulative average's ``1 / num_batches_tracked``. Nothing is recorded
        in eval mode or without running statistics.
        """
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                return 1.0 / float(self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def stats_group(self) -> dist.ProcessGroup | None:
        """The process group that batch statistics span, or None for this process's batch alone."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats and not (torch.is_grad_enabled() and
                                        (x.requires_grad or self.weight.requires_grad)):
            # Inference: a plain affine step and activation, no autograd bookkeeping.
            scale = invertible_scale(self.weight, self.eps, self.weight.dtype)
            out = F.batch_norm(x, self.running_mean, self.running_var, scale, self.bias, False, 0.0, self.eps)
            return activate_(out, self.activation, self.activation_param)
        momentum = self.count_batch() if use_batch_stats else 0.0
        running_mean = self.running_mean if self.track_running_stats else None
        running_var = self.running_var if self.track_running_stats else None
        return inplace_abn(x, self.weight, self.bias, running_mean, running_var, use_batch_stats, momentum,
                           self.eps, self.activation, self.activation_param, self.stats_group() if use_batch_stats
                           else None)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}, activation_param={self.activation_param}"


class InPlaceABNSync(InPlaceABN):
    """In-Place ABN whose batch statistics and backward reductions span the process group.

    Without an initialised ``torch.distributed`` process group it works locally and warns (a
    ``UserWarning``, shown once under Python's default warning filter).
    """

    def __init__(self, *args, process_group=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def stats_group(self) -> dist.ProcessGroup | None:
        """``process_group`` (default: the whole world), or None when there is one process or none is initialised."""
        if dist.is_available() and dist.is_initialized():
            group = self.process_group or dist.group.WORLD
            return group if dist.get_world_size(group) > 1 else None
        # One place in the code: the default filter shows it once per process, not once per layer and step.
        warnings.warn("InPlaceABNSync: no torch.distributed process group is initialised; "
                      "batch statistics are computed locally", stacklevel=1)
        return None

"""Anti-aliased downsampling: a fixed [1, 2, 1] x [1, 2, 1] / 16 blur with stride 2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def blur_filter(channels: int) -> torch.Tensor:
    """The per-channel 3x3 binomial filter, shaped for a depthwise conv: (channels, 1, 3, 3)."""
    taps = torch.tensor([1.0, 2.0, 1.0])
    kernel = taps[:, None] * taps[None, :]
    kernel = kernel / kernel.sum()
    return kernel[None, None].repeat(channels, 1, 1, 1)


class AntiAliasDownsample(nn.Module):
    """Blur then subsample by 2: reflect padding of 1 and a depthwise conv with stride 2.

    The filter is a non-persistent buffer (not learned, not in checkpoints); it follows the
    module's device and dtype, and is cast to the input's dtype so that fp16/bf16 and autocast work.
    With ``export_friendly`` (an attribute that may also be set on a built module), an ONNX export
    writes the reflect padding as slices and concatenations, which every runtime supports, instead
    of a ``Pad`` node; the values are the same.
    """

    filt: torch.Tensor  # a buffer

    def __init__(self, channels: int, stride: int = 2, *, export_friendly: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.stride = stride
        self.export_friendly = export_friendly
        self.register_buffer("filt", blur_filter(channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.export_friendly and torch.onnx.is_in_onnx_export():
            x = reflect_pad1_by_slices(x)
        else:
            x = reflect_pad1(x)
        return F.conv2d(x, self.filt.to(dtype=x.dtype), stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        flag = ", export_friendly=True" if self.export_friendly else ""
        return f"channels={self.channels}, stride={self.stride}{flag}"


def reflect_pad1(x: torch.Tensor) -> torch.Tensor:
    """``F.pad(x, (1, 1, 1, 1), mode="reflect")`` in ``x``'s own dtype, autocast or not.

    CPU autocast runs reflection padding in fp32, and the padding's backward keeps its input: under bf16
    or fp16 autocast that is an fp32 copy of every blurred activation, beside the low-precision one the
    norm already keeps. Padding only moves values, so its result is the same in the input's dtype.
    """
    if x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return F.pad(x, (1, 1, 1, 1), mode="reflect")
    return F.pad(x, (1, 1, 1, 1), mode="reflect")


def reflect_pad1_by_slices(x: torch.Tensor) -> torch.Tensor:
    """``F.pad(x, (1, 1, 1, 1), mode="reflect")`` of an ``(N, C, H, W)`` tensor, written with slices and ``cat``."""
    x = torch.cat([x[:, :, 1:2], x, x[:, :, -2:-1]], dim=2)
    return torch.cat([x[:, :, :, 1:2], x, x[:, :, :, -2:-1]], dim=3)

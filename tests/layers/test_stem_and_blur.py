"""SpaceToDepth channel order, anti-aliased downsampling, SE and pooling."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from helpers import requires_onnx
from tresnet.layers import AntiAliasDownsample, FastGlobalAvgPool, SpaceToDepth, SqueezeExcite, space_to_depth
from tresnet.layers.anti_alias import reflect_pad1_by_slices


def test_space_to_depth_uses_the_official_channel_order():
    x = torch.randn(2, 3, 8, 12)
    y = space_to_depth(x)
    assert y.shape == (2, 48, 2, 3)
    for row in range(4):
        for col in range(4):
            for c in range(3):
                assert torch.equal(y[:, (row * 4 + col) * 3 + c], x[:, c, row::4, col::4])


def test_space_to_depth_is_a_fixed_permutation_of_pixel_unshuffle():
    x = torch.randn(1, 3, 8, 8)
    ours, theirs = space_to_depth(x), F.pixel_unshuffle(x, 4)
    perm = [c * 16 + (i // 3) for i in range(48) for c in [i % 3]]
    assert torch.equal(ours, theirs[:, perm])
    assert not torch.equal(ours, theirs)


def test_space_to_depth_channels_last_gives_the_same_values_in_channels_last():
    x = torch.randn(2, 3, 16, 8)
    y = SpaceToDepth()(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(y, space_to_depth(x))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_blur_is_the_binomial_filter_with_reflect_padding():
    x = torch.randn(2, 4, 9, 10)
    y = AntiAliasDownsample(4)(x)
    k = torch.tensor([1.0, 2.0, 1.0])
    kernel = (k[:, None] * k[None, :] / 16).expand(4, 1, 3, 3)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, stride=2, groups=4)
    assert torch.allclose(y, expected, atol=1e-6)
    assert y.shape == (2, 4, 5, 5)


def test_reflect_padding_by_slices_is_reflect_padding():
    x = torch.randn(2, 3, 5, 6)
    assert torch.equal(reflect_pad1_by_slices(x), F.pad(x, (1, 1, 1, 1), mode="reflect"))
    blur, friendly = AntiAliasDownsample(3), AntiAliasDownsample(3, export_friendly=True)
    assert torch.equal(friendly(x), blur(x)) and "export_friendly=True" in repr(friendly)


@requires_onnx
@pytest.mark.parametrize("export_friendly", [False, True])
def test_export_friendly_blur_exports_without_a_pad_node(export_friendly, tmp_path):
    import onnx

    path = tmp_path / "blur.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(AntiAliasDownsample(3, export_friendly=export_friendly), (torch.randn(1, 3, 8, 8),),
                          str(path), dynamo=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("Pad" in ops) is not export_friendly


def test_blur_filter_is_not_learned_nor_saved():
    blur = AntiAliasDownsample(8)
    assert list(blur.parameters()) == []
    assert blur.state_dict() == {}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_blur_runs_in_low_precision_and_channels_last(dtype):
    blur = AntiAliasDownsample(4)
    x = torch.randn(1, 4, 8, 8)
    ref = blur(x)
    if dtype is torch.float16 and not hasattr(torch.ops.aten, "_conv_depthwise2d"):
        pytest.skip("no fp16 depthwise conv")
    out = blur(x.to(dtype).contiguous(memory_format=torch.channels_last))
    assert out.dtype == dtype
    assert torch.allclose(out.float(), ref, atol=5e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_blur_under_autocast_pads_in_the_input_type_and_keeps_no_fp32_copy(dtype):
    blur = AntiAliasDownsample(4)
    x = torch.randn(2, 4, 8, 8).to(dtype).requires_grad_()
    kept = []
    with torch.autocast("cpu", dtype=dtype), torch.autograd.graph.saved_tensors_hooks(
            lambda t: kept.append(t.dtype) or t, lambda t: t):
        out = blur(x)
    assert out.dtype == dtype and kept and torch.float32 not in kept  # CPU autocast would pad in fp32
    # the values are those of padding in fp32 and convolving in the low precision, as autocast did
    padded = F.pad(x.detach().float(), (1, 1, 1, 1), mode="reflect").to(dtype)
    assert torch.equal(out.detach(), F.conv2d(padded, blur.filt.to(dtype), stride=2, groups=4))
    out.float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


def test_squeeze_excite_scales_each_channel_by_its_gate():
    se = SqueezeExcite(8, 4)
    x = torch.randn(2, 8, 5, 5)
    gate = se.gate(x)
    assert gate.shape == (2, 8, 1, 1)
    assert torch.all((gate > 0) & (gate < 1))
    assert torch.allclose(se(x), x * gate)


def test_fast_global_pool_is_a_spatial_mean():
    x = torch.randn(2, 8, 5, 7)
    assert torch.allclose(FastGlobalAvgPool()(x), x.flatten(2).mean(2), atol=1e-6)
    assert FastGlobalAvgPool(flatten=False)(x).shape == (2, 8, 1, 1)

"""tresnet.deploy.fusion.fuse: the folded model computes what the eval-mode model computes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tresnet
from helpers import max_rel_diff, randomize_norms
from tresnet.deploy import fold_batchnorm, fuse
from tresnet.errors import ConfigError
from tresnet.layers import AntiAliasDownsample, ConvNormAct, InPlaceABN, SpaceToDepth
from tresnet.layers.inplace_abn import inplace_abn
from tresnet.models.tresnet import BasicBlock, Bottleneck
from tresnet.models.tresnet_fusion import FusedStem

SIZES = (64, 96)


def _model(name: str, norm: str = "inplace_abn", residual_gain: float = 0.2, **kwargs) -> nn.Module:
    """A model with random BN weights (signed), biases and statistics: every fold does real work.

    The last norm of each residual branch is scaled by ``residual_gain``, as training leaves it small
    (it starts at zero): with full-strength random branches 30+ blocks pile up into logits whose own
    fp32 rounding error (original model against fp64) is already 1e-5 to 1e-4.
    """
    model = randomize_norms(tresnet.create_model(name, num_classes=10, norm=norm, **kwargs), signed=True)
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, (BasicBlock, Bottleneck)):
                block.last_norm().weight.mul_(residual_gain)
    return model.eval()


@pytest.mark.parametrize("name,norm", [
    ("tresnet_m", "inplace_abn"),
    pytest.param("tresnet_l", "inplace_abn", marks=pytest.mark.slow),
    pytest.param("tresnet_xl", "inplace_abn", marks=pytest.mark.slow),
    ("tresnet_v2_l", "inplace_abn"), ("tresnet_m", "bn"), ("tresnet_v2_l", "bn"), ("tresnet_m", "inplace_abn_sync"),
])
def test_fused_model_equals_eval_model(name, norm):
    model = _model(name, norm)
    fused = fuse(model)
    for size in SIZES:
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            want = model(x)
        got = fused(x)
        assert got.shape == want.shape == (2, 10)
        assert max_rel_diff(got, want) < 1e-5, (name, norm, size)


@pytest.mark.parametrize("name", ["tresnet_m", "tresnet_v2_l"])
def test_folding_is_exact_in_fp64(name):
    # Full-strength random branches (badly conditioned in fp32): in fp64 the rewrites agree to rounding.
    model = _model(name, norm="bn", residual_gain=1.0).double()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)  # fp64 convs are slow: one small image
    with torch.no_grad():
        want = model(x)
    assert max_rel_diff(fuse(model)(x), want) < 1e-12


def test_fuse_leaves_the_original_untouched():
    model = _model("tresnet_m").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model)
    assert model.training and not fused.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.body.s2d, SpaceToDepth) and isinstance(model.body.conv1, ConvNormAct)
    assert all(p.requires_grad for p in model.parameters())


def test_the_module_is_fusion_and_fuse_is_the_function():
    import tresnet.deploy
    import tresnet.deploy.fusion as fusion

    assert tresnet.deploy.fuse is fusion.fuse and callable(tresnet.deploy.fuse)


def test_fused_blurs_are_export_friendly_copies():
    model = _model("tresnet_m")
    fused = fuse(model)
    original, copied = model.body.layer2[0].conv1.aa, fused.body.layer2[0].conv1.aa
    assert isinstance(copied, AntiAliasDownsample) and copied is not original
    assert copied.export_friendly and not original.export_friendly


def test_fused_model_has_no_norm_left_and_needs_no_grad():
    fused = fuse(_model("tresnet_v2_l"))
    kinds = {type(m) for m in fused.modules()}
    assert not any(issubclass(k, (nn.BatchNorm2d, SpaceToDepth, ConvNormAct)) for k in kinds)
    assert isinstance(fused.body.s2d, FusedStem)
    assert not any(p.requires_grad for p in fused.parameters())


def test_fused_features_only_model_equals_eval_model():
    model = _model("tresnet_m", features_only=True, out_indices=(0, 1, 2, 3, 4))
    fused = fuse(model)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    got = fused(x)
    assert len(got) == len(want) == 5
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and max_rel_diff(g, w) < 1e-5


def test_plain_layout_and_autograd_fallback_give_the_same_result():
    model = _model("tresnet_m")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    nchw = fuse(model, channels_last=False)
    assert max_rel_diff(nchw(x), want) < 1e-5
    # An input that requires grad takes the plain-op path (the oneDNN fused kernels have no backward).
    xg = x.clone().requires_grad_(True)
    out = fuse(model)(xg)
    out.sum().backward()
    assert xg.grad is not None and max_rel_diff(out.detach(), want) < 1e-5


def test_fold_replicates_the_inplace_abn_weight_clamp():
    # In-Place ABN computes with |weight| clamped to eps (sign kept), so that the affine step is invertible.
    conv = nn.Conv2d(8, 6, 3, padding=1, bias=False)
    bn = InPlaceABN(6, activation="identity").eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.0, 1e-7, -1e-7, 0.5, -2.0, 1e-5]))
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        want = inplace_abn(conv(x), bn.weight, bn.bias, bn.running_mean, bn.running_var, training=False,
                           eps=bn.eps, activation="identity")
        got = fold_batchnorm(conv, bn)(x)
    assert max_rel_diff(got, want) < 1e-6
    assert (got[:, 0] - bn.bias[0]).abs().max() > 0  # the clamped channel is not zeroed


@pytest.mark.parametrize("norm", ["bn", "inplace_abn"])
def test_elu_units_fold(norm):
    unit = ConvNormAct(16, 8, 3, 2, "elu", 1.0, norm, anti_alias=True)
    randomize_norms(unit, signed=True).eval()
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        want = unit(x)
    got = fuse(unit)(x)
    assert got.shape == want.shape == (2, 8, 6, 6)
    assert max_rel_diff(got, want) < 1e-6


def test_folding_needs_running_statistics():
    conv = nn.Conv2d(4, 4, 1, bias=False)
    with pytest.raises(ConfigError, match="running statistics"):
        fold_batchnorm(conv, nn.BatchNorm2d(4, track_running_stats=False))


def test_a_fused_model_that_has_run_copies_pickles_and_follows_new_weights(tmp_path):
    # The oneDNN-ordered weights cached by the first call are left behind by a copy or a pickle and made
    # again, for a new input shape and for a changed weight.
    model = randomize_norms(tresnet.create_model("tresnet_m", num_classes=5)).eval()
    fused = fuse(model)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        first = fused(x)
        copied = copy.deepcopy(fused)(x)
        torch.save(fused, tmp_path / "fused.pt")
        loaded = torch.load(tmp_path / "fused.pt", weights_only=False)(x)
        assert torch.equal(first, copied) and torch.equal(first, loaded)
        assert max_rel_diff(fused(torch.cat([x, x]))[2:], first) < 1e-6  # another batch size
        conv = fused.body.layer1[0].conv1.conv
        conv.weight.mul_(0.5)
        changed = fused(x)
        conv.weight.mul_(2.0)
        assert not torch.allclose(changed, first) and max_rel_diff(fused(x), first) < 1e-6

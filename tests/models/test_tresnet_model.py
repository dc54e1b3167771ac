"""The TResNet family: structure, parameter counts, input sizes, compile and trace (the surface every family
shares: tests/models/test_model_contract.py)."""

from __future__ import annotations

import pytest
import torch

import tresnet
from helpers import max_rel_diff, randomize_norms, requires_timm
from tresnet.errors import InputSizeError, ModelNotFoundError
from tresnet.layers import BatchNormAct2d, InPlaceABN, InPlaceABNSync
from tresnet.models.tresnet import MIN_INPUT_SIZE

# Millions of parameters at 1000 classes, as timm's tresnet_m/l/xl/v2_l count them; widths from timm's
# tresnet.py (64 * width_factor 1.0, 1.2, 1.3 channels after the stem; 8 * 4 * planes features).
PARAMS_M = {"tresnet_m": 31.39, "tresnet_l": 55.99, "tresnet_xl": 78.44, "tresnet_v2_l": 46.17}
FEATURES = {"tresnet_m": (64, 2048), "tresnet_l": (76, 2432), "tresnet_xl": (83, 2656), "tresnet_v2_l": (64, 2048)}


@pytest.mark.parametrize("name", list(PARAMS_M))
def test_parameter_counts_and_widths(name):
    model = tresnet.create_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(params, 2) == PARAMS_M[name]
    planes, features = FEATURES[name]
    assert model.planes == planes and model.num_features == features
    assert model.head.fc.in_features == features


def test_list_models_and_configs():
    assert tresnet.list_models("tresnet*") == ["tresnet_l", "tresnet_l_448", "tresnet_m", "tresnet_m_448",
                                               "tresnet_v2_l", "tresnet_xl", "tresnet_xl_448"]
    assert tresnet.list_models(family="tresnet") == tresnet.list_models("tresnet*")
    assert tresnet.list_models("*448") == ["tresnet_l_448", "tresnet_m_448", "tresnet_xl_448"]
    cfg = tresnet.get_pretrained_cfg("tresnet_m")
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["mean"] == (0, 0, 0)
    cfg448 = tresnet.get_pretrained_cfg("tresnet_l_448")
    assert cfg448["input_size"] == (3, 448, 448) and cfg448["crop_mode"] == "squash" and cfg448["arch"] == "tresnet_l"


def test_unknown_model_names_the_choices():
    with pytest.raises(ModelNotFoundError, match="unknown model 'tresnet_s'.*tresnet_m"):
        tresnet.create_model("tresnet_s")


def test_448_variants_are_the_same_networks():
    a, b = tresnet.create_model("tresnet_m"), tresnet.create_model("tresnet_m_448")
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


def test_initialisation_follows_the_paper():
    model = tresnet.create_model("tresnet_m")
    for block in model.body.layer1:
        assert torch.count_nonzero(block.conv2.bn.weight) == 0
    for block in model.body.layer3:
        assert torch.count_nonzero(block.conv3.bn.weight) == 0
        assert torch.all(block.conv1.bn.weight == 1)
    assert model.head.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    conv = model.body.layer3[1].conv1.conv
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    gain = (2.0 / (1 + 0.01**2)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(gain / fan_out**0.5, rel=0.05)


def test_structure_uses_anti_aliasing_se_and_slopes():
    m = tresnet.create_model("tresnet_m")
    assert m.body.conv1.conv.kernel_size == (3, 3) and m.body.conv1.conv.in_channels == 48
    assert m.body.conv1.bn.activation_param == 1e-2
    assert m.body.layer2[0].conv1.aa is not None and m.body.layer2[1].conv1.aa is None
    assert m.body.layer3[0].conv2.aa is not None and m.body.layer3[0].conv1.aa is None
    assert m.body.layer1[0].conv1.bn.activation_param == 1e-3
    assert m.body.layer1[0].se.fc1.out_channels == 64  # max(64 // 4, 64)
    assert m.body.layer3[0].se.fc1.out_channels == 128  # max(256 * 4 // 8, 64)
    assert all(block.se is None for block in m.body.layer4)
    assert isinstance(m.body.layer2[0].downsample[0], torch.nn.AvgPool2d)
    v2 = tresnet.create_model("tresnet_v2_l")
    assert v2.body.layer1[0].conv3 is not None and len(v2.body.layer1[0].downsample) == 1
    assert v2.body.conv1.bn.activation_param == 1e-6 and v2.body.layer3[0].conv1.bn.activation_param == 1e-6


@pytest.mark.parametrize("norm,cls", [("inplace_abn", InPlaceABN), ("bn", BatchNormAct2d),
                                      ("inplace_abn_sync", InPlaceABNSync)])
def test_norm_choice(norm, cls):
    model = tresnet.create_model("tresnet_m", norm=norm)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(type(m) is cls for m in norms)


def test_feature_widths_and_the_stem_as_a_feature():
    # the maps against their feature_info, for every family: tests/models/test_model_contract.py
    assert tresnet.create_model("tresnet_m", features_only=True).feature_info.channels() == [64, 128, 1024, 2048]
    stem = tresnet.create_model("tresnet_v2_l", features_only=True, out_indices=(0, 2))
    assert stem.feature_info.channels() == [64, 512]


@pytest.mark.parametrize("size", [(20, 20), (64, 36), (100, 60)])
def test_sizes_that_work(size):
    model = tresnet.create_model("tresnet_m").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, *size)).shape == (1, 1000)


@pytest.mark.parametrize("size", [(16, 64), (64, 66), (223, 224)])
def test_sizes_that_cannot_work_say_which_do(size):
    model = tresnet.create_model("tresnet_m")
    with pytest.raises(InputSizeError, match=f"multiple of 4 and at least {MIN_INPUT_SIZE}"):
        model(torch.rand(1, 3, *size))


@requires_timm
def test_every_size_the_reference_takes_matches_our_rule():
    import timm

    ref = timm.create_model("tresnet_m").eval()
    for side in (16, 18, 20, 21, 22, 24, 28):
        try:
            with torch.no_grad():
                ref(torch.rand(1, 3, side, side))
            reference_ok = True
        except RuntimeError:
            reference_ok = False
        assert reference_ok == (side % 4 == 0 and side >= MIN_INPUT_SIZE), side


@pytest.mark.parametrize("norm", ["inplace_abn", "bn"])
def test_channels_last_equals_default(norm):
    model = randomize_norms(tresnet.create_model("tresnet_m", norm=norm))
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a = model(x)
        b = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert max_rel_diff(b, a) < 1e-5
    # Gradients and train mode in fp64, where rounding cannot hide a layout bug (fp32 gradients through
    # many randomly scaled norms differ by ~1e-3 between any two conv algorithms).
    model = model.double()
    for mode in ("eval", "train"):
        getattr(model, mode)()
        xa = x.double().requires_grad_()
        xb = x.double().contiguous(memory_format=torch.channels_last).requires_grad_()
        ya = model.to(memory_format=torch.contiguous_format)(xa)
        ga = torch.autograd.grad(ya.square().sum(), xa)[0]
        yb = model.to(memory_format=torch.channels_last)(xb)
        gb = torch.autograd.grad(yb.square().sum(), xb)[0]
        assert max_rel_diff(yb, ya) < 1e-10 and max_rel_diff(gb, ga) < 1e-10, mode


def test_jit_trace_matches_eager():
    model = randomize_norms(tresnet.create_model("tresnet_m")).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        assert max_rel_diff(traced(torch.rand(3, 3, 64, 64) * 0 + x[:1]), model(x[:1]).expand(3, -1)) < 1e-5


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = randomize_norms(tresnet.create_model("tresnet_m")).eval()
    x = torch.rand(2, 3, 64, 64)
    compiled = torch.compile(model)
    with torch.no_grad():
        assert max_rel_diff(compiled(x), model(x)) < 1e-4

"""The GENet family: parameter counts, parity with timm's gernet_s/m/l, configs, errors (the surface every family
shares: tests/models/test_model_contract.py)."""

from __future__ import annotations

import re

import pytest
import torch

import tresnet
from helpers import max_rel_diff, randomize_norms, requires_timm
from tresnet.data.transforms import resolve_eval_config
from tresnet.errors import ConfigError, InputSizeError
from tresnet.models.genet import MIN_INPUT_SIZE, BottleneckBlock, XXBlock

# Millions of parameters at 1000 classes, as timm counts gernet_s/m/l.
PARAMS_M = {"genet_light": 8.17, "genet_normal": 21.14, "genet_large": 31.08}
TIMM_NAMES = {"genet_light": "gernet_s", "genet_normal": "gernet_m", "genet_large": "gernet_l"}
# (model, input side, both modes): light at the official size (192) and timm's (224), normal at the official
# size, large at 256 (official and timm's alike); normal at 224 is covered by tests/test_genet_checkpoints.py.
PARITY_CASES = [("genet_light", 192), ("genet_light", 224), ("genet_normal", 192), ("genet_large", 256)]
ALL_FEATURES = (0, 1, 2, 3, 4)


def timm_reference(name: str, **kwargs) -> torch.nn.Module:
    """timm's network for ``name`` with random weights and random norms (weight, bias, running stats)."""
    import timm

    torch.manual_seed(0)
    return randomize_norms(timm.create_model(TIMM_NAMES[name], **kwargs), seed=1)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", list(PARAMS_M))
def test_parameter_counts(name):
    model = tresnet.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == PARAMS_M[name]
    assert model.head.fc.in_features == model.num_features == model.arch.num_features


def test_stages_are_xx_xx_bl_dw_dw():
    model = tresnet.create_model("genet_normal")
    first_blocks = [stage[0] for stage in model.stages]
    assert [type(b) for b in first_blocks] == [XXBlock, XXBlock, BottleneckBlock, BottleneckBlock, BottleneckBlock]
    bl, dw = first_blocks[2], first_blocks[3]
    assert bl.conv2_kxk.conv.groups == 1 and bl.conv1_1x1.conv.out_channels == 640 // 4
    assert dw.conv2_kxk.conv.groups == dw.conv2_kxk.conv.in_channels == 640 * 3
    assert [len(stage) for stage in model.stages] == [1, 2, 6, 4, 1]


@requires_timm
@pytest.mark.parametrize("name,size", PARITY_CASES)
def test_outputs_equal_timm_in_eval_and_train(name, size):
    ref = timm_reference(name)
    ours = tresnet.create_model(name)
    ours.load_state_dict(ref.state_dict())
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        for mode in ("eval", "train"):
            getattr(ref, mode)()
            getattr(ours, mode)()
            assert max_rel_diff(ours(x), ref(x)) <= 1e-5, mode
    for (key, a), b in zip(ref.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-7), key  # running stats updated alike


@requires_timm
@pytest.mark.parametrize("out_indices", [ALL_FEATURES, (1, 2, 3, 4)])
def test_features_only_matches_timm(out_indices):
    ref = timm_reference("genet_light", features_only=True, out_indices=out_indices).eval()
    ours = tresnet.create_model("genet_light", features_only=True, out_indices=out_indices).eval()
    # timm's feature wrapper flattens the stages into its top level: stages_0.0... -> stages.0.0...
    ours.load_state_dict({re.sub(r"^stages_(\d+)\.", r"stages.\1.", k): v for k, v in ref.state_dict().items()})
    assert ours.feature_info.channels() == ref.feature_info.channels()
    assert ours.feature_info.reduction() == ref.feature_info.reduction()
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        mine, theirs = ours(x), ref(x)
    assert len(mine) == len(theirs) == len(out_indices)
    for a, b in zip(mine, theirs, strict=True):
        assert a.shape == b.shape and max_rel_diff(a, b) <= 1e-5


def test_list_models_shows_both_families():
    everything = tresnet.list_models()
    assert {"genet_light", "genet_normal", "genet_large", "tresnet_m"} <= set(everything)
    assert tresnet.list_models(family="genet") == ["genet_large", "genet_light", "genet_normal"]
    assert tresnet.list_models("genet*") == tresnet.list_models(family="genet")
    assert sorted(tresnet.list_models(family="genet") + tresnet.list_models(family="tresnet")) == everything
    assert tresnet.get_pretrained_cfg("genet_normal")["family"] == "genet"


def test_pretrained_cfg_carries_the_official_preprocessing():
    cfg = tresnet.get_pretrained_cfg("genet_light")
    assert cfg["arch"] == "genet_light" and cfg["input_size"] == (3, 192, 192)
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["top1"] == 75.7 and cfg["timm_eval"] == dict(img_size=224, top1=76.874)
    official = resolve_eval_config(cfg)
    assert official["img_size"] == (192, 192) and official["resize_size"] == 220  # ceil(192 / 0.875)
    assert official["crop_mode"] == "center" and official["interpolation"] == "bilinear"
    assert resolve_eval_config(cfg, img_size=224)["resize_size"] == 256
    assert [tresnet.get_pretrained_cfg(n)["input_size"][1] for n in ("genet_light", "genet_normal", "genet_large")] \
        == [192, 192, 256]


def test_tresnet_only_options_are_one_line_config_errors():
    with pytest.raises(ConfigError) as excinfo:
        tresnet.create_model("genet_light", memory_efficient=True)
    assert "memory_efficient" in one_line_error(excinfo) and "GENet" in str(excinfo.value)
    with pytest.raises(ConfigError) as excinfo:
        tresnet.create_model("genet_light", norm="inplace_abn")
    assert "'inplace_abn'" in one_line_error(excinfo) and "norm='bn'" in str(excinfo.value)
    assert isinstance(tresnet.create_model("genet_light", norm="bn").stem.bn, torch.nn.BatchNorm2d)


@pytest.mark.parametrize("size", [(31, 64), (16, 16)])
def test_inputs_under_32_pixels_are_refused(size):
    model = tresnet.create_model("genet_light")
    with pytest.raises(InputSizeError, match=f"at least {MIN_INPUT_SIZE}"):
        model(torch.rand(1, 3, *size))
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 32, 45)).shape == (1, 1000)

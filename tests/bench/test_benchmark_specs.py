"""Model names: ours vs timm, forms, the paper alias, published top-1, and clear errors."""

from __future__ import annotations

import sys

import pytest
import torch

from helpers import requires_timm
from tresnet.bench.forms import Form, get_form, register_form
from tresnet.bench.published import PAPER_PEERS, PEER_RESULTS, published_top1
from tresnet.bench.specs import BuildOptions, ModelSpec, native_img_size, parse_model_list, parse_model_spec
from tresnet.bench.targets import build_target, check_spec, count_gmacs
from tresnet.errors import (
    ConfigError,
    InputSizeError,
    MissingDependencyError,
    ModelNotFoundError,
    TResNetError,
)


def test_plain_names_prefer_ours_then_timm():
    assert parse_model_spec("tresnet_m") == ModelSpec("tresnet_m", "tresnet_m", "tresnet")
    assert parse_model_spec("resnet50") == ModelSpec("resnet50", "resnet50", "timm")
    assert parse_model_spec("timm:tresnet_m") == ModelSpec("timm:tresnet_m", "tresnet_m", "timm")
    assert parse_model_spec(" tresnet_m:bn ") == ModelSpec("tresnet_m:bn", "tresnet_m", "tresnet", "bn")


@pytest.mark.parametrize("text", ["", "timm:", "tresnet_m:", "a:b:c", ":bn"])
def test_malformed_names(text):
    with pytest.raises(ConfigError, match="bad model"):
        parse_model_spec(text)


def test_model_lists():
    labels = [s.label for s in parse_model_list("paper")]
    assert labels == ["tresnet_m", "timm:tresnet_m", *PAPER_PEERS]
    assert [s.label for s in parse_model_list(["tresnet_m", " resnet50 ", ""])] == ["tresnet_m", "resnet50"]
    with pytest.raises(ConfigError, match="listed twice"):
        parse_model_list("tresnet_m,resnet50,tresnet_m")
    with pytest.raises(ConfigError, match="no model"):
        parse_model_list(" , ")


@requires_timm
def test_unknown_models_fail_clearly():
    with pytest.raises(ModelNotFoundError, match="unknown model 'no_such_net'.*nor a timm model") as info:
        check_spec(parse_model_spec("no_such_net"))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelNotFoundError, match="unknown model 'timm:no_such_net'"):
        check_spec(parse_model_spec("timm:no_such_net"))
    with pytest.raises(ConfigError, match="unknown model form 'fast'"):
        check_spec(parse_model_spec("tresnet_m:fast"))
    with pytest.raises(ConfigError, match="applies to tresnet models"):
        check_spec(parse_model_spec("timm:resnet50:bn"))


def test_timm_models_without_timm_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed: `import timm` fails
    check_spec(parse_model_spec("tresnet_m"))  # ours need nothing else
    for label in ("resnet50", "timm:tresnet_m"):
        with pytest.raises(MissingDependencyError, match=r"pip install 'tresnet\[bench\]'"):
            check_spec(parse_model_spec(label))


def test_published_top1_has_one_source_per_model():
    assert published_top1("tresnet_m").top1 == 80.8  # from the model registry
    assert published_top1("tresnet_l_448").img_size == 448
    assert published_top1("efficientnet_b1") == PEER_RESULTS["efficientnet_b1"]
    assert published_top1("efficientnet_b1").img_size == 240
    assert published_top1("resnet18") is None
    assert set(PAPER_PEERS) <= set(PEER_RESULTS)
    assert all(r.source for r in PEER_RESULTS.values())


@requires_timm
def test_native_sizes():
    assert native_img_size(parse_model_spec("tresnet_m")) == 224
    assert native_img_size(parse_model_spec("tresnet_m_448")) == 448
    assert native_img_size(parse_model_spec("efficientnet_b1")) == 240
    assert native_img_size(parse_model_spec("gernet_l")) == 256


def test_a_checkpoint_of_ours_is_measured_at_its_recorded_size_with_its_head(tmp_path):
    import tresnet
    from tresnet.data.transforms import Preprocessing

    model = tresnet.create_model("genet_light", num_classes=10)
    model.pretrained_cfg.update(Preprocessing.of(model, img_size=32, crop_mode="squash").to_config())
    path = tresnet.save_checkpoint(model, tmp_path / "best.safetensors")
    spec = parse_model_spec(str(path))
    assert (spec.name, spec.impl, spec.checkpoint) == ("genet_light", "tresnet", str(path))
    assert native_img_size(spec) == 32
    target = build_target(spec, BuildOptions(device=torch.device("cpu")))
    assert target.img_size == 32 and target.module.num_classes == 10
    fused = build_target(parse_model_spec(f"{path}:fused"), BuildOptions(device=torch.device("cpu")))
    assert fused.img_size == 32
    with pytest.raises(TResNetError, match="no checkpoint at"):
        parse_model_spec(str(tmp_path / "missing.safetensors"))


def test_our_model_rejects_a_bad_size_and_counts_macs():
    options = BuildOptions(device=torch.device("cpu"), img_size=30)
    with pytest.raises(InputSizeError):
        build_target(parse_model_spec("tresnet_m"), options)
    target = build_target(parse_model_spec("tresnet_m"), BuildOptions(device=torch.device("cpu"), img_size=224))
    assert target.img_size == 224 and target.modes == {"infer", "train"}
    # timm's model card of tresnet_m.miil_in1k gives 5.8 GMACs at 224; we count 5.75 (convs and classifier)
    assert count_gmacs(target.module, 224) == pytest.approx(5.75, rel=0.02)


def test_forms_register_and_build():
    assert get_form("bn").impls == {"tresnet"}
    target = build_target(parse_model_spec("tresnet_m:bn"), BuildOptions(device=torch.device("cpu"), img_size=64))
    assert target.module.norm == "bn"

    def build(spec, options):
        return lambda images: torch.zeros(images.shape[0], 1000)

    register_form(Form(name="zeros_for_test", build=build), replace=True)
    target = build_target(parse_model_spec("tresnet_m:zeros_for_test"),
                          BuildOptions(device=torch.device("cpu"), img_size=64))
    assert target.module is None and target.modes == {"infer"} and target.img_size == 64
    with pytest.raises(ConfigError, match="already registered"):
        register_form(Form(name="zeros_for_test", build=build))
    with pytest.raises(ConfigError, match="modes"):
        register_form(Form(name="bad_modes_for_test", build=build, modes=frozenset({"fly"})))
    assert issubclass(ConfigError, TResNetError)

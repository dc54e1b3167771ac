"""Multi-label checkpoints: the ASL and ML-Decoder releases, our own files with a task and a head, the
ML-Decoder head on both families, and every error a user can hit choosing a head.

The release files are built here from their published layouts, by walking our network, not with the
library's conversion (which is what is tested): Alibaba-MIIL/ASL and Alibaba-MIIL/ML_Decoder save
``{"model": state_dict, "idx_to_class": {index: name}, ...}`` (their ``infer.py`` reads both keys) for the
official TResNet (``convN.0`` conv and ``convN.1`` In-Place ABN, ``convN.0.0`` / ``convN.0.1`` where an
anti-aliasing blur follows, BN scale stored as ``|w| + 1e-5``), with ``head.fc`` (ASL) or the ML-Decoder
head (``head.decoder.*``, named in ``src_files/ml_decoder/ml_decoder.py``).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import tresnet
from helpers import randomize_norms
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.errors import CheckpointError, ConfigError
from tresnet.layers import ConvNormAct, MLDecoderHead, SqueezeExcite

INPLACE_ABN_EPS = 1e-5
SIZE = 64
TINY = dict(layers=(1, 1, 1, 1))  # a TResNet-M with one block per stage: every layout rule, a fraction of the time
# The official ML-Decoder head's tensors (nn.TransformerDecoder with one TransformerDecoderLayerOptimal and
# the attributes MLDecoder hangs on it), as they appear under ``head.`` in the release.
OFFICIAL_DECODER_KEYS = {
    "decoder.embed_standart.weight", "decoder.embed_standart.bias", "decoder.query_embed.weight",
    "decoder.duplicate_pooling", "decoder.duplicate_pooling_bias",
    *(f"decoder.layers.0.{name}" for name in (
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias",
        "multihead_attn.in_proj_weight", "multihead_attn.in_proj_bias", "multihead_attn.out_proj.weight",
        "multihead_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")),
}


def official_tresnet_layout(model: torch.nn.Module) -> dict:
    """A TResNet's weights under the official release's keys, found by walking our network."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, ConvNormAct):
            conv, bn = (f"{name}.0.0", f"{name}.0.1") if module.aa is not None else (f"{name}.0", f"{name}.1")
            state[f"{conv}.weight"] = module.conv.weight.detach().clone()
            assert module.bn.weight.min() > INPLACE_ABN_EPS
            state[f"{bn}.weight"] = module.bn.weight.detach() - INPLACE_ABN_EPS  # In-Place ABN: |w| + eps
            for key in ("bias", "running_mean", "running_var"):
                state[f"{bn}.{key}"] = getattr(module.bn, key).detach().clone()
        elif isinstance(module, SqueezeExcite):
            for key, value in module.state_dict().items():
                state[f"{name}.{key}"] = value.clone()
    for key, value in model.head.state_dict().items():
        state[f"head.{key}"] = value.clone()
    return state


def tiny(name: str | None = None, **kwargs) -> torch.nn.Module:
    """``tresnet.create_model``, with the small TResNet (:data:`TINY`) unless ``name`` is a GENet."""
    extra = {} if name and name.startswith("genet") else TINY
    return tresnet.create_model(name, **extra, **kwargs)


def random_model(name: str = "tresnet_m", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = randomize_norms(tiny(name, **kwargs), seed=1)
    with torch.no_grad():  # weights away from any initial 0 or 1, so every tensor is exercised
        for value in model.head.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn_like(value) * 0.1)
    return model.eval()


def coco_like_names(count: int) -> list[str]:
    return [f"class {i}" for i in range(count)]


def release_file(path, model, *, shuffled_index: bool = True) -> tuple:
    """An ASL / ML-Decoder release file of ``model``: ``{"model", "num_classes", "idx_to_class"}``."""
    names = coco_like_names(model.num_classes)
    order = list(reversed(range(len(names)))) if shuffled_index else list(range(len(names)))
    torch.save({"model": official_tresnet_layout(model), "num_classes": model.num_classes,
                "idx_to_class": {i: names[i] for i in order}}, path)
    return path, names


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def outputs(model, seed: int = 2) -> torch.Tensor:
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def test_our_ml_decoder_head_carries_the_official_key_names():
    model = tiny("tresnet_m", head="ml_decoder", num_classes=80)
    assert {k.removeprefix("head.") for k in model.state_dict() if k.startswith("head.")} == OFFICIAL_DECODER_KEYS


def test_asl_release_loads_as_multilabel_with_its_class_names(tmp_path):
    source = random_model(num_classes=80)
    path, names = release_file(tmp_path / "MS_COCO_TRresNet_M_224_81.8.pth", source)
    model = tiny("tresnet_m", checkpoint_path=path)
    cfg = model.pretrained_cfg
    assert (cfg["task"], cfg["head"], model.num_classes) == ("multilabel", "fc", 80)
    meta = model.checkpoint_info.metadata
    assert model.checkpoint_info.format == "official" and meta["class_names"] == names
    assert torch.allclose(outputs(model), outputs(source), rtol=1e-5, atol=1e-5)
    assert read_checkpoint_metadata(path)["task"] == "multilabel"


def test_ml_decoder_release_loads_with_its_head(tmp_path):
    source = random_model(num_classes=80, head="ml_decoder")
    path, names = release_file(tmp_path / "tresnet_m_COCO_224_84_2.pth", source)
    model = tiny("tresnet_m", checkpoint_path=path)
    cfg = model.pretrained_cfg
    assert (cfg["task"], cfg["head"], model.num_classes) == ("multilabel", "ml_decoder", 80)
    assert isinstance(model.head, MLDecoderHead) and model.head.num_queries == 80
    assert model.checkpoint_info.metadata["class_names"] == names
    assert model.checkpoint_info.metadata["head"] == "ml_decoder"
    assert torch.allclose(outputs(model), outputs(source), rtol=1e-5, atol=1e-5)


def test_ml_decoder_release_with_other_group_count_keeps_it(tmp_path):
    # The OpenImages release decodes 9605 classes with 200 queries (--num-of-groups 200): sizes come from the file.
    source = random_model(num_classes=90, head="ml_decoder", head_options=dict(num_queries=30, embed_dim=64,
                                                                                 ff_dim=96))
    path, _ = release_file(tmp_path / "open_images_like.pth", source)
    model = tiny("tresnet_m", checkpoint_path=path)
    head = model.head
    assert (head.num_queries, head.group_size, head.embed_dim, head.num_classes) == (30, 3, 64, 90)
    assert torch.allclose(outputs(model), outputs(source), rtol=1e-5, atol=1e-5)


def test_our_files_record_task_and_head_and_load_them_back(tmp_path):
    source = random_model(num_classes=5, head="ml_decoder", task="multilabel")
    path = tresnet.save_checkpoint(source, tmp_path / "m.safetensors", class_names=list("abcde"))
    meta = read_checkpoint_metadata(path)
    assert (meta["task"], meta["head"], meta["num_classes"], meta["class_names"]) == (
        "multilabel", "ml_decoder", 5, list("abcde"))
    model = tiny(checkpoint_path=path)
    assert (model.pretrained_cfg["task"], model.pretrained_cfg["head"], model.num_classes) == (
        "multilabel", "ml_decoder", 5)
    assert torch.equal(outputs(model), outputs(source))
    relabelled = tiny(checkpoint_path=path, task="multiclass")
    assert relabelled.pretrained_cfg["task"] == "multiclass"


def test_plain_models_stay_multiclass_fc():
    model = tiny("tresnet_m", num_classes=3)
    assert (model.pretrained_cfg["task"], model.pretrained_cfg["head"]) == ("multiclass", "fc")
    assert model.get_classifier() is model.head.fc
    meta = tresnet.checkpoint.checkpoint_metadata(model)
    assert (meta["task"], meta["head"]) == ("multiclass", "fc")


def test_files_without_task_or_head_read_as_before(tmp_path):
    path = tresnet.save_checkpoint(tiny("tresnet_m", num_classes=2), tmp_path / "m.safetensors",
                                   metadata={"task": "", "head": ""})
    meta = read_checkpoint_metadata(path)
    assert meta["head"] == "fc" and "task" not in meta
    assert tiny(checkpoint_path=path).pretrained_cfg["task"] == "multiclass"


def test_a_head_that_contradicts_the_checkpoint_is_refused_in_one_line(tmp_path):
    decoder_file, _ = release_file(tmp_path / "decoder.pth", random_model(num_classes=8, head="ml_decoder"))
    fc_file, _ = release_file(tmp_path / "asl.pth", random_model(num_classes=8))
    with pytest.raises(CheckpointError) as excinfo:
        tiny("tresnet_m", checkpoint_path=decoder_file, head="fc")
    assert "has a 'ml_decoder' head, not 'fc'" in one_line(excinfo) and "num_classes" in one_line(excinfo)
    with pytest.raises(CheckpointError, match="has a 'fc' head, not 'ml_decoder'"):
        tiny("tresnet_m", checkpoint_path=fc_file, head="ml_decoder")
    model = tiny("tresnet_m", num_classes=8, head="ml_decoder")
    with pytest.raises(CheckpointError) as excinfo:
        tresnet.load_checkpoint(model, fc_file)
    assert "has a classifier for 8 classes, the model an ML-Decoder head" in one_line(excinfo)


@pytest.mark.parametrize("head", ["fc", "ml_decoder"])
def test_unknown_head_or_task_and_fc_options_are_config_errors(head):
    with pytest.raises(ConfigError, match="unknown head 'mlp'"):
        tiny("tresnet_m", head="mlp")
    with pytest.raises(ConfigError, match="unknown task"):
        tiny("tresnet_m", head=head, task="multi")
    with pytest.raises(ConfigError, match="drop_rate=0.2 is the fc head's dropout"):
        tiny("tresnet_m", head="ml_decoder", drop_rate=0.2)
    with pytest.raises(ConfigError, match="needs num_classes >= 1"):
        tiny("tresnet_m", head="ml_decoder", num_classes=0)


def test_an_imagenet_fc_backbone_fine_tunes_with_an_ml_decoder(tmp_path):
    source = random_model(num_classes=1000)
    path = tresnet.save_checkpoint(source, tmp_path / "imagenet.safetensors")
    with pytest.warns(UserWarning, match="has a classifier for 1000 classes.*fresh.*ML-Decoder head for 80"):
        model = tiny(checkpoint_path=path, head="ml_decoder", num_classes=80, task="multilabel")
    assert model.pretrained_cfg["head"] == "ml_decoder" and model.head.num_queries == 80
    body, want = model.body.state_dict(), source.body.state_dict()
    assert all(torch.equal(body[k], want[k]) for k in want)


def test_fine_tuning_an_ml_decoder_to_another_class_count_reinitialises_its_head(tmp_path):
    source = random_model(num_classes=80, head="ml_decoder")
    path = tresnet.save_checkpoint(source, tmp_path / "coco.safetensors")
    with pytest.warns(UserWarning, match="ML-Decoder head for 80 classes.*ML-Decoder head for 10 classes"):
        model = tiny(checkpoint_path=path, num_classes=10)
    assert model.pretrained_cfg["head"] == "ml_decoder" and model.head.num_queries == 10
    assert torch.count_nonzero(model.head.decoder.duplicate_pooling_bias) == 0  # fresh, as initialised
    body, want = model.body.state_dict(), source.body.state_dict()
    assert all(torch.equal(body[k], want[k]) for k in want)


def test_features_only_ignores_the_head(tmp_path):
    source = random_model(num_classes=6, head="ml_decoder")
    path = tresnet.save_checkpoint(source, tmp_path / "m.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tiny(checkpoint_path=path, features_only=True, head="fc")
    assert model.head is None and model.pretrained_cfg["head"] is None
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)[-1], source.forward_features(x))
    assert tresnet.checkpoint.checkpoint_metadata(model)["head"] == ""


@pytest.mark.parametrize("name", ["tresnet_m", "genet_light"])
def test_reset_classifier_and_get_classifier_with_an_ml_decoder(name):
    model = tiny(name, head="ml_decoder", num_classes=20)
    assert model.get_classifier() is model.head
    model.reset_classifier(250)
    assert isinstance(model.head, MLDecoderHead) and (model.head.num_queries, model.head.group_size) == (100, 3)
    assert model.num_classes == 250 and model.pretrained_cfg["num_classes"] == 250
    assert outputs(model).shape == (2, 250)
    with pytest.raises(ConfigError, match="needs num_classes >= 1"):
        model.reset_classifier(0)


def test_genet_with_an_ml_decoder_round_trips(tmp_path):
    source = random_model("genet_light", num_classes=12, head="ml_decoder", task="multilabel")
    assert source.pretrained_cfg["classifier"] == "head"
    path = tresnet.save_checkpoint(source, tmp_path / "g.safetensors")
    model = tresnet.create_model(checkpoint_path=path)
    assert (model.pretrained_cfg["family"], model.pretrained_cfg["head"], model.pretrained_cfg["task"]) == (
        "genet", "ml_decoder", "multilabel")
    assert torch.equal(outputs(model), outputs(source))
    x = torch.rand(2, 3, SIZE, SIZE, requires_grad=True)
    model.train()(x).sum().backward()
    assert x.grad.abs().sum() > 0 and model.head.decoder.embed_standart.weight.grad is not None


def test_ml_decoder_models_train_with_gradients_everywhere_but_the_queries():
    model = tiny("tresnet_m", head="ml_decoder", num_classes=4, norm="bn").train()
    model(torch.rand(2, 3, SIZE, SIZE)).sum().backward()
    names = [n for n, p in model.named_parameters() if p.grad is None]
    assert names == [] and "head.decoder.query_embed.weight" not in dict(model.named_parameters())


def test_ml_decoder_sizes_come_from_the_file_unless_asked_otherwise(tmp_path):
    source = random_model(num_classes=40, head="ml_decoder", head_options=dict(num_queries=8))
    path = tresnet.save_checkpoint(source, tmp_path / "m.safetensors")
    assert tiny(checkpoint_path=path).head.num_queries == 8
    with pytest.raises(CheckpointError) as excinfo:
        tiny(checkpoint_path=path, head_options=dict(num_queries=20))
    assert "an ML-Decoder head of other sizes than the model's" in one_line(excinfo)

"""Checkpoints: parity with timm through every format, round trips, and every error a user can hit."""

from __future__ import annotations

import warnings

import pytest
import torch

import tresnet
from helpers import max_rel_diff, randomize_norms, requires_timm
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.errors import CheckpointError, ConfigError
from tresnet.models.tresnet_formats import to_official

NETWORKS = ["tresnet_m", "tresnet_l", "tresnet_xl", "tresnet_v2_l"]
# timm runs v2 with the v1 slopes (1e-2 stem, 1e-3 blocks); the official v2 code uses 1e-6 everywhere.
TIMM_SLOPES = {"tresnet_v2_l": dict(stem_slope=1e-2, block_slope=1e-3)}
SIZES = (224, 96)


@pytest.fixture(scope="module", params=NETWORKS)
def reference(request, tmp_path_factory):
    """A timm network with random weights and norms, its outputs, and its weights in both file formats."""
    timm = pytest.importorskip("timm")
    name = request.param
    torch.manual_seed(0)
    model = randomize_norms(timm.create_model(name), seed=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = {size: torch.rand(2, 3, size, size) for size in SIZES}
    outputs = {}
    with torch.no_grad():
        model.eval()
        for size in SIZES:
            outputs["eval", size] = model(inputs[size])
        model.train()
        for size in SIZES:
            outputs["train", size] = model(inputs[size])
    folder = tmp_path_factory.mktemp(name)
    files = {"timm": folder / f"{name}_timm.pth", "official": folder / f"{name}.pth"}
    torch.save({"state_dict": state, "epoch": 3}, files["timm"])
    torch.save({"model": to_official(state)}, files["official"])
    return dict(name=name, inputs=inputs, outputs=outputs, files=files, state=state)


@pytest.mark.parametrize("fmt,norm", [("timm", "inplace_abn"), ("official", "inplace_abn"), ("timm", "bn")])
def test_outputs_equal_timm_in_eval_and_train(reference, fmt, norm):
    name = reference["name"]
    model = tresnet.create_model(name, checkpoint_path=reference["files"][fmt], norm=norm,
                                 **TIMM_SLOPES.get(name, {}))
    assert model.checkpoint_info.format == fmt and model.checkpoint_info.path == reference["files"][fmt]
    with torch.no_grad():
        model.eval()
        for size in SIZES:
            assert max_rel_diff(model(reference["inputs"][size]), reference["outputs"]["eval", size]) < 1e-5
        model.train()
        for size in SIZES:
            assert max_rel_diff(model(reference["inputs"][size]), reference["outputs"]["train", size]) < 1e-5


def test_official_keys_follow_the_release_layout(reference):
    official = to_official(reference["state"])
    v2 = reference["name"] == "tresnet_v2_l"
    assert "body.conv1.0.weight" in official and "body.conv1.1.running_var" in official
    aa_conv = "conv2" if v2 else "conv1"
    assert f"body.layer2.0.{aa_conv}.0.0.weight" in official and f"body.layer2.0.{aa_conv}.0.1.weight" in official
    assert "body.layer3.0.conv2.0.0.weight" in official and "body.layer3.1.conv2.0.weight" in official
    assert "body.layer2.0.downsample.1.0.weight" in official and "body.layer2.0.downsample.1.1.bias" in official
    assert ("body.layer1.0.downsample.0.0.weight" in official) == v2
    assert not any(k.endswith("num_batches_tracked") for k in official)
    assert "body.layer1.0.se.fc1.weight" in official and "head.fc.weight" in official


@requires_timm
def test_timm_checkpoint_with_negative_norm_weights_loads_exactly(tmp_path):
    import timm

    ref = randomize_norms(timm.create_model("tresnet_m"), signed=True).eval()
    path = tmp_path / "model.pth"
    torch.save(ref.state_dict(), path)  # a bare state dict
    ours = tresnet.create_model("tresnet_m", checkpoint_path=path).eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-5


def test_round_trip_in_our_format_keeps_weights_and_classes(tmp_path):
    model = randomize_norms(tresnet.create_model("tresnet_m", num_classes=3)).eval()
    path = tresnet.save_checkpoint(model, tmp_path / "sub" / "m.safetensors", class_names=["a", "b", "c"],
                                   metadata={"epochs": 5})
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temp file left behind
    meta = read_checkpoint_metadata(path)
    assert meta["format"] == "tresnet" and meta["class_names"] == ["a", "b", "c"] and meta["num_classes"] == 3
    assert meta["arch"] == "tresnet_m" and meta["model"] == "tresnet_m" and meta["epochs"] == "5"
    loaded = tresnet.create_model("tresnet_m", checkpoint_path=path).eval()  # classes from the file
    assert loaded.num_classes == 3
    fresh = tresnet.create_model("tresnet_m", num_classes=3)
    assert tresnet.load_checkpoint(fresh, path) == "tresnet"
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and torch.equal(fresh.eval()(x), model(x))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_architecture_names_it(tmp_path):
    path = tresnet.save_checkpoint(tresnet.create_model("tresnet_l"), tmp_path / "l.safetensors")
    with pytest.raises(CheckpointError, match="tresnet checkpoint .* holds a tresnet_l, the model is a tresnet_m .*build tresnet_l or tresnet_l_448"):
        tresnet.create_model("tresnet_m", checkpoint_path=path)
    torch.save({"model": to_official(tresnet.create_model("tresnet_v2_l").state_dict())}, tmp_path / "v2.pth")
    with pytest.raises(CheckpointError, match="official checkpoint .* holds a tresnet_v2_l, the model is a tresnet_xl"):
        tresnet.create_model("tresnet_xl", checkpoint_path=tmp_path / "v2.pth")


def test_a_different_number_of_classes_needs_to_be_asked_for(tmp_path):
    path = tresnet.save_checkpoint(tresnet.create_model("tresnet_m", num_classes=10), tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match="backbone only.*freshly initialised head for 4 classes"):
        model = tresnet.create_model("tresnet_m", checkpoint_path=path, num_classes=4)
    assert model.num_classes == 4
    with pytest.raises(CheckpointError, match="classifier for 10 classes, the model has 1000"):
        tresnet.load_checkpoint(tresnet.create_model("tresnet_m"), path)


def test_strict_false_warns_and_loads_what_matches(tmp_path):
    state = tresnet.create_model("tresnet_m").state_dict()
    state.pop("body.layer4.2.conv3.bn.bias")
    torch.save(state, tmp_path / "partial.pth")
    model = tresnet.create_model("tresnet_m")
    with pytest.raises(CheckpointError, match="missing keys: body.layer4.2.conv3.bn.bias"):
        tresnet.load_checkpoint(model, tmp_path / "partial.pth")
    with pytest.warns(UserWarning, match="matching tensors only"):
        assert tresnet.load_checkpoint(model, tmp_path / "partial.pth", strict=False) == "timm"


def test_features_only_model_loads_a_classifier_checkpoint(tmp_path):
    path = tresnet.save_checkpoint(tresnet.create_model("tresnet_m"), tmp_path / "m.safetensors")
    model = tresnet.create_model("tresnet_m", features_only=True, checkpoint_path=path)
    assert model.head is None


def test_ddp_prefixes_are_removed(tmp_path):
    ref = tresnet.create_model("tresnet_m")
    torch.save({"model": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "ddp.pth")
    assert tresnet.load_checkpoint(tresnet.create_model("tresnet_m"), tmp_path / "ddp.pth") == "timm"


@pytest.mark.parametrize("content,match", [
    (None, "no checkpoint at"),
    (b"this is not a checkpoint", "cannot read checkpoint"),
    ("resnet", "not a TResNet or GENet checkpoint"),
    ("list", "holds a list, not a state dict"),
])
def test_unusable_files_give_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    if content == "resnet":
        torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), path)
    elif content == "list":
        torch.save([1, 2], path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        tresnet.create_model("tresnet_m", checkpoint_path=path)


ACCEPTED = r"pass a \.safetensors file, or a PyTorch \.pth/\.pt/\.bin file of a TResNet or GENet"


def _bytes_of(kind, tmp_path):
    import argparse

    if kind == "text":
        return b"notes about the run\n"
    if kind == "random":
        return b"\x9c" + torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                        dtype=torch.uint8).numpy().tobytes()
    if kind == "empty":
        return b""
    torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pth")
    whole = (tmp_path / "ns.pth").read_bytes()
    return whole[: len(whole) // 2] if kind == "truncated" else whole


@pytest.mark.parametrize("kind,message", [
    ("text", r"cannot read checkpoint .*notes\.txt: it is not a checkpoint \(neither a safetensors file nor a PyTorch "
             r"file; it starts with b'notes ab'\); " + ACCEPTED),
    ("random", r"cannot read checkpoint .*notes\.txt: it is not a checkpoint \(neither a safetensors file nor a "
               r"PyTorch file; .*\); " + ACCEPTED),
    ("empty", r"cannot read checkpoint .*notes\.txt: the file is empty; " + ACCEPTED),
    ("truncated", r"cannot read checkpoint .*notes\.txt: PytorchStreamReader failed reading zip archive: failed "
                  r"finding central directory; the file is damaged or incomplete: copy or save it again"),
    ("namespace", r"cannot read checkpoint .*notes\.txt safely: it holds objects other than weights "
                  r"\(argparse\.Namespace\); if you trust this file, load it with weights_only=False"),
])
def test_a_file_that_is_no_checkpoint_says_what_it_is_and_what_is_accepted(tmp_path, kind, message):
    path = tmp_path / "notes.txt"
    path.write_bytes(_bytes_of(kind, tmp_path))
    for read in (lambda: tresnet.create_model("tresnet_m", checkpoint_path=path),
                 lambda: read_checkpoint_metadata(path)):
        with pytest.raises(CheckpointError, match=message) as info:
            read()
        assert "\n" not in str(info.value) and "weights_only` argument" not in str(info.value)


def test_pretrained_looks_in_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TRESNET_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(CheckpointError, match=r"no pretrained weights for tresnet_m\.miil_in1k .*never downloads.*tresnet_m\.pth"):
        tresnet.create_model("tresnet_m", pretrained=True)
    ref = tresnet.create_model("tresnet_m")
    torch.save({"model": to_official(ref.state_dict())}, tmp_path / "tresnet_m.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tresnet.create_model("tresnet_m", pretrained=True)
    assert model.checkpoint_info.format == "official"


def test_saving_needs_a_name_per_class(tmp_path):
    with pytest.raises(CheckpointError, match="2 class names for a model with 1000 classes"):
        tresnet.save_checkpoint(tresnet.create_model("tresnet_m"), tmp_path / "m.safetensors", class_names=["a", "b"])


def test_unwritable_destination_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write"):
        tresnet.save_checkpoint(tresnet.create_model("tresnet_m"), blocker / "m.safetensors")


def test_metadata_is_read_from_the_header_without_the_tensors(tmp_path, monkeypatch):
    model = tresnet.create_model("tresnet_m_448", num_classes=2)
    path = tresnet.save_checkpoint(model, tmp_path / "m.safetensors", class_names=["x", "y"])
    import safetensors

    def refuse(*args, **kwargs):
        raise AssertionError("the tensors were opened")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    meta = read_checkpoint_metadata(path)
    assert meta["model"] == "tresnet_m_448" and meta["arch"] == "tresnet_m" and meta["num_classes"] == 2


def test_a_checkpoint_is_read_once_by_create_model(tmp_path, monkeypatch):
    import tresnet.checkpoint as checkpoint_module

    path = tresnet.save_checkpoint(tresnet.create_model("tresnet_m", num_classes=2), tmp_path / "m.safetensors")
    calls = []
    real = checkpoint_module._read_file
    monkeypatch.setattr(checkpoint_module, "_read_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    model = tresnet.create_model(checkpoint_path=path)
    assert len(calls) == 1 and model.num_classes == 2


def test_the_model_name_comes_from_our_checkpoints(tmp_path):
    path = tresnet.save_checkpoint(tresnet.create_model("tresnet_l_448", num_classes=2), tmp_path / "m.safetensors")
    model = tresnet.create_model(checkpoint_path=path)
    assert model.pretrained_cfg["model"] == "tresnet_l_448" and model.checkpoint_info.path == path


def test_a_file_that_does_not_name_its_model_must_be_told(tmp_path):
    official = tmp_path / "tresnet_m.pth"
    torch.save({"model": to_official(tresnet.create_model("tresnet_m").state_dict())}, official)
    with pytest.raises(ConfigError, match="tresnet_m and tresnet_m_448 both build: name the model"):
        tresnet.create_model(checkpoint_path=official)
    with pytest.raises(ConfigError, match="needs a model name"):
        tresnet.create_model()


def test_files_of_the_first_release_name_their_network_arch(tmp_path):
    from safetensors.torch import save_file

    model = tresnet.create_model("tresnet_m", num_classes=2)
    old = {"format": "tresnet", "architecture": "tresnet_m", "model": "tresnet_m", "num_classes": "2"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "old.safetensors", metadata=old)
    meta = read_checkpoint_metadata(tmp_path / "old.safetensors")
    assert meta["arch"] == "tresnet_m" and "architecture" not in meta


def test_pretrained_cfg_names_the_model_and_its_arch():
    cfg = tresnet.get_pretrained_cfg("tresnet_m_448")
    assert cfg["model"] == "tresnet_m_448" and cfg["arch"] == "tresnet_m" and "architecture" not in cfg


def test_our_checkpoints_carry_their_preprocessing_and_threshold(tmp_path):
    from tresnet.data.transforms import Preprocessing

    model = tresnet.create_model("genet_light", num_classes=3, task="multilabel")
    model.pretrained_cfg.update(Preprocessing.of(model, img_size=64, crop_mode="squash").to_config(), threshold=0.7)
    path = tresnet.save_checkpoint(model, tmp_path / "m.safetensors", class_names=["a", "b", "c"])
    loaded = tresnet.create_model(checkpoint_path=path)
    cfg = loaded.pretrained_cfg
    assert (cfg["input_size"], cfg["crop_mode"], cfg["crop_pct"], cfg["threshold"]) == ((3, 64, 64), "squash", 1.0, 0.7)
    assert cfg["mean"] == tuple(model.pretrained_cfg["mean"]) and cfg["preprocessing_source"] == "checkpoint"
    assert Preprocessing.of(loaded).describe().startswith("squash to 64x64 bilinear, normalised")
    # the registered model's configuration is left as it was
    assert tresnet.get_pretrained_cfg("genet_light")["input_size"] == (3, 192, 192)


def test_files_that_record_only_their_training_size_are_evaluated_at_it(tmp_path):
    model = tresnet.create_model("genet_light", num_classes=3)
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k != "input_size"}
    path = tresnet.save_checkpoint(model, tmp_path / "m.safetensors", metadata={"img_size": 48})
    assert tresnet.create_model(checkpoint_path=path).pretrained_cfg["input_size"] == (3, 48, 48)


def test_an_edited_preprocessing_record_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    model = tresnet.create_model("genet_light", num_classes=3)
    path = tresnet.save_checkpoint(model, tmp_path / "m.safetensors")
    from tresnet.checkpoint import checkpoint_metadata

    meta = checkpoint_metadata(model, extra={"preprocessing": {"input_size": [3, "big", 3]}})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="records an input size of"):
        tresnet.create_model(checkpoint_path=path)

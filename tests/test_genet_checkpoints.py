"""GENet checkpoints: the official release's layout, timm's files and ours load with timm's outputs; every error.

The official-layout files are built here from the release's key layout (idstcv/GPU-Efficient-Networks,
``GENet/__init__.py``: ``module_list.N`` = the N-th block of the network string, ``conv_list.J`` /
``shortcut_list.J`` = block J of a stage, ``fc_linear``), by walking our network; the library's own
conversion (``tresnet.models.genet_formats``) is what is tested, so it is not used to build them.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import tresnet
from helpers import max_rel_diff, randomize_norms
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.errors import CheckpointError, ConfigError
from tresnet.models.genet import XXBlock

TIMM_NAMES = {"genet_light": "gernet_s", "genet_normal": "gernet_m", "genet_large": "gernet_l"}
# Official eval size, then timm's (the same 256 for large).
SIZES = {"genet_light": (192, 224), "genet_normal": (192, 224), "genet_large": (256,)}
# State dict entries incl. num_batches_tracked: the same count in every layout.
KEY_COUNTS = {"genet_light": 272, "genet_normal": 272, "genet_large": 344}
# The release's module_list: 0 stem conv, 1 its BN, 2 ReLU, 3-7 the five stages, 8 final 1x1 conv, 9 its BN.
FIRST_STAGE_INDEX, FINAL_CONV_INDEX = 3, 8


def _put(state: dict, prefix: str, module: nn.Module) -> None:
    for key, value in module.state_dict().items():
        state[f"{prefix}.{key}"] = value.clone()


def official_layout(model: nn.Module) -> dict:
    """``model``'s weights under the official release's keys, found by walking our network's structure."""
    state: dict = {}
    _put(state, "module_list.0.netblock", model.stem.conv)
    _put(state, "module_list.1.netblock", model.stem.bn)
    for s, stage in enumerate(model.stages):
        stage_key = f"module_list.{FIRST_STAGE_INDEX + s}"
        for j, block in enumerate(stage):
            parts = ([block.conv1_kxk, block.conv2_kxk] if isinstance(block, XXBlock)
                     else [block.conv1_1x1, block.conv2_kxk, block.conv3_1x1])
            for i, part in enumerate(parts):  # conv_list.j is (conv, BN, ReLU) per part, the last ReLU left out
                _put(state, f"{stage_key}.conv_list.{j}.{3 * i}", part.conv)
                _put(state, f"{stage_key}.conv_list.{j}.{3 * i + 1}", part.bn)
            if not isinstance(block.shortcut, nn.Identity):
                _put(state, f"{stage_key}.shortcut_list.{j}.0", block.shortcut.conv)
                _put(state, f"{stage_key}.shortcut_list.{j}.1", block.shortcut.bn)
    _put(state, f"module_list.{FINAL_CONV_INDEX}.netblock", model.final_conv.conv)
    _put(state, f"module_list.{FINAL_CONV_INDEX + 1}.netblock", model.final_conv.bn)
    _put(state, "fc_linear", model.head.fc)
    return state


def official_file(path, name: str, state: dict | None = None, prefix: str = ""):
    """An official-layout ``{"state_dict": ...}`` file of ``name`` (random weights unless ``state``, ours)."""
    model = tresnet.create_model(name)
    if state is not None:
        model.load_state_dict(state)
    torch.save({"state_dict": {prefix + k: v for k, v in official_layout(model).items()}}, path)
    return path


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module", params=list(TIMM_NAMES))
def reference(request, tmp_path_factory):
    """timm's network with random weights and norms, its eval outputs, and its weights in each layout."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    name = request.param
    torch.manual_seed(0)
    model = randomize_norms(timm.create_model(TIMM_NAMES[name]), seed=1).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = {size: torch.rand(2, 3, size, size) for size in SIZES[name]}
    with torch.no_grad():
        outputs = {size: model(x) for size, x in inputs.items()}
    folder = tmp_path_factory.mktemp(name)
    files = {"official": official_file(folder / "official.pth", name, state),
             "timm": folder / "timm.pth", "timm_safetensors": folder / "model.safetensors"}
    torch.save({"state_dict": state, "epoch": 3}, files["timm"])
    save_file({k: v.contiguous() for k, v in state.items()}, files["timm_safetensors"])
    return dict(name=name, inputs=inputs, outputs=outputs, files=files, state=state)


def test_official_layout_has_the_published_key_count(reference):
    official = torch.load(reference["files"]["official"])["state_dict"]
    assert len(official) == len(reference["state"]) == KEY_COUNTS[reference["name"]]
    assert "module_list.0.netblock.weight" in official and "fc_linear.bias" in official
    assert "module_list.9.netblock.num_batches_tracked" in official
    assert "module_list.3.shortcut_list.0.0.weight" in official and "module_list.6.conv_list.0.7.running_var" in official


def test_official_file_gives_timm_outputs_at_the_official_and_timm_sizes(reference):
    name, path = reference["name"], reference["files"]["official"]
    model = tresnet.create_model(name, checkpoint_path=path).eval()
    info = model.checkpoint_info
    assert info.format == "official" and info.path == path
    assert info.metadata["family"] == "genet" and info.metadata["arch"] == name
    with torch.no_grad():
        for size, x in reference["inputs"].items():
            assert max_rel_diff(model(x), reference["outputs"][size]) <= 1e-5, size  # exact in practice


@pytest.mark.parametrize("fmt", ["timm", "timm_safetensors"])
def test_timm_files_load_as_they_are(reference, fmt):
    name, path = reference["name"], reference["files"][fmt]
    model = tresnet.create_model(name, checkpoint_path=path)
    info = model.checkpoint_info
    assert info.format == "timm" and info.metadata["family"] == "genet" and info.metadata["arch"] == name
    for key, value in reference["state"].items():
        assert torch.equal(model.state_dict()[key], value), key


def test_official_file_names_its_model_and_its_variant_from_the_shapes(reference):
    model = tresnet.create_model(checkpoint_path=reference["files"]["official"])
    assert model.pretrained_cfg["model"] == reference["name"] and model.checkpoint_info.format == "official"
    for key, value in reference["state"].items():
        assert torch.equal(model.state_dict()[key], value), key


def test_ddp_prefixed_official_file_loads_the_same(tmp_path):
    plain = tresnet.create_model("genet_light")
    randomize_norms(plain)
    path = official_file(tmp_path / "GENet_small.pth", "genet_light", plain.state_dict(), prefix="module.")
    loaded = tresnet.create_model("genet_light", checkpoint_path=path)
    assert loaded.checkpoint_info.format == "official"
    for (key, a), b in zip(plain.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_metadata_of_an_official_safetensors_file_comes_from_its_header(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    model = tresnet.create_model("genet_normal")
    path = tmp_path / "GENet_normal.safetensors"
    save_file({k: v.contiguous() for k, v in official_layout(model).items()}, path)
    import safetensors

    def refuse(*args, **kwargs):
        raise AssertionError("the tensors were opened")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    meta = read_checkpoint_metadata(path)
    assert meta["format"] == "official" and meta["family"] == "genet"
    assert meta["arch"] == "genet_normal" and meta["num_classes"] == 1000


def test_round_trip_in_our_format(tmp_path):
    model = randomize_norms(tresnet.create_model("genet_light", num_classes=3)).eval()
    path = tresnet.save_checkpoint(model, tmp_path / "g.safetensors", class_names=["a", "b", "c"])
    meta = read_checkpoint_metadata(path)
    assert meta["format"] == "tresnet" and meta["family"] == "genet" and meta["model"] == "genet_light"
    assert meta["arch"] == "genet_light" and meta["norm"] == "bn" and meta["class_names"] == ["a", "b", "c"]
    loaded = tresnet.create_model(checkpoint_path=path).eval()  # model and classes from the file
    assert loaded.pretrained_cfg["model"] == "genet_light" and loaded.num_classes == 3
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_another_genet_variant_is_refused_naming_both(tmp_path):
    path = official_file(tmp_path / "GENet_normal.pth", "genet_normal")
    with pytest.raises(CheckpointError) as excinfo:
        tresnet.create_model("genet_light", checkpoint_path=path)
    message = one_line(excinfo)
    assert "holds a genet_normal, the model is a genet_light" in message and "build genet_normal" in message


def test_a_checkpoint_of_the_other_family_is_refused_naming_both(tmp_path):
    tresnet_file = tresnet.save_checkpoint(tresnet.create_model("tresnet_m"), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError) as excinfo:
        tresnet.create_model("genet_light", checkpoint_path=tresnet_file)
    message = one_line(excinfo)
    assert "holds a TResNet (tresnet_m), the model is a GENet (genet_light)" in message
    genet_file = official_file(tmp_path / "GENet_small.pth", "genet_light")
    with pytest.raises(CheckpointError) as excinfo:
        tresnet.create_model("tresnet_m", checkpoint_path=genet_file)
    message = one_line(excinfo)
    assert "official checkpoint" in message
    assert "holds a GENet (genet_light), the model is a TResNet (tresnet_m)" in message


def test_truncated_and_unknown_files_are_one_line_errors(tmp_path):
    whole = official_file(tmp_path / "whole.pth", "genet_light").read_bytes()
    truncated = tmp_path / "GENet_small.pth"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as excinfo:
        tresnet.create_model("genet_light", checkpoint_path=truncated)
    one_line(excinfo)
    unknown = tmp_path / "resnet.pth"
    torch.save(nn.Conv2d(3, 4, 3).state_dict(), unknown)
    with pytest.raises(CheckpointError, match="not a TResNet or GENet checkpoint") as excinfo:
        tresnet.create_model("genet_light", checkpoint_path=unknown)
    assert "module_list.0.netblock.weight" in one_line(excinfo)  # the layouts it knows, GENet's official among them
    with pytest.raises(ConfigError, match="needs a model name"):
        tresnet.create_model()


def test_pretrained_finds_the_official_release_file_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRESNET_HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as excinfo:
        tresnet.create_model("genet_light", pretrained=True)
    message = one_line(excinfo)
    assert "no pretrained weights for genet_light" in message and "GENet_small.pth" in message
    assert str(tmp_path) in message
    official_file(tmp_path / "GENet_small.pth", "genet_light")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tresnet.create_model("genet_light", pretrained=True)
    assert model.checkpoint_info.format == "official" and model.checkpoint_info.path == tmp_path / "GENet_small.pth"

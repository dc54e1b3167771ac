"""``pretrained=True`` finds published weights where they already are, offline: our cache, the Hugging Face hub
cache (timm's layout, written here as the hub writes it), the torch.hub checkpoints folder."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

import tresnet
from helpers import randomize_norms, requires_timm
from tresnet.cli.main import main
from tresnet.errors import CheckpointError, ConfigError
from tresnet.weights import find_pretrained, published_weights, resolve_weights, split_tag

SIZE = 64


def hub_snapshot(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` as the hub leaves a download of ``repo`` in ``cache``: the contents in ``blobs/`` under their
    sha256, ``snapshots/REVISION/NAME`` links to them, and ``refs/main`` naming the revision. Returns the
    snapshot folder."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    revision = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = folder / "snapshots" / revision
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        blob = hashlib.sha256(content).hexdigest()
        (folder / "blobs" / blob).write_bytes(content)
        os.symlink(Path("..", "..", "blobs", blob), snapshot / name)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Empty caches in ``tmp_path`` for the three places, and no network: a download or a connection fails."""
    folders = {"own": tmp_path / "tresnet", "hf": tmp_path / "hf" / "hub", "torch": tmp_path / "torch"}
    monkeypatch.setenv("TRESNET_HOME", str(folders["own"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(folders["hf"]))
    monkeypatch.setenv("TORCH_HOME", str(folders["torch"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    folders["torch_checkpoints"] = folders["torch"] / "hub" / "checkpoints"
    return folders


def timm_weights(timm_name: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A timm network with random weights and norms: its state, an input and its eval logits."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = randomize_norms(timm.create_model(timm_name), seed=1).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logits = model(x)
    return {k: v.contiguous() for k, v in model.state_dict().items()}, x, logits


def safetensors_bytes(state: dict) -> bytes:
    from safetensors.torch import save

    return save(state)


def config_bytes(timm_name: str, tag: str) -> bytes:
    """A config.json as timm writes one beside its weights."""
    return json.dumps({"architecture": timm_name, "num_classes": 1000, "pretrained_cfg": {"tag": tag}}).encode()


@requires_timm
@pytest.mark.parametrize("model,timm_name,tag", [("tresnet_m", "tresnet_m", "miil_in1k"),
                                                 ("genet_light", "gernet_s", "idstcv_in1k")])
def test_pretrained_finds_timms_download_in_the_hub_cache(places, model, timm_name, tag):
    state, x, expected = timm_weights(timm_name)
    snapshot = hub_snapshot(places["hf"], f"timm/{timm_name}.{tag}",
                            {"model.safetensors": safetensors_bytes(state), "config.json": config_bytes(timm_name, tag)})
    loaded = tresnet.create_model(model, pretrained=True).eval()
    assert loaded.checkpoint_info.format == "timm"
    assert loaded.checkpoint_info.path == snapshot / "model.safetensors"
    assert loaded.pretrained_cfg["tag"] == tag and loaded.pretrained_cfg["hf_hub_id"] == f"timm/{timm_name}.{tag}"
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


@requires_timm
def test_a_tag_picks_the_weights_in_the_name_or_as_an_argument(places):
    state, x, expected = timm_weights("tresnet_m")
    hub_snapshot(places["hf"], "timm/tresnet_m.miil_in21k_ft_in1k", {"model.safetensors": safetensors_bytes(state)})
    with pytest.raises(CheckpointError, match=r"no pretrained weights for tresnet_m\.miil_in1k .*This machine has "
                       r"other weights of tresnet_m: tag miil_in21k_ft_in1k"):
        tresnet.create_model("tresnet_m", pretrained=True)  # the default tag is the paper's ImageNet-1k weights
    loaded = tresnet.create_model("tresnet_m.miil_in21k_ft_in1k", pretrained=True).eval()
    assert loaded.pretrained_cfg["model"] == "tresnet_m" and loaded.pretrained_cfg["top1"] == 83.1
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert find_pretrained("tresnet_m", "in21k_ft_in1k").weights.tag == "miil_in21k_ft_in1k"


def test_tags_resolve_to_one_published_set_or_say_which_exist():
    assert split_tag("tresnet_m.miil_in1k") == ("tresnet_m", "miil_in1k") and split_tag("genet_light")[1] is None
    assert resolve_weights("tresnet_v2_l").tag == "miil_in21k_ft_in1k"
    assert resolve_weights("tresnet_m_448").hub_repo == "timm/tresnet_m.miil_in1k_448"
    assert resolve_weights("genet_normal").hub_repo == "timm/gernet_m.idstcv_in1k"
    assert resolve_weights("tresnet_m", "in21k").num_classes == 11221
    with pytest.raises(ConfigError, match="more than one set of weights tagged 'in1k'.*miil_in1k, miil_in21k_ft_in1k"):
        resolve_weights("tresnet_m", "in1k")
    with pytest.raises(ConfigError, match="no set of weights tagged 'in22k'"):
        resolve_weights("tresnet_l.in22k")
    with pytest.raises(ConfigError, match="give one of them"):
        resolve_weights("tresnet_m.miil_in1k", "miil_in21k")
    every = {w.hub_repo for model in tresnet.list_models() for w in published_weights(model)}
    assert {"timm/tresnet_xl.miil_in1k_448", "timm/tresnet_v2_l.miil_in21k", "timm/gernet_l.idstcv_in1k"} <= every
    assert len(every) == 13


@requires_timm
def test_the_torch_hub_folder_holds_the_release_files(places):
    state, x, expected = timm_weights("gernet_s")
    places["torch_checkpoints"].mkdir(parents=True)
    torch.save(state, places["torch_checkpoints"] / "gernet_s-756b4751.pth")  # timm's older release, as torch.hub names it
    loaded = tresnet.create_model("genet_light", pretrained=True).eval()
    assert loaded.checkpoint_info.path == places["torch_checkpoints"] / "gernet_s-756b4751.pth"
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_our_cache_comes_first(places):
    ours = tresnet.create_model("genet_light", num_classes=3)
    tresnet.save_checkpoint(ours, places["own"] / "genet_light.safetensors")
    hub_snapshot(places["hf"], "timm/gernet_s.idstcv_in1k", {"model.safetensors": b"not read"})
    found = find_pretrained("genet_light")
    assert found.place == "tresnet cache" and found.path == places["own"] / "genet_light.safetensors"
    assert tresnet.create_model("genet_light", pretrained=True).num_classes == 3


def test_nothing_found_names_every_place_and_file_in_one_line(places):
    with pytest.raises(CheckpointError) as caught:
        tresnet.create_model("tresnet_l_448", pretrained=True)
    message = str(caught.value)
    assert "\n" not in message and "never downloads" in message
    assert f"{places['own']} (TRESNET_HOME): one of tresnet_l_448.safetensors" in message
    assert (f"{places['hf']} (HF_HUB_CACHE or HF_HOME): models--timm--tresnet_l.miil_in1k_448/snapshots/REVISION/"
            f"model.safetensors") in message
    assert f"{places['torch_checkpoints']} (TORCH_HOME): one of tresnet_l_448.pth, tresnet_l_448-*.pth" in message


def test_without_huggingface_hub_the_message_says_how_to_look_there(places, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    hub_snapshot(places["hf"], "timm/gernet_s.idstcv_in1k", {"model.safetensors": b"x"})
    with pytest.raises(CheckpointError, match=r"looked only with pip install 'tresnet\[hub\]'"):
        find_pretrained("genet_light")


def test_a_tag_needs_pretrained_and_no_file(tmp_path):
    with pytest.raises(ConfigError, match="pass pretrained=True"):
        tresnet.create_model("tresnet_m.miil_in1k")
    with pytest.raises(ConfigError, match="a checkpoint file is given too"):
        tresnet.create_model("tresnet_m.miil_in1k", checkpoint_path=tmp_path / "x.pth")
    with pytest.raises(ConfigError, match="needs a model name"):
        tresnet.create_detector(pretrained=True)


@requires_timm
def test_info_lists_the_weights_on_this_machine_and_validate_takes_a_tag(places, tmp_path, capsys):
    state, _, _ = timm_weights("gernet_s")
    snapshot = hub_snapshot(places["hf"], "timm/gernet_s.idstcv_in1k", {"model.safetensors": safetensors_bytes(state)})
    assert main(["info", "--weights", "--models", "genet_*,tresnet_m"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("genet_light.idstcv_in1k"))
    assert "Hugging Face cache" in line and str(snapshot / "model.safetensors") in line
    assert "tresnet_m.miil_in1k (default)" in out and "1 of 6 on this machine" in out
    folder = tmp_path / "data"
    for index in range(2):  # classes named by their indices
        (folder / str(index)).mkdir(parents=True)
        Image.new("RGB", (40, 40), (index * 200, 30, 60)).save(folder / str(index) / "1.png")
    code = main(["validate", "--data", str(folder), "--model", "genet_light", "--pretrained", "--pretrained-tag",
                 "idstcv_in1k", "--img-size", "32", "--workers", "0"])
    captured = capsys.readouterr()
    assert "genet_light.idstcv_in1k weights" in captured.out, captured.err
    assert code == 0
    out = tmp_path / "genet_light.pt2"
    assert main(["export", "--model", "genet_light", "--pretrained", "--format", "pt2", "--output", str(out),
                 "--img-size", "32"]) == 0
    assert out.is_file() and "genet_light.idstcv_in1k" not in capsys.readouterr().err
    assert main(["validate", "--data", str(folder), "--model", "genet_light", "--pretrained-tag", "x"]) == 1
    assert "use it with --model NAME --pretrained" in capsys.readouterr().err

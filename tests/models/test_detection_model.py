"""Detectors on our backbones: the same outputs as torchvision's own FCOS built by hand around the same backbone,
frozen norms that stay frozen, trainable layers counted as torchvision counts them, and checkpoints that come back."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import tresnet
from helpers import randomize_norms
from tresnet.checkpoint import save_checkpoint
from tresnet.errors import CheckpointError, ConfigError
from tresnet.layers.frozen_norm import FrozenNormAct, freeze_norms
from tresnet.models.detection import DetectorOptions, parameter_parts

IMAGES = [torch.rand(3, 96, 128), torch.rand(3, 128, 96)]


def _targets():
    return [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 8.0, 90.0, 40.0]]), "labels": torch.tensor([1, 3])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


def test_fcos_on_tresnet_equals_torchvisions_fcos_built_by_hand():
    detector = tresnet.create_detector("tresnet_m", num_classes=5, min_size=128, max_size=160, fpn_channels=64,
                                       train_norms=True)
    randomize_norms(detector.backbone.body, seed=1)
    with torch.no_grad():  # a head that answers: its classification bias lets boxes past the score threshold
        detector.head.classification_head.cls_logits.bias.fill_(2.0)
    body = tresnet.create_model("tresnet_m", features_only=True, out_indices=(2, 3, 4)).body
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 1024, 2048], 64,
                               extra_blocks=LastLevelP6P7(64, 64))
    reference = FCOS(backbone, 5, min_size=128, max_size=160, image_mean=[0.0] * 3, image_std=[1.0] * 3)
    state = {key.replace("backbone.body.body.", "backbone.body."): value for key, value in detector.state_dict().items()}
    reference.load_state_dict(state)
    detector.eval(), reference.eval()
    with torch.no_grad():
        ours, theirs = detector(IMAGES), reference(IMAGES)
    assert len(ours[0]["boxes"]) > 0
    for a, b in zip(ours, theirs, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])
    detector.train(), reference.train()
    torch.manual_seed(0)
    losses = detector(IMAGES, _targets())
    torch.manual_seed(0)
    expected = reference(IMAGES, _targets())
    assert {k: v.item() for k, v in losses.items()} == {k: v.item() for k, v in expected.items()}


def test_one_small_image_goes_through():
    detector = tresnet.create_detector("genet_light", num_classes=3, min_size=64, fpn_channels=64).eval()
    with torch.no_grad():  # P7 is 1x1: FCOS's GroupNorm sees two values per group
        assert detector([torch.rand(3, 64, 64)])[0]["boxes"].shape[1] == 4


def test_genet_detector_normalises_once_with_imagenet_statistics():
    detector = tresnet.create_detector("genet_light", head="retinanet", num_classes=3, min_size=64)
    assert detector.transform.image_mean == [0.485, 0.456, 0.406]
    assert detector.transform.image_std == [0.229, 0.224, 0.225]
    assert tresnet.create_detector("tresnet_m", num_classes=3, min_size=64).transform.image_std == [1.0, 1.0, 1.0]
    assert detector.pretrained_cfg["task"] == "detection" and detector.pretrained_cfg["head"] == "retinanet"


def test_frozen_norm_computes_what_the_norm_computed_in_eval_mode():
    model = randomize_norms(tresnet.create_model("tresnet_m", num_classes=4), seed=2).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        replaced = freeze_norms(model)
        assert replaced > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert torch.equal(model(x), expected)


def test_frozen_norms_stay_frozen_through_training_steps(tmp_path):
    path = tmp_path / "init.safetensors"
    save_checkpoint(randomize_norms(tresnet.create_model("genet_light", num_classes=10), seed=3), path)
    detector = tresnet.create_detector("genet_light", num_classes=4, checkpoint_path=path, min_size=64)
    norms = [m for m in detector.backbone.body.modules() if isinstance(m, FrozenNormAct)]
    assert norms and not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.backbone.body.modules())
    before = {k: v.clone() for k, v in detector.backbone.body.state_dict().items()}
    trainable = [p for p in detector.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(trainable, lr=0.1)
    detector.train()
    for _ in range(2):
        optimiser.zero_grad()
        sum(detector([torch.rand(3, 64, 64)], _targets()[:1]).values()).backward()
        optimiser.step()
    after = detector.backbone.body.state_dict()
    for module_name, module in detector.backbone.body.named_modules():
        if isinstance(module, FrozenNormAct):
            for buffer in ("weight", "bias", "running_mean", "running_var"):
                key = f"{module_name}.{buffer}"
                assert torch.equal(before[key], after[key]), key
    parts = parameter_parts(tresnet.create_model("genet_light", features_only=True, out_indices=(2, 3, 4)))
    early = {name for name, part in parts.items() if part < 2}
    frozen = {name for name, p in detector.backbone.body.named_parameters() if not p.requires_grad}
    assert early and early & set(dict(detector.backbone.body.named_parameters())) <= frozen
    changed = [k for k in early if k in after and not torch.equal(before[k], after[k])]
    assert not changed  # the first two parts do not train (torchvision's default of 3 trainable layers)


@pytest.mark.parametrize("name", ["tresnet_m", "genet_normal"])
def test_trainable_layers_count_the_five_parts_from_the_deepest(name):
    for trainable in (0, 3, 5):
        detector = tresnet.create_detector(name, num_classes=2, min_size=64, trainable_layers=trainable,
                                           train_norms=True)
        body = detector.backbone.body
        parts = parameter_parts(body)
        assert sorted(set(parts.values())) == [0, 1, 2, 3, 4]
        for param_name, param in body.named_parameters():
            assert param.requires_grad == (parts[param_name] >= 5 - trainable), (trainable, param_name)


def test_a_saved_detector_comes_back_with_its_configuration(tmp_path):
    detector = tresnet.create_detector("genet_light", num_classes=3, min_size=96, fpn_channels=64, anchor_size=4,
                                       train_norms=True).eval()
    randomize_norms(detector.backbone.body, seed=4)
    path = tmp_path / "det.safetensors"
    save_checkpoint(detector, path, class_names=["a", "b", "c"])
    loaded = tresnet.load_network(checkpoint_path=path).eval()
    assert loaded.pretrained_cfg["network"] == detector.pretrained_cfg["network"]
    assert loaded.anchor_generator.sizes == ((4,), (8,), (16,), (32,), (64,))
    with torch.no_grad():
        for a, b in zip(loaded(IMAGES), detector(IMAGES), strict=True):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    with pytest.raises(ConfigError, match="create_detector"):
        tresnet.create_model(checkpoint_path=path)
    with pytest.raises(ConfigError, match="part of the saved detector"):
        tresnet.create_detector(checkpoint_path=path, fpn_channels=64)
    with pytest.raises(ConfigError, match="leave the model, head and classes out"):
        tresnet.create_detector(checkpoint_path=path, num_classes=7)
    assert tresnet.create_detector(checkpoint_path=path, score_threshold=0.5).score_thresh == 0.5


def test_bad_detector_options_fail_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not fit task .detection.: use one of fcos, retinanet"):
        tresnet.create_detector("tresnet_m", head="yolo")
    with pytest.raises(ConfigError, match="unknown detector option"):
        tresnet.create_detector("tresnet_m", fpn_width=3)
    with pytest.raises(ConfigError, match="trainable_layers"):
        DetectorOptions(trainable_layers=6).check()
    with pytest.raises(ConfigError, match="score_threshold"):
        DetectorOptions(score_threshold=1.5).check()
    with pytest.raises(ConfigError, match="groups of at least two"):  # one channel per group fails on a 1x1 P7
        tresnet.create_detector("genet_light", fpn_channels=32)
    bad = tmp_path / "other.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        tresnet.create_detector("tresnet_m", checkpoint_path=bad)

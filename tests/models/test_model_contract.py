"""The contract every model family keeps, written once and run for each registered family.

Every registered model's configuration is checked (cheap: nothing is built); the network surface (forward,
forward_features / forward_head, reset_classifier, features_only, gradient checkpointing, fuse) is checked on
each family's first registered model (the families list their smallest first) at a small input size.
"""

from __future__ import annotations

import pytest
import torch

import tresnet
from helpers import max_rel_diff, randomize_norms
from tresnet.deploy import fuse
from tresnet.models import FAMILIES, get_pretrained_cfg

SIZE = 64  # the smallest side every family takes at every stage with room to spare
SMALLEST = {name: next(iter(family.models)) for name, family in FAMILIES.items()}
# Each family's norms, but the synchronised one (it needs a process group to differ from its plain form).
NORM_CASES = [(SMALLEST[name], norm) for name, family in FAMILIES.items() for norm in family.norms
              if not norm.endswith("_sync")]


@pytest.fixture(scope="module", params=sorted(SMALLEST.values()))
def model(request) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_norms(tresnet.create_model(request.param, num_classes=7)).eval()


@pytest.mark.parametrize("name", tresnet.list_models())
def test_every_registered_model_names_its_family_arch_and_preprocessing(name):
    cfg = get_pretrained_cfg(name)
    family = FAMILIES[cfg["family"]]
    assert cfg["model"] == name and cfg["arch"] in family.variants
    assert tresnet.list_models(name, family=family.name) == [name]
    assert cfg["classifier"] == family.classifier and cfg["first_conv"] == family.first_conv
    assert len(cfg["input_size"]) == 3 and cfg["input_size"][0] == 3 and len(cfg["mean"]) == len(cfg["std"]) == 3
    assert cfg.get("top1") is None or 0 < cfg["top1"] < 100


def test_forward_features_head_and_pre_logits(model):
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[:2] == (2, model.num_features)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert torch.equal(model.forward_head(feats), model(x))
        assert model(x).shape == (2, 7)


def test_declared_first_conv_and_classifier_exist(model):
    cfg = model.pretrained_cfg
    assert isinstance(model.get_submodule(cfg["first_conv"]), torch.nn.Conv2d)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier() is model.head.fc


def test_reset_classifier(model):
    model = tresnet.create_model(model.pretrained_cfg["model"])
    model.reset_classifier(10)
    assert model.head.fc.out_features == 10 and model.num_classes == 10 and model.pretrained_cfg["num_classes"] == 10
    model.reset_classifier(0)
    assert model.pretrained_cfg["num_classes"] == 0
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, SIZE, SIZE)).shape == (1, model.num_features)


@pytest.mark.parametrize("name", sorted(SMALLEST.values()))
def test_features_only_maps_match_their_feature_info(name):
    model = tresnet.create_model(name, features_only=True).eval()
    assert model.out_indices == (1, 2, 3, 4) and model.head is None
    with torch.no_grad():
        maps = model(torch.rand(1, 3, SIZE, 2 * SIZE))
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    assert [(SIZE // m.shape[2], 2 * SIZE // m.shape[3]) for m in maps] == [(r, r) for r in
                                                                           model.feature_info.reduction()]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with pytest.raises(ValueError, match="out_indices"):
        tresnet.create_model(name, features_only=True, out_indices=(5,))


@pytest.mark.parametrize("name,norm", NORM_CASES)
def test_grad_checkpointing_gives_the_same_gradients_and_statistics(name, norm):
    torch.manual_seed(0)
    a = randomize_norms(tresnet.create_model(name, norm=norm))
    b = tresnet.create_model(name, norm=norm)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x = torch.rand(2, 3, SIZE, SIZE)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    for (key, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert max_rel_diff(q.grad, p.grad) < 1e-4, key
    # the recomputation in backward must not update the running statistics a second time
    for (key, p), q in zip(a.named_buffers(), b.buffers(), strict=True):
        assert torch.allclose(q.float(), p.float(), rtol=1e-5, atol=1e-6), key


def test_fused_model_computes_the_eval_model(model):
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        want = model(x)
    got = fuse(model)(x)
    assert got.shape == want.shape and max_rel_diff(got, want) < 1e-4

"""A whole TResNet training step with In-Place ABN equals the one with plain BatchNorm, and keeps less."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tresnet
from helpers import max_rel_diff, randomize_norms
from tresnet.bench.memory import saved_bytes_per_image


def training_step(model, x, y):
    model.train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("memory_efficient,drop_path_rate", [(False, 0.0), (True, 0.0), (True, 0.2)])
def test_training_step_equals_plain_batchnorm(memory_efficient, drop_path_rate):
    bn = randomize_norms(tresnet.create_model("tresnet_m", norm="bn", drop_path_rate=drop_path_rate), signed=True)
    abn = tresnet.create_model("tresnet_m", drop_path_rate=drop_path_rate, memory_efficient=memory_efficient)
    abn.load_state_dict(bn.state_dict())
    x, y = torch.rand(4, 3, 64, 64), torch.randint(0, 1000, (4,))
    torch.manual_seed(5)
    loss_bn, grads_bn = training_step(bn, x, y)
    torch.manual_seed(5)
    loss_abn, grads_abn = training_step(abn, x, y)
    assert loss_abn == pytest.approx(loss_bn, rel=1e-5)
    for name, g in grads_bn.items():
        # fp32 tolerance, relative to each tensor's largest gradient
        assert max_rel_diff(grads_abn[name], g) < 2e-4, name
    for (name, a), b in zip(abn.named_buffers(), bn.buffers(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name


def test_inplace_abn_keeps_far_less_for_backward():
    bn = saved_bytes_per_image(tresnet.create_model("tresnet_m", norm="bn"), img_size=64)
    abn = saved_bytes_per_image(tresnet.create_model("tresnet_m"), img_size=64)
    lean = saved_bytes_per_image(tresnet.create_model("tresnet_m", memory_efficient=True), img_size=64)
    assert lean < 0.6 * bn and abn < 0.8 * bn and lean < abn


def test_memory_efficient_can_be_switched_on_a_built_model():
    model = tresnet.create_model("tresnet_m")
    before = saved_bytes_per_image(model, img_size=64)
    model.set_memory_efficient(True)
    assert model.memory_efficient and saved_bytes_per_image(model, img_size=64) < 0.8 * before

"""Weight-decay groups, learning-rate schedules and the EMA do what they claim."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import tresnet
from tresnet.training.ema import ModelEma
from tresnet.training.optim import WarmupCosine, create_optimizer, create_scheduler, param_groups


@pytest.fixture(scope="module")
def model():
    return tresnet.create_model("tresnet_m", num_classes=3)


def test_no_weight_decay_on_norms_and_biases(model):
    groups = {g["name"]: g for g in param_groups(model, 0.05)}
    decay_ids = {id(p) for p in groups["decay"]["params"]}
    no_decay_ids = {id(p) for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert id(module.weight) in no_decay_ids and id(module.bias) in no_decay_ids, name
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert id(module.weight) in decay_ids, name
            if module.bias is not None:
                assert id(module.bias) in no_decay_ids, name
    assert len(decay_ids) + len(no_decay_ids) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_decay_moves_only_the_weights_that_decay(name):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = create_optimizer(model, name, lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay can move a parameter
    optimizer.step()
    after = model.state_dict()
    for key in ("0.weight", "3.weight"):
        assert not torch.equal(before[key], after[key]), key
    for key in ("0.bias", "1.weight", "1.bias", "3.bias"):
        assert torch.equal(before[key], after[key]), key


def _lrs(schedule, steps, **kwargs):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    scheduler = create_scheduler(optimizer, schedule, steps, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs + [optimizer.param_groups[0]["lr"]]


def test_cosine_with_warmup():
    lrs = _lrs("cosine", 110, warmup_steps=10, warmup_start_factor=0.1, final_lr_factor=0.0)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.55)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5)  # half-way through the cosine
    assert lrs[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    factor = WarmupCosine(100, 0, final_factor=0.1)
    assert factor(100) == pytest.approx(0.1) and factor(0) == pytest.approx(1.0)
    assert _lrs("constant", 20, warmup_steps=4, warmup_start_factor=0.5)[4:] == [1.0] * 17


def test_onecycle():
    lrs = _lrs("onecycle", 100, pct_start=0.2, div_factor=25, final_div_factor=1e4)
    assert lrs[0] == pytest.approx(1 / 25)
    peak = max(range(101), key=lambda i: lrs[i])
    assert lrs[peak] == pytest.approx(1.0) and peak == pytest.approx(19, abs=1)
    assert lrs[99] == pytest.approx(1 / 25 / 1e4, rel=1e-6)  # the last step runs at the final lr


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedule_state_round_trips_with_weights_only(schedule):
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = create_scheduler(optimizer, schedule, 50, warmup_steps=5)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"s": scheduler.state_dict(), "o": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    optimizer2 = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler2 = create_scheduler(optimizer2, schedule, 50, warmup_steps=5)
    optimizer2.load_state_dict(state["o"])
    scheduler2.load_state_dict(state["s"])
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        optimizer2.step()
        scheduler2.step()
    assert optimizer.param_groups[0]["lr"] == optimizer2.param_groups[0]["lr"]


def test_ema_follows_its_formula():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(4, 2))  # moves the running statistics and num_batches_tracked
    ema.update(model)
    current = model.state_dict()
    for key, value in ema.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * start[key] + 0.1 * current[key])
        else:
            assert torch.equal(value, current[key])
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    warm = ModelEma(model, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)
    warm.num_updates = 90
    assert warm.current_decay() == pytest.approx(91 / 100)
    restored = ModelEma(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.9 and restored.num_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(restored.module.state_dict().values(),
                                                 ema.module.state_dict().values(), strict=True))
    assert math.isclose(ModelEma(model, 0.0).current_decay(), 0.0)

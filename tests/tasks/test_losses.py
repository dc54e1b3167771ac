"""tresnet.tasks.losses: ASL value and gradient against the published formula written out here, its focusing
weight a constant for autograd, focal against its formula and torchvision, BCE against torch; the tasks' losses
(Task.create_loss, default_loss, losses, check_loss) and their one-line errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tresnet.errors import ConfigError
from tresnet.tasks import LossOptions, get_task
from tresnet.tasks.losses import (
    REDUCTIONS,
    AsymmetricLoss,
    BinaryCrossEntropy,
    FocalLoss,
    focused_binary_loss,
)


def published_asl(x: torch.Tensor, y: torch.Tensor, gamma_neg: float, gamma_pos: float, clip: float,
                  eps: float = 1e-8, weight_grad: bool = False) -> torch.Tensor:
    """Ridnik et al. (ASL), element by element in float64: -[y (1-p)^g+ log p + (1-y) p_m^g- log(1-p_m)],
    p_m = max(p - clip, 0), logs clamped at eps, the focusing weights detached unless weight_grad."""
    p = 1.0 / (1.0 + torch.exp(-x))
    p_m = torch.maximum(p - clip, torch.zeros_like(p))
    w_pos, w_neg = (1 - p) ** gamma_pos, p_m ** gamma_neg
    if not weight_grad:
        w_pos, w_neg = w_pos.detach(), w_neg.detach()
    log_p = torch.log(torch.maximum(p, torch.full_like(p, eps)))
    log_not_p_m = torch.log(torch.maximum(1 - p_m, torch.full_like(p, eps)))
    return -(y * w_pos * log_p + (1 - y) * w_neg * log_not_p_m)


def _inputs(soft: bool, n: int = 7, c: int = 5):
    logits = torch.randn(n, c) * 3
    targets = torch.rand(n, c) if soft else (torch.rand(n, c) < 0.4).float()
    return logits, targets


def _value_and_grad(fn, logits):
    x = logits.clone().requires_grad_()
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad.double()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4, 0, 0.05), (4, 1, 0.05), (2, 1, 0.0), (0, 0, 0.2),
                                                      (3.5, 0.5, 0.1)])
def test_asl_value_and_gradient_match_the_published_formula(reduction, soft, gamma_neg, gamma_pos, clip):
    logits, targets = _inputs(soft)
    loss = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction=reduction)
    ours, our_grad = _value_and_grad(lambda x: loss(x, targets), logits)

    def reference(x):
        elements = published_asl(x.double(), targets.double(), gamma_neg, gamma_pos, clip)
        return elements.sum() if reduction == "sum" else elements.mean()

    theirs, their_grad = _value_and_grad(reference, logits)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-4, atol=1e-6)


def test_asl_sum_is_mean_times_elements_and_half_precision_logits_compute_in_float32():
    logits, targets = _inputs(False, n=4, c=6)
    mean = AsymmetricLoss(reduction="mean")(logits, targets)
    total = AsymmetricLoss(reduction="sum")(logits, targets)
    torch.testing.assert_close(total, mean * 24)
    half = AsymmetricLoss()(logits.to(torch.bfloat16), targets)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, AsymmetricLoss()(logits.to(torch.bfloat16).float(), targets))


def test_asl_focusing_weight_carries_no_gradient():
    logits, targets = _inputs(False)
    ours, our_grad = _value_and_grad(lambda x: AsymmetricLoss(gamma_neg=4, gamma_pos=1)(x, targets), logits)
    _, with_weight_grad = _value_and_grad(
        lambda x: published_asl(x.double(), targets.double(), 4, 1, 0.05, weight_grad=True).mean(), logits)
    _, without = _value_and_grad(lambda x: published_asl(x.double(), targets.double(), 4, 1, 0.05).mean(), logits)
    assert (with_weight_grad - without).abs().max() > 1e-3  # the two conventions really differ here
    torch.testing.assert_close(our_grad, without, rtol=1e-4, atol=1e-6)


def test_asl_with_zero_gammas_and_clip_is_binary_cross_entropy():
    logits, targets = _inputs(True)
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)(logits, targets)
    torch.testing.assert_close(asl, nn.functional.binary_cross_entropy_with_logits(logits, targets))


def test_focal_matches_its_formula_and_torchvision():
    logits, targets = _inputs(False)
    ours, our_grad = _value_and_grad(lambda x: FocalLoss(gamma=2.0, reduction="sum")(x, targets), logits)
    theirs, their_grad = _value_and_grad(
        lambda x: published_asl(x.double(), targets.double(), 2.0, 2.0, 0.0, weight_grad=True).sum(), logits)
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-4, atol=1e-6)
    ops = pytest.importorskip("torchvision.ops")
    reference = ops.sigmoid_focal_loss(logits, targets, alpha=-1, gamma=2.0, reduction="mean")
    torch.testing.assert_close(FocalLoss()(logits, targets), reference, rtol=1e-5, atol=1e-6)


def test_bce_is_torchs_in_both_reductions():
    logits, targets = _inputs(True)
    for reduction in ("mean", "sum"):
        loss = get_task("multilabel").create_loss("bce", LossOptions(reduction=reduction))(logits.half(), targets)
        expected = nn.functional.binary_cross_entropy_with_logits(logits.half().float(), targets,
                                                                   reduction=reduction)
        torch.testing.assert_close(loss, expected)


def test_create_loss_defaults_and_kinds():
    multiclass, multilabel = get_task("multiclass"), get_task("multilabel")
    assert multiclass.default_loss == "ce" and multilabel.default_loss == "asl"
    assert multiclass.check_loss(None) == "ce" and multilabel.check_loss(None) == "asl"
    ce = multiclass.create_loss(None, LossOptions(label_smoothing=0.1))
    assert isinstance(ce, nn.CrossEntropyLoss) and ce.label_smoothing == 0.1
    asl = multilabel.create_loss(None, LossOptions(gamma_neg=2, gamma_pos=1, clip=0.0, reduction="sum"))
    assert isinstance(asl, AsymmetricLoss)
    assert (asl.gamma_neg, asl.gamma_pos, asl.clip, asl.reduction) == (2, 1, 0.0, "sum")
    focal = multilabel.create_loss("focal", LossOptions(focal_gamma=1.5))
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5
    assert isinstance(multilabel.create_loss("bce", LossOptions()), BinaryCrossEntropy)
    assert multiclass.losses == ("ce",) and set(multilabel.losses) == {"bce", "focal", "asl"}
    assert REDUCTIONS == ("mean", "sum")


@pytest.mark.parametrize("kwargs,words", [
    (dict(name="ce", task="multilabel"), ["'ce'", "multilabel", "asl, bce, focal"]),
    (dict(name="asl", task="multiclass"), ["'asl'", "multiclass", "use one of ce"]),
    (dict(name="hinge", task="multilabel"), ["'hinge'", "asl, bce, focal"]),
    (dict(name="hinge", task="multiclass"), ["'hinge'", "use one of ce"]),
    (dict(name="asl", task="multilabel", reduction="none"), ["'none'", "mean, sum"]),
    (dict(name="asl", task="multilabel", gamma_neg=-1), ["gamma_neg", "-1"]),
    (dict(name="asl", task="multilabel", gamma_pos=float("nan")), ["gamma_pos", "nan"]),
    (dict(name="asl", task="multilabel", clip=1.0), ["clip", "[0, 1)", "1.0"]),
    (dict(name="asl", task="multilabel", clip=-0.1), ["clip", "-0.1"]),
    (dict(name="focal", task="multilabel", focal_gamma=-2), ["gamma", "-2"]),
    (dict(name="ce", task="detection"), ["'ce'", "detection", "use one of detector"]),
])
def test_create_loss_errors_are_one_line(kwargs, words):
    name, task = kwargs.pop("name"), kwargs.pop("task")
    with pytest.raises(ConfigError) as error:
        get_task(task).create_loss(name, LossOptions(**kwargs))
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_focused_binary_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        focused_binary_loss(torch.zeros(2, 3), torch.zeros(2, 4), gamma_pos=0, gamma_neg=0, clip=0, eps=1e-8,
                            reduction="mean", weight_grad=False)

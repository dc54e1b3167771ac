"""The multi-label training losses: binary cross-entropy, binary focal loss and the asymmetric loss (ASL)
(the multiclass task trains with torch's cross-entropy).

ASL (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021; Alibaba-MIIL/ASL,
``src/loss_functions/losses.py``): with ``p = sigmoid(logit)``, ``y`` the target and the shifted
probability ``p_m = max(p - clip, 0)``, each (image, class) element costs

    ``-[ y (1 - p)^gamma_pos log(p) + (1 - y) p_m^gamma_neg log(1 - p_m) ]``

with both logarithms' arguments clamped at ``eps``. The focusing weights ``(1 - p)^gamma_pos`` and
``p_m^gamma_neg`` are constants for the gradient, as in the official implementation
(``disable_torch_grad_focal_loss=True``). The official loss sums over the batch and the classes
(``reduction="sum"``); ``reduction="mean"`` (our default) divides by the number of elements, torch's
``BCEWithLogitsLoss`` convention, so that the learning rate does not depend on batch size or class count.
Soft targets (mixup, label smoothing) weight the two terms as written above; the official code instead
mixes the two focusing exponents by ``y``, which agrees for ``y`` in {0, 1}.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tresnet.errors import ConfigError

REDUCTIONS = ("mean", "sum")


def check_reduction(reduction: str) -> str:
    """``reduction`` if it is one of :data:`REDUCTIONS`; :class:`ConfigError` otherwise."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown loss reduction {reduction!r}: use one of {', '.join(REDUCTIONS)}")
    return reduction


def _check_gamma(name: str, gamma: float) -> float:
    if not gamma >= 0.0:  # also rejects NaN
        raise ConfigError(f"{name} must be >= 0, got {gamma}")
    return float(gamma)


def _check_pair(logits: Tensor, targets: Tensor) -> None:
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have one shape")


def focused_binary_loss(logits: Tensor, targets: Tensor, *, gamma_pos: float, gamma_neg: float, clip: float,
                        eps: float, reduction: str, weight_grad: bool) -> Tensor:
    """The per-element loss ``-[y (1-p)^gamma_pos log(p) + (1-y) p_m^gamma_neg log(1-p_m)]`` (float32), summed
    or averaged over every element; ``weight_grad=False`` makes the focusing weights constants for autograd.
    ASL, binary focal loss (``clip=0``, equal gammas) and BCE (gammas 0, ``clip=0``) are its special cases."""
    _check_pair(logits, targets)
    targets = targets.float()
    prob = torch.sigmoid(logits.float())
    prob_neg = (prob - clip).clamp(min=0.0) if clip > 0 else prob  # the shifted probability p_m
    loss_pos = targets * torch.log(prob.clamp(min=eps))
    loss_neg = (1.0 - targets) * torch.log((1.0 - prob_neg).clamp(min=eps))
    with torch.set_grad_enabled(weight_grad and torch.is_grad_enabled()):
        weight_pos = (1.0 - prob).pow(gamma_pos) if gamma_pos > 0 else None
        weight_neg = prob_neg.pow(gamma_neg) if gamma_neg > 0 else None
    if weight_pos is not None:
        loss_pos = loss_pos * weight_pos
    if weight_neg is not None:
        loss_neg = loss_neg * weight_neg
    loss = -(loss_pos + loss_neg)
    return loss.sum() if reduction == "sum" else loss.mean()


class AsymmetricLoss(nn.Module):
    """The asymmetric loss (ASL) of Ridnik et al. for multi-label targets (see the module docstring).

    ``forward(logits, targets)``: ``(N, C)`` logits of any float dtype and targets in [0, 1] of the same shape
    (multi-hot, or soft) -> a float32 scalar. Defaults are the paper's COCO recipe (``gamma_neg=4``,
    ``gamma_pos=0``, ``clip=0.05``); the official class defaults ``gamma_pos`` to 1.
    Raises :class:`ConfigError` for a negative gamma, ``clip`` outside [0, 1) or an unknown ``reduction``.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.gamma_neg = _check_gamma("gamma_neg", gamma_neg)
        self.gamma_pos = _check_gamma("gamma_pos", gamma_pos)
        if not 0.0 <= clip < 1.0:
            raise ConfigError(f"the ASL clip (probability margin) must lie in [0, 1), got {clip}")
        self.clip = float(clip)
        self.eps = float(eps)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focused_binary_loss(logits, targets, gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg,
                                   clip=self.clip, eps=self.eps, reduction=self.reduction, weight_grad=False)

    def extra_repr(self) -> str:
        return (f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, "
                f"reduction={self.reduction!r}")


class FocalLoss(nn.Module):
    """Binary focal loss per class (Lin et al., "Focal Loss for Dense Object Detection", without the alpha
    balance): ``-[y (1-p)^gamma log(p) + (1-y) p^gamma log(1-p)]``, logs clamped at ``eps``. As in the paper
    (and torchvision's ``sigmoid_focal_loss``), the gradient flows through the focusing weight.
    Raises :class:`ConfigError` for a negative ``gamma`` or an unknown ``reduction``."""

    def __init__(self, gamma: float = 2.0, eps: float = 1e-8, reduction: str = "mean") -> None:
        super().__init__()
        self.gamma = _check_gamma("the focal gamma", gamma)
        self.eps = float(eps)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focused_binary_loss(logits, targets, gamma_pos=self.gamma, gamma_neg=self.gamma, clip=0.0,
                                   eps=self.eps, reduction=self.reduction, weight_grad=True)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reduction={self.reduction!r}"


class BinaryCrossEntropy(nn.BCEWithLogitsLoss):
    """torch's ``BCEWithLogitsLoss`` computed in float32 (logits of any float dtype, float targets)."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check_pair(logits, targets)
        return super().forward(logits.float(), targets.float())


__all__ = ["REDUCTIONS", "AsymmetricLoss", "BinaryCrossEntropy", "FocalLoss", "check_reduction",
           "focused_binary_loss"]

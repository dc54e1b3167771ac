"""Norm + activation pairs, one module each, so that blocks never name the norm they use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tresnet.layers.inplace_abn import ACTIVATIONS, InPlaceABN, InPlaceABNSync, activate_

NORMS = ("inplace_abn", "inplace_abn_sync", "bn")
# Plain BatchNorm also takes ReLU, which In-Place ABN cannot (it must invert its activation in backward).
BN_ACTIVATIONS = (*ACTIVATIONS, "relu")


class BatchNormAct2d(nn.BatchNorm2d):
    """Plain ``nn.BatchNorm2d`` followed by an in-place activation (autograd keeps the BN input)."""

    def __init__(self, num_features: int, activation: str = "leaky_relu", activation_param: float = 0.01,
                 eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        if activation not in BN_ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(BN_ACTIVATIONS)}")
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.activation = activation
        self.activation_param = activation_param

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.activation == "elu":
            return F.elu(x, self.activation_param, inplace=True)
        if self.activation == "relu":
            return F.relu(x, inplace=True)
        return activate_(x, self.activation, self.activation_param)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}, activation_param={self.activation_param}"


def create_norm_act(norm: str, num_features: int, activation: str = "leaky_relu",
                    activation_param: float = 0.01) -> InPlaceABN | BatchNormAct2d:
    """The norm + activation module named by ``norm`` (one of :data:`NORMS`).

    ``activation="relu"`` needs ``norm="bn"``: In-Place ABN recomputes its input from its output, which
    ReLU makes impossible (a :class:`ValueError` says so).
    """
    if activation == "relu" and norm != "bn":
        raise ValueError(f"norm {norm!r} cannot follow a ReLU (In-Place ABN needs an invertible activation): "
                         f"use norm='bn'")
    if norm == "inplace_abn":
        return InPlaceABN(num_features, activation=activation, activation_param=activation_param)
    if norm == "inplace_abn_sync":
        return InPlaceABNSync(num_features, activation=activation, activation_param=activation_param)
    if norm == "bn":
        return BatchNormAct2d(num_features, activation=activation, activation_param=activation_param)
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")

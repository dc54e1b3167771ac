"""Optimisers and learning-rate schedules of the training recipes.

"True" weight decay (the TResNet paper): conv and linear weights decay, norm weights and every bias
do not. Schedules are stepped once per optimiser step: SGD's one-cycle (``OneCycleLR``) and a linear
warm-up followed by cosine annealing (the fine-tuning recipe's, usually with AdamW), or by steps down at
milestones (the detection schedules of FCOS and Detectron: x0.1 at 2/3 and 8/9 of the "1x" schedule).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from tresnet.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("onecycle", "cosine", "constant", "multistep")
STEP_FACTOR = 0.1  # multistep: the lr is multiplied by this at each milestone (the FCOS and Detectron schedules)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimiser groups: ``"decay"`` (weights of convs and linears, ``weight_decay``) and
    ``"no_decay"`` (norm weights and biases, decay 0). Frozen parameters are left out.

    Any parameter of one dimension or less is a norm weight or a bias in TResNet.
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def create_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0,
                     momentum: float = 0.9) -> torch.optim.Optimizer:
    """``"sgd"`` (with momentum), ``"adamw"`` (decoupled decay) or ``"adam"`` (the decay added to the
    gradient, as the ASL and ML-Decoder training scripts do) over :func:`param_groups` of ``model``."""
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ConfigError(f"unknown optimizer {name!r}; choose sgd, adamw or adam")


class WarmupCosine:
    """Learning-rate factor at a step: linear warm-up from ``start_factor`` to 1 over ``warmup_steps``,
    then cosine from 1 down to ``final_factor`` at ``total_steps`` (``cosine=False``: stays at 1).

    A class, not a lambda, so that ``LambdaLR.state_dict`` saves it.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, start_factor: float = 0.01,
                 final_factor: float = 0.0, cosine: bool = True) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)
        self.final_factor = float(final_factor)
        self.cosine = bool(cosine)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        if not self.cosine:
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.final_factor + (1.0 - self.final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupSteps:
    """Learning-rate factor at a step: linear warm-up from ``start_factor`` to 1 over ``warmup_steps``, then
    :data:`STEP_FACTOR` to the power of the ``milestones`` (steps) passed. A class, so that it is saved."""

    def __init__(self, milestones: tuple[int, ...], warmup_steps: int = 0, start_factor: float = 0.01) -> None:
        self.milestones = tuple(int(m) for m in milestones)
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)

    def __call__(self, step: int) -> float:
        warmup = 1.0
        if step < self.warmup_steps:
            warmup = self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        return warmup * STEP_FACTOR ** sum(step >= milestone for milestone in self.milestones)


def create_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, *,
                     warmup_steps: int = 0, warmup_start_factor: float = 0.01, final_lr_factor: float = 0.0,
                     pct_start: float = 0.2, div_factor: float = 25.0,
                     final_div_factor: float = 1e4, milestones: tuple[float, ...] = (2 / 3, 8 / 9)) -> LRScheduler:
    """The per-step schedule ``schedule`` over ``total_steps`` optimiser steps.

    ``"onecycle"``: ``OneCycleLR`` peaking at the optimiser's lr after ``pct_start`` of the steps
    (for SGD it also cycles momentum 0.95 -> 0.85 -> 0.95). ``"cosine"``: :class:`WarmupCosine`.
    ``"constant"``: the warm-up, then the optimiser's lr. ``"multistep"``: the warm-up, then x0.1 at each of
    the ``milestones`` (fractions of ``total_steps``): :class:`WarmupSteps`.
    """
    if total_steps < 1:
        raise ConfigError(f"a schedule needs at least one step, got {total_steps}")
    warmup_steps = min(int(warmup_steps), total_steps)
    if schedule == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 2), pct_start=pct_start,
                          div_factor=div_factor, final_div_factor=final_div_factor)
    if schedule in ("cosine", "constant"):
        factor = WarmupCosine(total_steps, warmup_steps, warmup_start_factor, final_lr_factor,
                              cosine=schedule == "cosine")
        return LambdaLR(optimizer, factor)
    if schedule == "multistep":
        if not all(0.0 < m < 1.0 for m in milestones):
            raise ConfigError(f"milestones are fractions of the schedule in (0, 1), got {tuple(milestones)}")
        steps = tuple(round(m * total_steps) for m in sorted(milestones))
        return LambdaLR(optimizer, WarmupSteps(steps, warmup_steps, warmup_start_factor))
    raise ConfigError(f"unknown schedule {schedule!r}; choose {', '.join(SCHEDULES)}")


__all__ = ["OPTIMIZERS", "SCHEDULES", "STEP_FACTOR", "WarmupCosine", "WarmupSteps", "create_optimizer", "create_scheduler", "param_groups"]

"""The optimisation part of a run: the optimiser, the learning-rate schedule stepped every optimiser step, the
loss scaler of float16 autocast, gradient clipping and the weights' moving average (EMA)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from tresnet.runtime import needs_grad_scaler
from tresnet.training.ema import ModelEma
from tresnet.training.optim import create_optimizer, create_scheduler
from tresnet.training.sections import OptimisationSection


class Optimisation:
    """What turns a loss into new weights: built for ``trained`` (the parameters the optimiser steps: the model,
    or th-kd's model and head) and ``model`` (whose EMA is kept), ``steps_per_epoch`` long epochs, as the run's
    ``optimisation`` section says; ``precision`` (autocast) decides whether losses are scaled."""

    def __init__(self, cfg: OptimisationSection, precision: str, trained: nn.Module, model: nn.Module,
                 steps_per_epoch: int, device: torch.device) -> None:
        self.trained, self.model, self.clip_grad = trained, model, cfg.clip_grad
        self.optimizer = create_optimizer(trained, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        self.scheduler = create_scheduler(
            self.optimizer, cfg.schedule, (cfg.schedule_epochs or cfg.epochs) * steps_per_epoch,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            warmup_start_factor=cfg.warmup_start_factor, final_lr_factor=cfg.final_lr_factor,
            pct_start=cfg.pct_start, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
            milestones=tuple(cfg.milestones))
        self.scaler = torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(precision, device))
        self.ema = ModelEma(model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
        self.last_lr = self.optimizer.param_groups[0]["lr"]

    def step(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` and take one optimiser, schedule and EMA step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.trained.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():  # a step skipped by the scaler makes the scheduler warn
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def state_dict(self) -> dict:
        """The resume state's optimisation entries."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Continue from the entries :meth:`state_dict` saved."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


__all__ = ["Optimisation"]

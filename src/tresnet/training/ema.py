"""Exponential moving average of a model's weights, evaluated alongside the model itself."""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn


class ModelEma:
    """A frozen copy of ``model`` whose floating-point weights and buffers follow
    ``ema = decay * ema + (1 - decay) * current`` after every :meth:`update` (integer buffers are copied).

    With ``warmup`` the decay used at update ``n`` is ``min(decay, (1 + n) / (10 + n))``, so that the
    average forgets the random initialisation quickly in short runs.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.module = deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self._pairs_of = None

    def current_decay(self) -> float:
        """The decay that the next :meth:`update` uses."""
        if self.warmup:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    def _pairs(self, model: nn.Module):
        # state_dict() tensors share storage with the live parameters and buffers: build the lists once.
        if self._pairs_of is not model:
            ours, theirs = self.module.state_dict(), model.state_dict()
            if ours.keys() != theirs.keys():
                raise ValueError("the model given to ModelEma.update is not the one it was built from")
            self._float = ([ours[k] for k in ours if ours[k].is_floating_point()],
                           [theirs[k].detach() for k in ours if ours[k].is_floating_point()])
            self._other = ([ours[k] for k in ours if not ours[k].is_floating_point()],
                           [theirs[k] for k in ours if not ours[k].is_floating_point()])
            self._pairs_of = model
        return self._float, self._other

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model`` (the unwrapped model, not its DDP wrapper)."""
        decay = self.current_decay()
        (ema_float, model_float), (ema_other, model_other) = self._pairs(model)
        if ema_float:
            torch._foreach_lerp_(ema_float, model_float, 1.0 - decay)
        for ema_value, model_value in zip(ema_other, model_other, strict=True):
            ema_value.copy_(model_value)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """The averaged weights and the update count, for a resume file."""
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])


__all__ = ["ModelEma"]

"""What the deployment forms of a model have in common (the PT2E int8 model, an ONNX Runtime session): called like
the model, fp32 images in and fp32 outputs out, on the CPU, inference only."""

from __future__ import annotations

import torch
from torch import nn

from tresnet.errors import ConfigError


class DeployedModel(nn.Module):
    """A model's deployment form: ``backend`` / ``backend_name`` say what runs it, ``img_size`` the size it was
    built and checked at, ``calibrated_on`` the number of calibration images of an int8 form (else None).

    It has no train mode: :meth:`train` only sets the flag, and it stays in eval mode from the start.
    """

    backend = ""
    backend_name = ""
    runs_as = "deployed model"  # how the one-line error of :meth:`check_images` names it

    def __init__(self, *, img_size: tuple[int, int], calibrated_on: int | None = None) -> None:
        super().__init__()
        self.img_size = img_size
        self.calibrated_on = calibrated_on
        self.train(False)  # inference only

    def train(self, mode: bool = True) -> DeployedModel:
        """Only the flag: a deployed form is inference-only and has no train mode to switch to."""
        self.training = mode
        return self

    def check_images(self, images: torch.Tensor) -> None:
        """:class:`ConfigError` for images that are not on the CPU, where deployed forms run."""
        if images.device.type != "cpu":
            raise ConfigError(f"the {self.runs_as} runs on the CPU; got images on {images.device}")


__all__ = ["DeployedModel"]

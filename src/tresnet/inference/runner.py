"""The inference model, the middle step of ``validate`` and ``predict``: the model on its device, and what runs
for it (the model itself under autocast, or its deployment form: the folded bfloat16 copy, the int8 model), with
the options that choose it (:class:`RunOptions`) and what the reports say of it.

    from tresnet.inference.runner import RunOptions, make_inference_model

    runner = make_inference_model(model, "cpu", RunOptions(precision="int8", calibration="calib/"), img_size=224)
    logits = runner(images)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from tresnet.deploy.inference import check_inference_options, inference_model
from tresnet.runtime import autocast


@dataclass(frozen=True)
class RunOptions:
    """How the model runs: ``precision`` (one of :data:`tresnet.deploy.inference.INFERENCE_PRECISIONS`: ``fp32``,
    ``amp`` or ``fp16`` autocast; ``bf16``: the folded bfloat16 model; ``int8``: the model quantized on the
    ``calibration`` images, ``calibration_images`` of them, by ``int8_backend``), in channels-last memory or not."""

    precision: str = "fp32"
    channels_last: bool = False
    calibration: str | os.PathLike | torch.Tensor | None = None
    calibration_images: int | None = None
    int8_backend: str | None = None

    def check(self, device: torch.device | str | None) -> RunOptions:
        """These options if they can run on ``device``; :class:`~tresnet.errors.ConfigError` otherwise."""
        check_inference_options(self.precision, device, self.calibration, self.calibration_images,
                                self.int8_backend)
        return self


@dataclass
class InferenceModel:
    """The model on its device and what runs for it: ``runner`` (the model, or its deployment form) under the
    autocast ``run_precision``; called on fp32 images, it returns fp32 logits."""

    model: nn.Module
    runner: nn.Module
    device: torch.device
    options: RunOptions
    run_precision: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.run_precision, self.device):
            return self.runner(images.to(self.device)).float()

    def settings(self) -> dict:
        """What a report says of how the model ran beyond its precision: int8's calibration images."""
        if self.options.precision != "int8":
            return {}
        calibration = self.options.calibration
        return dict(calibration=None if isinstance(calibration, torch.Tensor) else str(calibration),
                    calibration_images=self.runner.calibrated_on)


def make_inference_model(model: nn.Module, device: torch.device | str, options: RunOptions | None = None, *,
                         img_size: int) -> InferenceModel:
    """``model`` moved to ``device`` (channels-last if asked) and what runs for ``options`` at ``img_size``
    (:func:`tresnet.deploy.inference.inference_model`). Raises :class:`~tresnet.errors.ConfigError` for options
    that cannot run on ``device``."""
    options = (options or RunOptions()).check(device)
    device = torch.device(device)
    model.to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    runner, run_precision = inference_model(model, options.precision, device, calibration=options.calibration,
                                            calibration_images=options.calibration_images, img_size=img_size,
                                            int8_backend=options.int8_backend)
    return InferenceModel(model, runner, device, options, run_precision)


__all__ = ["InferenceModel", "RunOptions", "make_inference_model"]

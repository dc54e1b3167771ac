"""The inference model, the middle step of ``validate`` and ``predict``: the model on its device, and what runs
for it (the model itself, or its deployment form in another number format: the folded bfloat16 copy, the int8
model) under which autocast, with the options that choose them (:class:`RunOptions`) and what the reports say of it.

    from tresnet.inference.runner import RunOptions, make_inference_model

    runner = make_inference_model(model, "cpu", RunOptions(number_format="int8", calibration="calib/"), img_size=224)
    logits = runner(images)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from tresnet.deploy.inference import check_inference_precision, check_number_format_options, inference_model
from tresnet.runtime import autocast, warn_if_bf16_is_emulated


@dataclass(frozen=True)
class RunOptions:
    """How the model runs: ``precision``, its autocast (one of :data:`tresnet.runtime.PRECISIONS`: ``fp32``,
    ``amp``, ``bf16``, ``fp16``, as in training); ``number_format``, what runs (one of
    :data:`tresnet.deploy.inference.INFERENCE_NUMBER_FORMATS`: ``fp32``, the model itself; ``bf16``, the folded
    bfloat16 model; ``int8``, the model quantized on the ``calibration`` images, ``calibration_images`` of them,
    by ``int8_backend``; the last two only with ``precision`` fp32); in channels-last memory or not."""

    precision: str = "fp32"
    number_format: str = "fp32"
    channels_last: bool = False
    calibration: str | os.PathLike | torch.Tensor | None = None
    calibration_images: int | None = None
    int8_backend: str | None = None

    def check(self, device: torch.device | str | None) -> RunOptions:
        """These options if they can run on ``device``; :class:`~tresnet.errors.ConfigError` otherwise."""
        check_inference_precision(self.precision, device, self.number_format)
        check_number_format_options(self.number_format, device, self.calibration, self.calibration_images,
                                    self.int8_backend)
        return self


@dataclass
class InferenceModel:
    """The model on its device and what runs for it: ``runner`` (the model, or its deployment form) under the
    autocast of ``options.precision``; called on fp32 images, it returns fp32 logits."""

    model: nn.Module
    runner: nn.Module
    device: torch.device
    options: RunOptions

    @property
    def precision(self) -> str:
        """The autocast the runner runs under."""
        return self.options.precision

    def __call__(self, images: torch.Tensor | list[torch.Tensor]):
        """fp32 logits of a batch of images; a detector's boxes for a list of images (of any sizes)."""
        with torch.no_grad(), autocast(self.precision, self.device):
            if isinstance(images, list):
                return self.runner([image.to(self.device) for image in images])
            return self.runner(images.to(self.device)).float()

    def settings(self) -> dict:
        """What a report says of how the model ran beyond its precision: its number format, and int8's
        calibration images."""
        number_format = self.options.number_format
        if number_format != "int8":
            return dict(number_format=number_format)
        calibration = self.options.calibration
        return dict(number_format=number_format,
                    calibration=None if isinstance(calibration, torch.Tensor) else str(calibration),
                    calibration_images=self.runner.calibrated_on)


def make_inference_model(model: nn.Module, device: torch.device | str, options: RunOptions | None = None, *,
                         img_size: int) -> InferenceModel:
    """``model`` moved to ``device`` (channels-last if asked) and what runs for ``options`` at ``img_size``
    (:func:`tresnet.deploy.inference.inference_model`). Raises :class:`~tresnet.errors.ConfigError` for options
    that cannot run on ``device``; bfloat16 autocast on a CPU that only emulates it warns
    (:class:`tresnet.runtime.EmulatedBf16Warning`)."""
    options = (options or RunOptions()).check(device)
    device = torch.device(device)
    model.to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    warn_if_bf16_is_emulated(options.precision, device)
    runner = inference_model(model, options.number_format, device, calibration=options.calibration,
                             calibration_images=options.calibration_images, img_size=img_size,
                             int8_backend=options.int8_backend)
    return InferenceModel(model, runner, device, options)


__all__ = ["InferenceModel", "RunOptions", "make_inference_model"]

"""What the inference commands (``validate``, ``predict``) run for each ``--precision``.

``fp32``, ``amp`` and ``fp16`` run the model as it is, under autocast where asked. ``bf16`` and ``int8`` run
its deployment form, so that the accuracy they report is the accuracy of what gets deployed:

- ``bf16``: :func:`tresnet.deploy.fuse` with ``dtype=torch.bfloat16`` (BatchNorm folded, weights and
  activations bfloat16, channels-last); on a CPU with AVX-512 BF16 or AMX this is several times faster
  than bfloat16 autocast of the unfolded model, which keeps BatchNorm and the residual adds in fp32;
- ``int8``: :func:`tresnet.deploy.quantize`, calibrated on a folder of images (CPU only).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from tresnet.errors import ConfigError
from tresnet.runtime import PRECISIONS, check_precision, warn_if_bf16_is_emulated

INFERENCE_PRECISIONS = (*PRECISIONS, "int8")
INFERENCE_PRECISION_HELP = ("fp32 (default); amp or fp16: autocast (amp: float16 on CUDA, bfloat16 on the CPU); "
                            "bf16: the model folded and cast to bfloat16 (tresnet.deploy.fuse); int8: the model "
                            "quantized on the CPU, calibrated on --calibration images")


def check_inference_precision(precision: str, device: torch.device | str | None = None) -> str:
    """``precision`` if it is one of :data:`INFERENCE_PRECISIONS` and usable on ``device``; else :class:`ConfigError`."""
    if precision == "int8":
        if device is not None and torch.device(device).type != "cpu":
            raise ConfigError(f"--precision int8 runs on the CPU (oneDNN int8 kernels), not on {device}: use "
                              f"--device cpu")
        return precision
    if precision not in PRECISIONS:
        raise ConfigError(f"bad --precision {precision!r}: choose one of {', '.join(INFERENCE_PRECISIONS)}")
    return check_precision(precision, device)


def check_inference_options(precision: str, device: torch.device | str | None,
                            calibration: str | os.PathLike | torch.Tensor | None,
                            calibration_images: int | None) -> None:
    """:class:`ConfigError` for a precision that cannot run on ``device`` or calibration options that do not
    fit it (int8 without calibration images, calibration options with another precision, a count below 1)."""
    check_inference_precision(precision, device)
    check_calibration_options(precision, calibration, calibration_images)


def check_calibration_options(precision: str, calibration: str | os.PathLike | torch.Tensor | None,
                              calibration_images: int | None) -> None:
    """:class:`ConfigError` for int8 without calibration images, calibration options with another precision
    and a count below 1 (the same rule for validate, predict and export)."""
    if precision != "int8" and (calibration is not None or calibration_images is not None):
        raise ConfigError(f"--calibration and --calibration-images are for --precision int8, not {precision}")
    if precision == "int8" and calibration is None:
        raise ConfigError("--precision int8 needs calibration images: --calibration DIR, a folder of images like "
                          "the ones the model will see (a few hundred training images, not the validation set)")
    if calibration_images is not None and calibration_images < 1:
        raise ConfigError(f"--calibration-images must be at least 1, got {calibration_images}")


def inference_model(model: nn.Module, precision: str, device: torch.device | str, *,
                    calibration: str | os.PathLike | torch.Tensor | None = None,
                    calibration_images: int | None = None, img_size: int | None = None) -> tuple[nn.Module, str]:
    """What to run for ``precision`` on ``device``, and the autocast precision to run it under.

    ``bf16``: a folded bfloat16 copy (fp32 images in, fp32 outputs out), run without autocast; ``int8``: a
    quantized copy calibrated on ``calibration`` (a folder of images, ``calibration_images`` of them, at
    ``img_size``), on the CPU; any other precision: ``model`` itself, under that autocast. ``model`` is
    never changed. bfloat16 on a CPU that only emulates it warns (:class:`tresnet.runtime.EmulatedBf16Warning`).

    Raises :class:`ConfigError` for an unknown precision, int8 off the CPU or without calibration images,
    and calibration options given with another precision; :func:`tresnet.deploy.quantize`'s errors for
    calibration images that cannot be read.
    """
    device = torch.device(device)
    check_inference_options(precision, device, calibration, calibration_images)
    warn_if_bf16_is_emulated(precision, device)
    if precision == "bf16":
        from tresnet.deploy.fusion import fuse

        return fuse(model, dtype=torch.bfloat16).to(device), "fp32"
    if precision == "int8":
        from tresnet.deploy.quantize import DEFAULT_CALIBRATION_IMAGES, quantize

        return quantize(model, calibration, img_size=img_size,
                        calibration_images=calibration_images or DEFAULT_CALIBRATION_IMAGES), "fp32"
    return model, precision


__all__ = ["INFERENCE_PRECISIONS", "INFERENCE_PRECISION_HELP", "check_calibration_options", "check_inference_options", "check_inference_precision",
           "inference_model"]

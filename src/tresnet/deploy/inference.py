"""What the inference commands (``validate``, ``predict``) run for each ``--number-format``, and under which
``--precision``.

Two words, two meanings. ``--precision`` (:data:`tresnet.runtime.PRECISIONS`) is autocast, as in ``train`` and
``benchmark``: the model as it is, under ``fp32`` (none), ``amp``, ``bf16`` or ``fp16`` autocast.
``--number-format`` (:data:`INFERENCE_NUMBER_FORMATS`) is the number format of what runs: ``fp32`` (the default)
is the model as it is; ``bf16`` and ``int8`` run its deployment form, so that the accuracy they report is the
accuracy of what gets deployed:

- ``bf16``: :func:`tresnet.deploy.fuse` with ``dtype=torch.bfloat16`` (BatchNorm folded, weights and
  activations bfloat16, channels-last); on a CPU with AVX-512 BF16 or AMX this is several times faster
  than bfloat16 autocast of the unfolded model, which keeps BatchNorm and the residual adds in fp32;
- ``int8``: the model quantized on the CPU, calibrated on a folder of images, by one of two backends
  (:data:`INT8_BACKENDS`): ``pt2e``, :func:`tresnet.deploy.quantize` (PyTorch's PT2E, compiled by
  ``torch.compile``), or ``onnx``, :func:`tresnet.deploy.onnx_model` (ONNX Runtime's static quantization of
  the ONNX export, run by ONNX Runtime).

A deployment form sets its own number format, so it runs without autocast: ``--precision`` other than ``fp32``
with ``--number-format`` other than ``fp32`` is a one-line error (:func:`check_inference_precision`), as is
``--precision int8`` (a number format, not an autocast precision).

Which int8 backend is faster depends on the CPU (``docs/deploy.md`` has the measurements). ``auto``, the default,
follows :func:`choose_int8_backend`: PT2E where the CPU has AMX (its oneDNN int8 kernels use the tiles: 1.6x
ONNX Runtime on a Sapphire Rapids Xeon), ONNX Runtime elsewhere (1.7x PT2E on an AMD EPYC with AVX-512 VNNI;
as fast on an AVX2-only one, and ready in a third of the time), each only where its packages are installed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Collection

import torch
from torch import nn

from tresnet.deploy.fusion import fuse
from tresnet.deploy.int8 import DEFAULT_CALIBRATION_IMAGES, quantize
from tresnet.deploy.onnx_model import onnx_model
from tresnet.errors import ConfigError, MissingDependencyError
from tresnet.runtime import PRECISIONS, check_precision, warn_emulated_bf16

INFERENCE_NUMBER_FORMATS = ("fp32", "bf16", "int8")
INT8_BACKENDS = ("auto", "pt2e", "onnx")
# The packages each int8 backend needs, and the extra that installs them.
INT8_BACKEND_PACKAGES = {"pt2e": (("torchao",), "int8"), "onnx": (("onnx", "onnxruntime"), "export")}
INFERENCE_NUMBER_FORMAT_HELP = ("fp32 (default): the model as it is; bf16: the model folded and cast to bfloat16 "
                                "(tresnet.deploy.fuse); int8: the model quantized on the CPU, calibrated on "
                                "--calibration images. bf16 and int8 run without autocast (--precision fp32)")


def check_inference_number_format(number_format: str, device: torch.device | str | None = None) -> str:
    """``number_format`` if it is one of :data:`INFERENCE_NUMBER_FORMATS` and usable on ``device``; else
    :class:`ConfigError` (int8 off the CPU, bfloat16 on a GPU without it)."""
    if number_format not in INFERENCE_NUMBER_FORMATS:
        raise ConfigError(f"bad --number-format {number_format!r}: choose one of "
                          f"{', '.join(INFERENCE_NUMBER_FORMATS)}")
    device = torch.device(device) if device is not None else None
    if number_format == "int8" and device is not None and device.type != "cpu":
        raise ConfigError(f"--number-format int8 runs on the CPU (oneDNN int8 kernels), not on {device}: use "
                          f"--device cpu")
    if (number_format == "bf16" and device is not None and device.type == "cuda"
            and not torch.cuda.is_bf16_supported()):
        raise ConfigError(f"--number-format bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                          f"use --number-format fp32 (with --precision fp16 for float16 autocast)")
    return number_format


def refuse_number_format_as_precision(precision: str, fix: str) -> None:
    """:class:`ConfigError` when a number format that is no autocast (int8) is given as ``--precision``; ``fix``
    says what runs in it instead."""
    if precision in INFERENCE_NUMBER_FORMATS and precision not in PRECISIONS:
        raise ConfigError(f"{precision} is a number format, not an autocast precision: {fix}")


def check_inference_precision(precision: str, device: torch.device | str | None = None,
                              number_format: str = "fp32") -> str:
    """``precision`` if it is an autocast precision (:data:`tresnet.runtime.PRECISIONS`) usable on ``device`` that
    goes with ``number_format``: a deployment form (bf16, int8) runs without autocast, so only with fp32.

    Raises :class:`ConfigError` naming ``--number-format`` for a number format given as a precision (int8).
    """
    refuse_number_format_as_precision(precision, f"use --number-format {precision}")
    check_precision(precision, device)
    if precision != "fp32" and number_format != "fp32":
        raise ConfigError(f"--number-format {number_format} sets its own number format and runs without autocast: "
                          f"leave out --precision {precision}")
    return precision


def check_number_format_options(number_format: str, device: torch.device | str | None,
                                calibration: str | os.PathLike | torch.Tensor | None,
                                calibration_images: int | None, int8_backend: str | None = None) -> None:
    """:class:`ConfigError` for a number format that cannot run on ``device`` or calibration options that do not
    fit it (int8 without calibration images, calibration options with another number format, a count below 1),
    and :func:`check_int8_backend`'s errors."""
    check_inference_number_format(number_format, device)
    check_calibration_options(number_format, calibration, calibration_images)
    check_int8_backend(number_format, int8_backend)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (as PyTorch's CPU detection reports them); False where torch cannot tell."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def installed_int8_backends() -> list[str]:
    """The int8 backends whose packages are installed (:data:`INT8_BACKEND_PACKAGES`), without importing them."""
    return [backend for backend, (packages, _) in INT8_BACKEND_PACKAGES.items()
            if all(importlib.util.find_spec(package) is not None for package in packages)]


def choose_int8_backend(*, amx: bool, installed: Collection[str]) -> str:
    """The int8 backend ``auto`` means: ``pt2e`` on a CPU with AMX, ``onnx`` on any other (the rule measured in
    ``docs/deploy.md``); the other backend when only its packages are ``installed``."""
    preferred, other = ("pt2e", "onnx") if amx else ("onnx", "pt2e")
    return other if preferred not in installed and other in installed else preferred


def resolve_int8_backend(backend: str | None = None) -> str:
    """``pt2e`` or ``onnx``: ``backend`` itself, or for None and ``auto`` :func:`choose_int8_backend` on this CPU.

    Raises :class:`ConfigError` for another name and :class:`~tresnet.errors.MissingDependencyError` when the
    backend's packages (:data:`INT8_BACKEND_PACKAGES`) are not installed.
    """
    if backend not in (None, *INT8_BACKENDS):
        raise ConfigError(f"bad --int8-backend {backend!r}: choose one of {', '.join(INT8_BACKENDS)}")
    if backend in (None, "auto"):
        backend = choose_int8_backend(amx=cpu_has_amx(), installed=installed_int8_backends())
    packages, extra = INT8_BACKEND_PACKAGES[backend]
    missing = [package for package in packages if importlib.util.find_spec(package) is None]
    if missing:
        raise MissingDependencyError(f"the {backend} int8 backend needs {' and '.join(packages)} ({missing[0]} is "
                                     f"missing): pip install 'tresnet[{extra}]'")
    return backend


def check_int8_backend(number_format: str, int8_backend: str | None) -> None:
    """:class:`ConfigError` for an int8 backend given with another number format or not one of
    :data:`INT8_BACKENDS`, and :class:`~tresnet.errors.MissingDependencyError` for int8 on a backend whose
    packages are missing."""
    if number_format != "int8":
        if int8_backend is not None:
            raise ConfigError(f"--int8-backend is for --number-format int8, not {number_format}")
        return
    resolve_int8_backend(int8_backend)


def check_calibration_options(number_format: str, calibration: str | os.PathLike | torch.Tensor | None,
                              calibration_images: int | None) -> None:
    """:class:`ConfigError` for int8 without calibration images, calibration options with another number format
    and a count below 1 (the same rule for validate, predict and export)."""
    if number_format != "int8" and (calibration is not None or calibration_images is not None):
        raise ConfigError(f"--calibration and --calibration-images are for --number-format int8, not "
                          f"{number_format}")
    if number_format == "int8" and calibration is None:
        raise ConfigError("--number-format int8 needs calibration images: --calibration DIR, a folder of images like "
                          "the ones the model will see (a few hundred training images, not the validation set)")
    if calibration_images is not None and calibration_images < 1:
        raise ConfigError(f"--calibration-images must be at least 1, got {calibration_images}")


def inference_model(model: nn.Module, number_format: str, device: torch.device | str, *,
                    calibration: str | os.PathLike | torch.Tensor | None = None,
                    calibration_images: int | None = None, img_size: int | None = None,
                    int8_backend: str | None = None) -> nn.Module:
    """What runs for ``number_format`` on ``device``: the model itself, or a deployment form to run without autocast.

    ``fp32``: ``model`` itself (run under the caller's ``--precision`` autocast); ``bf16``: a folded bfloat16 copy
    (fp32 images in, fp32 outputs out); ``int8``: a quantized copy calibrated on ``calibration`` (a folder of
    images, ``calibration_images`` of them, at ``img_size``), on the CPU, by ``int8_backend`` (``pt2e``,
    ``onnx``, or None / ``auto``: the faster one on this CPU, :func:`resolve_int8_backend`); it takes fp32 images
    and returns fp32 outputs, and its ``backend`` and ``backend_name`` say which ran, its ``calibrated_on`` on
    how many images. ``model`` is never changed. bf16 on a CPU that only emulates bfloat16 warns
    (:class:`tresnet.runtime.EmulatedBf16Warning`).

    Raises :class:`ConfigError` for an unknown number format or int8 backend, int8 off the CPU or without
    calibration images, and calibration options or an int8 backend given with another number format;
    :class:`~tresnet.errors.MissingDependencyError` for a backend whose packages are missing; the backend's
    errors for calibration images that cannot be read.
    """
    device = torch.device(device)
    check_number_format_options(number_format, device, calibration, calibration_images, int8_backend)
    if number_format == "bf16":
        warn_emulated_bf16(device, "--number-format bf16", "--number-format fp32 or int8")
        return fuse(model, dtype=torch.bfloat16).to(device)
    if number_format == "int8":
        return _int8_model(model, calibration, calibration_images, img_size, resolve_int8_backend(int8_backend))
    return model


def _int8_model(model: nn.Module, calibration, calibration_images: int | None, img_size: int | None,
                backend: str) -> nn.Module:
    """The int8 copy of ``model`` by ``backend`` (``pt2e`` or ``onnx``), calibrated on ``calibration``."""
    count = calibration_images or DEFAULT_CALIBRATION_IMAGES
    if backend == "onnx":
        return onnx_model(model, number_format="int8", img_size=img_size, calibration=calibration,
                          calibration_images=count)
    return quantize(model, calibration, img_size=img_size, calibration_images=count)


__all__ = ["INFERENCE_NUMBER_FORMATS", "INFERENCE_NUMBER_FORMAT_HELP", "INT8_BACKENDS", "INT8_BACKEND_PACKAGES",
           "check_calibration_options", "check_inference_number_format", "check_inference_precision",
           "check_int8_backend", "check_number_format_options", "choose_int8_backend", "cpu_has_amx",
           "inference_model", "installed_int8_backends", "refuse_number_format_as_precision", "resolve_int8_backend"]

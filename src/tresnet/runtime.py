"""Where and in what precision a model runs: one device rule and one precision vocabulary for every command.

A precision is always autocast (``--precision`` everywhere, ``precision=`` from Python); the number format of a
deployed model (the folded bfloat16 model, the int8 one, an exported file) is another word, ``--number-format``
(:mod:`tresnet.deploy.inference`, :mod:`tresnet.deploy.export`). Precisions:

- ``fp32``: no autocast;
- ``amp``: mixed precision with the device's usual half type: float16 on CUDA (training adds loss
  scaling), bfloat16 on the CPU;
- ``bf16``: bfloat16 autocast;
- ``fp16``: float16 autocast (on CUDA; the CPU runs it too, slowly).
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from tresnet.errors import ConfigError

PRECISIONS = ("fp32", "amp", "bf16", "fp16")
DEVICE_HELP = "cpu, cuda, cuda:N or auto (cuda if available; default)"
PRECISION_HELP = ("fp32 (default), amp (float16 on CUDA, bfloat16 on the CPU), bf16 or fp16 "
                  "(autocast to that type)")


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """The ``torch.device`` named by ``name``.

    ``"auto"`` is CUDA when available, else the CPU; ``"cuda"`` without an index is GPU ``local_rank``
    (the process's GPU under ``torchrun``). Raises :class:`ConfigError` for a name that is not ``cpu``,
    ``cuda`` or ``cuda:N``, for CUDA where there is none, and for a GPU index that does not exist.
    """
    if str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"bad --device {str(name)!r}: use {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"bad --device {str(name)!r}: use {DEVICE_HELP}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available here (torch {torch.__version__}); "
                              f"use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def check_precision(precision: str, device: torch.device | str | None = None) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS` and usable on ``device``.

    Raises :class:`ConfigError` for an unknown name, and for bfloat16 on a GPU without it.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"bad --precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device) if device is not None else None
    if (device is not None and device.type == "cuda" and autocast_dtype(precision, device) == torch.bfloat16
            and not torch.cuda.is_bf16_supported()):
        raise ConfigError(f"--precision {precision}: {torch.cuda.get_device_name(device)} does not support "
                          f"bfloat16; use --precision fp16")
    return precision


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast type of ``precision`` on ``device`` (None for fp32)."""
    check_precision(precision)
    if precision == "fp32":
        return None
    if precision == "amp":
        return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def needs_grad_scaler(precision: str, device: torch.device | str) -> bool:
    """Whether training in ``precision`` on ``device`` needs loss scaling (float16 on CUDA)."""
    return torch.device(device).type == "cuda" and autocast_dtype(precision, device) == torch.float16


class EmulatedBf16Warning(UserWarning):
    """bfloat16 asked for on a CPU that has no bfloat16 arithmetic (:func:`warn_if_bf16_is_emulated`)."""


def cpu_has_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic (AVX-512 BF16 or AMX, as oneDNN reports it); True where
    torch cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


_EMULATED_BF16 = ("this CPU has no bfloat16 arithmetic (AVX-512 BF16 or AMX): it is emulated, several times slower "
                 "than fp32 here")


def bf16_is_emulated(device: torch.device | str) -> bool:
    """Whether bfloat16 on ``device`` is emulated: a CPU without bfloat16 arithmetic (:func:`cpu_has_bf16`)."""
    return torch.device(device).type == "cpu" and not cpu_has_bf16()


def warn_emulated_bf16(device: torch.device | str, option: str, instead: str) -> None:
    """A warning when bfloat16, asked for by ``option`` (``--precision bf16``, ``--number-format bf16``), would be
    emulated on ``device`` (:func:`bf16_is_emulated`), several times slower than fp32 (9x for TResNet-M on an
    AVX2-only AMD EPYC); ``instead`` says what to use. The warning points at the caller's caller."""
    if bf16_is_emulated(device):
        warnings.warn(f"{option} computes in bfloat16, but {_EMULATED_BF16}; use {instead}", EmulatedBf16Warning,
                      stacklevel=4)


def warn_if_bf16_is_emulated(precision: str, device: torch.device | str) -> None:
    """:func:`warn_emulated_bf16` when the autocast ``precision`` computes in bfloat16 on ``device``."""
    if precision in PRECISIONS and autocast_dtype(precision, device) == torch.bfloat16:
        warn_emulated_bf16(device, f"--precision {precision}",
                           "--precision fp32 (or, in validate and predict, --number-format int8)")


def precision_name(dtype: torch.dtype | None) -> str:
    """The short name of an autocast type, for logs: ``fp32``, ``bf16`` or ``fp16``."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


__all__ = ["DEVICE_HELP", "EmulatedBf16Warning", "PRECISIONS", "PRECISION_HELP", "autocast",
           "autocast_dtype", "bf16_is_emulated", "check_precision", "cpu_has_bf16", "needs_grad_scaler",
           "precision_name", "resolve_device", "warn_emulated_bf16", "warn_if_bf16_is_emulated"]

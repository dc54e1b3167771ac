"""The compute ceiling of the cores a benchmark runs on, per number format, and a model's share of it.

The ceiling is **measured, not a datasheet figure**: the best rate of one large square matrix product in
that format, on the current thread count (``torch.mm`` in fp32 and bfloat16; ``torch._int_mm``, int8 x
int8 -> int32, for int8), in GFLOP/s (2 x multiply-accumulates per second). It is what the library's GEMM
kernels reach on these cores (with AMX or AVX-512 VNNI where the CPU has them), so it is the fair yardstick
of a network whose time is mostly convolutions run as GEMMs; the hardware's theoretical peak is higher. It is
a yardstick, not a bound: on a 2-core AMD EPYC (AVX2) TResNet-M's convolutions ran at 1.1-1.4x the fp32
product's rate.

A CPU without bfloat16 arithmetic (AVX-512 BF16 or AMX) has no bf16 ceiling, and one without int8 dot
products (VNNI or AMX) no int8 ceiling (None): there those products are emulated or take a generic path, far
below the fp32 rate and below what the networks' own kernels reach (on that EPYC: bf16 1.2, int8 1.3 GFLOP/s,
against 83 for a quantized TResNet-M), so a share of them would mean nothing. A product that would take more
than ``MAX_PRODUCT_S`` at full size is measured at ``PROBE_SIDE``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping

import torch

from tresnet.bench.machine import cpu_flag_set
from tresnet.errors import ConfigError
from tresnet.runtime import cpu_has_bf16

FORMATS = ("fp32", "bf16", "int8")
GEMM_SIDE = 2048  # large enough for the kernels' full rate, small enough to take well under a second
ROUNDS = 5
MIN_ROUND_S = 0.05  # each timed round repeats the product for at least this long
AUTO = "auto"
# Where a row's ceiling came from (its ``peak_source``).
PEAK_MEASURED = "measured: best rate of a large matrix product in the format on the run's threads"
PEAK_GIVEN = "given (--peak-gflops)"
PEAK_HINT = "give auto, one number of GFLOP/s for every format (e.g. 900) or fp32=X,bf16=Y,int8=Z"


PROBE_SIDE = 512  # a first product this size tells how long the full one would take
MAX_PRODUCT_S = 1.0  # a format slower than this at GEMM_SIDE is measured at PROBE_SIDE
# CPU flags of int8 dot-product instructions; without one of them, int8 has no fast matrix product.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def _operands(number_format: str, side: int, device: torch.device) -> Callable[[], torch.Tensor] | None:
    """The matrix product of ``number_format`` on two ``side`` x ``side`` matrices, or None where the format
    has no matrix product here (int8 without ``torch._int_mm``)."""
    generator = torch.Generator().manual_seed(0)
    if number_format == "int8":
        int_mm = getattr(torch, "_int_mm", None)
        if int_mm is None:
            return None
        a, b = (torch.randint(-64, 64, (side, side), dtype=torch.int8, generator=generator).to(device)
                for _ in range(2))
        return lambda: int_mm(a, b)
    dtype = torch.bfloat16 if number_format == "bf16" else torch.float32
    a, b = (torch.randn(side, side, generator=generator).to(device=device, dtype=dtype) for _ in range(2))
    return lambda: torch.mm(a, b)


def _lacks_fast_kernels(number_format: str, device: torch.device) -> bool:
    """Whether ``number_format`` has no fast matrix product on this CPU (see the module's note)."""
    if device.type != "cpu":
        return False
    if number_format == "bf16":
        return not cpu_has_bf16()
    if number_format == "int8":
        flags = cpu_flag_set()
        return flags is not None and not any(flag in flags for flag in INT8_DOT_FLAGS)
    return False


def _best_seconds(product: Callable[[], torch.Tensor], device: torch.device, rounds: int) -> float:
    """The fastest time of one ``product`` call: best of ``rounds`` rounds, each repeated for ``MIN_ROUND_S``."""
    def timed(calls: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            product()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / calls

    first = timed(1)  # also the warm-up: kernel choice, packing buffers
    calls = max(1, math.ceil(MIN_ROUND_S / max(first, 1e-9)))
    return min(timed(calls) for _ in range(rounds))


def gemm_gflop_per_s(number_format: str, *, side: int = GEMM_SIDE, rounds: int = ROUNDS,
                     device: torch.device | str = "cpu") -> float | None:
    """The measured GEMM ceiling of ``number_format`` (fp32, bf16 or int8) on the current thread count, in
    GFLOP/s; None where this torch has no matrix product in that format on ``device``, or the CPU only
    emulates it (see the module's note).

    Raises :class:`ConfigError` for another format.
    """
    if number_format not in FORMATS:
        raise ConfigError(f"bad number format {number_format!r}: choose one of {', '.join(FORMATS)}")
    device = torch.device(device)
    if _lacks_fast_kernels(number_format, device):
        return None
    try:
        probe_side = min(side, PROBE_SIDE)
        probe = _operands(number_format, probe_side, device)
        if probe is None:
            return None
        # a slow generic kernel would take minutes at full size: measure it at the probe's
        if _best_seconds(probe, device, 1) * (side / probe_side) ** 3 > MAX_PRODUCT_S:
            side, product = probe_side, probe
        else:
            product = _operands(number_format, side, device)
        seconds = _best_seconds(product, device, rounds)
    except (RuntimeError, NotImplementedError):  # the kernel is not built for this device or size
        return None
    return 2 * side ** 3 / seconds / 1e9


def estimate_peaks(formats: Iterable[str] = FORMATS, *, side: int = GEMM_SIDE, rounds: int = ROUNDS,
                   device: torch.device | str = "cpu") -> dict[str, float | None]:
    """:func:`gemm_gflop_per_s` of each of ``formats``: ``{"fp32": ..., "bf16": ..., "int8": ...}``."""
    return {fmt: gemm_gflop_per_s(fmt, side=side, rounds=rounds, device=device) for fmt in formats}


def _positive(number, given) -> float:
    """``number`` as a positive finite float; a one-line :class:`ConfigError` quoting ``given`` otherwise."""
    try:
        value = float(number)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"bad --peak-gflops {given!r}: {number!r} is not a positive number of GFLOP/s; "
                          f"{PEAK_HINT}")
    return value


def parse_peak_gflops(value: str | float | Mapping[str, float] | None) -> dict[str, float] | None:
    """The ceilings given by the user, per format: ``--peak-gflops`` as text, one number, or a mapping.

    ``"auto"`` gives ``{}`` (measure every format a row needs), one number that number for every format,
    ``"fp32=X,bf16=Y"`` those formats (the others are measured when needed); None stays None (not asked).
    Raises a one-line :class:`ConfigError` naming the bad part.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (int, float)):
        return dict.fromkeys(FORMATS, _positive(value, value))
    else:
        text = str(value).strip()
        if text.lower() == AUTO:
            return {}
        if "=" not in text:
            return dict.fromkeys(FORMATS, _positive(text, value))
        pairs = [part.partition("=")[::2] for part in text.split(",")]
    peaks: dict[str, float] = {}
    for name, number in pairs:
        name = str(name).strip().lower()
        if name not in FORMATS:
            raise ConfigError(f"bad --peak-gflops {value!r}: unknown number format {name!r} (choose among "
                              f"{', '.join(FORMATS)}); {PEAK_HINT}")
        if name in peaks:
            raise ConfigError(f"bad --peak-gflops {value!r}: {name} is given twice; {PEAK_HINT}")
        peaks[name] = _positive(number.strip() if isinstance(number, str) else number, value)
    return peaks


def precision_format(precision: str, device_type: str) -> str | None:
    """The number format a plain model's matrix products run in at ``precision`` (:mod:`tresnet.runtime`'s
    vocabulary): fp32, or bf16 for bf16 autocast (and ``amp`` on the CPU); None for float16."""
    if precision == "fp32":
        return "fp32"
    if precision == "bf16" or (precision == "amp" and device_type == "cpu"):
        return "bf16"
    return None


def achieved_gflop_per_s(gmacs: float | None, img_per_s: float | None) -> float | None:
    """GFLOP/s a model reaches: ``gmacs`` per image x 2 x ``img_per_s`` (None when either is unknown)."""
    if gmacs is None or img_per_s is None:
        return None
    return 2.0 * gmacs * img_per_s


def fraction_of_peak(achieved: float | None, peak: float | None) -> float | None:
    """``achieved / peak`` (None when either is unknown or the peak is not positive)."""
    if achieved is None or peak is None or not peak > 0:
        return None
    return achieved / peak


__all__ = ["FORMATS", "PEAK_GIVEN", "PEAK_MEASURED", "achieved_gflop_per_s", "estimate_peaks", "fraction_of_peak", "gemm_gflop_per_s",
           "parse_peak_gflops", "precision_format"]

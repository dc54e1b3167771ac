"""The compute ceiling of the cores a benchmark runs on, per number format, and a model's share of it.

The ceiling is **measured, not a datasheet figure**: the best rate, on the current thread count and by the run's
clock, of the probes in that format, in GFLOP/s (2 x multiply-accumulates per second). The probes are one large
square matrix product (``torch.mm`` in fp32 and bfloat16; ``torch._int_mm``, int8 x int8 -> int32, for int8) and,
in fp32 and bfloat16, one channels-last 3x3 convolution (oneDNN's kernels, which the networks' convolutions run
on; ``torch.mm`` may take another library's, slower on some CPUs: on a 2-core AMD EPYC with AVX2 the convolution
ran 10-40% faster than the matrix product). The datasheet peak (cores x clock x FMA width) is no ceiling on a
machine that runs above the clock it reports, as virtual machines do (that EPYC's convolution probe reached 1.3x
the peak at its reported clock), so it is not used. The probes are measured before and after the benchmark's
timed turns, and the better rate is kept.

A path that still runs faster than the probes (the benchmark compares every row's rate, :func:`raise_to_fastest`)
sets the ceiling of its format itself, and the row says so (``peak_source``: :data:`PEAK_FASTEST`, with the
probes' rate beside it): the ceiling is then the fastest rate measured on these cores, and no path reads above
100%.

A CPU without bfloat16 arithmetic (AVX-512 BF16 or AMX) has no bf16 ceiling, and one without int8 dot
products (VNNI or AMX) no int8 ceiling (None): there those products are emulated or take a generic path, far
below the fp32 rate and below what the networks' own kernels reach (on that EPYC: bf16 1.2, int8 1.3 GFLOP/s,
against 83 for a quantized TResNet-M), so a share of them would mean nothing. A product that would take more
than ``MAX_PRODUCT_S`` at full size is measured at ``PROBE_SIDE``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from tresnet.bench.machine import cpu_flag_set
from tresnet.bench.rows import BenchRow
from tresnet.bench.timing import TIMERS, time_iterations
from tresnet.errors import ConfigError
from tresnet.runtime import cpu_has_bf16

FORMATS = ("fp32", "bf16", "int8")
GEMM_SIDE = 2048  # large enough for the kernels' full rate, small enough to take well under a second
ROUNDS = 5
MIN_ROUND_S = 0.05  # each timed round repeats the product for at least this long
AUTO = "auto"
# Where a row's ceiling came from (its ``peak_source``).
PEAK_MEASURED = ("measured: best rate of a large matrix product or convolution in the format on the run's "
                 "threads")
PEAK_FASTEST = "measured: the fastest path of the run in the format, faster than the probes"
PEAK_GIVEN = "given (--peak-gflops)"
# The convolution probe: batch, channels in and out, side; 3x3, channels-last (oneDNN's layout for the networks).
CONV_PROBE = (4, 128, 56)
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


def _conv_probe(number_format: str, device: torch.device) -> tuple[Callable[[], torch.Tensor], float] | None:
    """The convolution probe of ``number_format`` (a 3x3 conv, channels-last, :data:`CONV_PROBE`) and its FLOPs;
    None for int8 (no plain int8 convolution op)."""
    if number_format == "int8":
        return None
    batch, channels, side = CONV_PROBE
    dtype = torch.bfloat16 if number_format == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(channels, channels, 3, 3, generator=generator).to(device=device, dtype=dtype)
    images = torch.randn(batch, channels, side, side, generator=generator).to(device=device, dtype=dtype)
    weight, images = (t.contiguous(memory_format=torch.channels_last) for t in (weight, images))

    def conv() -> torch.Tensor:
        with torch.no_grad():
            return torch.nn.functional.conv2d(images, weight, padding=1)

    return conv, 2.0 * batch * channels * channels * 9 * side * side


def _best_seconds(product: Callable[[], torch.Tensor], device: torch.device, rounds: int,
                  timer: str = "wall") -> float:
    """The fastest time of one ``product`` call by ``timer`` (wall or cpu, as the benchmark's turns are timed):
    best of ``rounds`` rounds, each repeated for ``MIN_ROUND_S``."""
    first = time_iterations(product, 1, device, timer)  # also the warm-up: kernel choice, packing buffers
    calls = max(1, math.ceil(MIN_ROUND_S / max(first, 1e-9)))
    return min(time_iterations(product, calls, device, timer) for _ in range(rounds))


def _check_format(number_format: str, timer: str) -> None:
    if number_format not in FORMATS:
        raise ConfigError(f"bad number format {number_format!r}: choose one of {', '.join(FORMATS)}")
    if timer not in TIMERS:
        raise ConfigError(f"bad timer {timer!r}: choose one of {', '.join(TIMERS)}")


def gemm_gflop_per_s(number_format: str, *, side: int = GEMM_SIDE, rounds: int = ROUNDS,
                     device: torch.device | str = "cpu", timer: str = "wall") -> float | None:
    """The measured GEMM rate of ``number_format`` (fp32, bf16 or int8) on the current thread count, by ``timer``
    (``wall`` or ``cpu``, as the benchmark's), in GFLOP/s; None where this torch has no matrix product in that
    format on ``device``, or the CPU only emulates it (see the module's note).

    Raises :class:`ConfigError` for another format or timer.
    """
    _check_format(number_format, timer)
    device = torch.device(device)
    if _lacks_fast_kernels(number_format, device):
        return None
    try:
        probe_side = min(side, PROBE_SIDE)
        probe = _operands(number_format, probe_side, device)
        if probe is None:
            return None
        # a slow generic kernel would take minutes at full size: measure it at the probe's
        product: Callable[[], torch.Tensor] | None = probe
        if _best_seconds(probe, device, 1, timer) * (side / probe_side) ** 3 > MAX_PRODUCT_S:
            side = probe_side
        else:
            product = _operands(number_format, side, device)
        if product is None:
            return None
        seconds = _best_seconds(product, device, rounds, timer)
    except (RuntimeError, NotImplementedError):  # the kernel is not built for this device or size
        return None
    return 2 * side ** 3 / seconds / 1e9


def conv_gflop_per_s(number_format: str, *, rounds: int = ROUNDS, device: torch.device | str = "cpu",
                     timer: str = "wall") -> float | None:
    """The measured rate of the convolution probe (:data:`CONV_PROBE`) in ``number_format`` on the current
    thread count, by ``timer``, in GFLOP/s; None for int8 and where the format is emulated or not built.

    Raises :class:`ConfigError` for another format or timer.
    """
    _check_format(number_format, timer)
    device = torch.device(device)
    probe = None if _lacks_fast_kernels(number_format, device) else _conv_probe(number_format, device)
    if probe is None:
        return None
    conv, flop = probe
    try:
        return flop / _best_seconds(conv, device, rounds, timer) / 1e9
    except (RuntimeError, NotImplementedError):
        return None


def ceiling_gflop_per_s(number_format: str, *, side: int = GEMM_SIDE, rounds: int = ROUNDS,
                        device: torch.device | str = "cpu", timer: str = "wall") -> float | None:
    """The compute ceiling of ``number_format``: the better of :func:`gemm_gflop_per_s` and
    :func:`conv_gflop_per_s` (None when neither runs). Raises :class:`ConfigError` for another format or timer."""
    rates = [rate(number_format, rounds=rounds, device=device, timer=timer, **extra)
             for rate, extra in ((gemm_gflop_per_s, {"side": side}), (conv_gflop_per_s, {}))]
    found = [r for r in rates if r is not None]
    return max(found) if found else None


def estimate_peaks(formats: Iterable[str] = FORMATS, *, side: int = GEMM_SIDE, rounds: int = ROUNDS,
                   device: torch.device | str = "cpu", timer: str = "wall") -> dict[str, float | None]:
    """:func:`ceiling_gflop_per_s` of each of ``formats``: ``{"fp32": ..., "bf16": ..., "int8": ...}``."""
    return {fmt: ceiling_gflop_per_s(fmt, side=side, rounds=rounds, device=device, timer=timer) for fmt in formats}


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
    pairs: list[tuple[str, Any]]
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
        pairs = [(name, number) for name, _, number in (part.partition("=") for part in text.split(","))]
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


def raise_to_fastest(ceiling: float | None, rates: Iterable[float | None]) -> float | None:
    """The ceiling a run reports for a measured ``ceiling`` and its rows' ``rates`` in that format: the faster of
    the probes and the fastest row (None when the format has no ceiling here), so that no row reads above 100%."""
    fastest = max((r for r in rates if r is not None), default=None)
    if ceiling is None or fastest is None:
        return ceiling
    return max(ceiling, fastest)


def record_compute(rows: Iterable[BenchRow], ceilings: Mapping[str, tuple[float | None, str]]) -> None:
    """Set each row's inference GFLOP/s (its plain model's MACs x 2 x images/s) and its fraction of the ceiling of
    its number format, from ``ceilings`` (``format -> (GFLOP/s, source)``). A measured ceiling that a row outran
    becomes the fastest row's rate (:func:`raise_to_fastest`, source :data:`PEAK_FASTEST`), the probes' rate kept
    in ``probe_gflop_per_s``; a given one (:data:`PEAK_GIVEN`) is kept as it is."""
    rows = list(rows)
    for row in rows:
        if row.number_format is not None:
            row.infer_gflop_per_s = achieved_gflop_per_s(row.gmacs, row.infer.img_per_s)
    for fmt, (probes, source) in ceilings.items():
        own = [row for row in rows if row.number_format == fmt]
        ceiling = probes
        if source != PEAK_GIVEN:
            ceiling = raise_to_fastest(probes, [row.infer_gflop_per_s for row in own])
            source = PEAK_FASTEST if ceiling != probes else source
        for row in own:
            row.peak_gflop_per_s, row.peak_source = ceiling, source
            row.probe_gflop_per_s = None if source == PEAK_GIVEN else probes
            row.infer_peak_fraction = fraction_of_peak(row.infer_gflop_per_s, ceiling)


__all__ = ["FORMATS", "PEAK_FASTEST", "PEAK_GIVEN", "PEAK_MEASURED", "achieved_gflop_per_s", "ceiling_gflop_per_s",
           "conv_gflop_per_s", "estimate_peaks", "fraction_of_peak", "gemm_gflop_per_s", "parse_peak_gflops",
           "precision_format", "raise_to_fastest", "record_compute"]

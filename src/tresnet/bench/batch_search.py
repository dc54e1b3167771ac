"""The largest batch that fits, and the peak-memory measurements the search runs on.

:func:`largest_batch` only needs a function ``batch -> peak bytes`` (``math.inf`` when the batch
cannot run) and a budget, so the same search serves CUDA (the caching allocator's peak, out-of-memory
caught and memory freed between tries) and the CPU (the peak resident memory of a fresh process,
:func:`probe_peak_rss`), and tests (a fake allocator).
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from tresnet.errors import ConfigError, TResNetError

GIB = 1024 ** 3
# The images of a CPU probe's first training step, which only creates the optimizer's state (see probe.py).
FIRST_STEP_IMAGES = 2


@dataclass
class BatchSearchResult:
    """``max_batch``: the largest batch whose measured peak is within ``budget_bytes``; ``probes``:
    every ``(batch, peak bytes)`` tried, in order (``inf``: it did not run)."""

    max_batch: int
    budget_bytes: float
    probes: list[tuple[int, float]] = field(default_factory=list)


def projected_batch(first: tuple[int, float], second: tuple[int, float], budget: float) -> int | None:
    """The largest batch on the line through two ``(batch, peak bytes)`` points whose peak is within ``budget``
    (None when the line does not rise): the search's next try, and an estimate where a search would take too long."""
    (batch, value), (other, other_value) = first, second
    slope = (other_value - value) / (other - batch)
    if slope <= 0:
        return None
    return batch + int(math.floor((budget - value) / slope))


def _secant_guess(points: dict[int, float], lo: int, hi: int | None, budget: float) -> int | None:
    """Where the line through ``lo``'s peak and another measured one reaches the budget: ``hi``'s, else the nearest
    smaller batch's whose line rises (peaks a few images apart can be out of order by the measurement's noise, a
    longer base is not); None if no such line can be drawn."""
    others = [hi] if hi is not None and math.isfinite(points[hi]) else []
    others += sorted((b for b in points if b < lo and math.isfinite(points[b])), reverse=True)
    for other in others:
        guess = projected_batch((lo, points[lo]), (other, points[other]), budget)
        if guess is not None:
            return guess
    return None


def largest_batch(measure: Callable[[int], float], budget_bytes: float, *, max_batch: int = 4096,
                  min_batch: int = 1, max_probes: int = 40,
                  known: Mapping[int, float] | None = None) -> BatchSearchResult:
    """The largest batch ``b`` in ``[min_batch, max_batch]`` with ``measure(b) <= budget_bytes``.

    Assumes the peak grows with the batch. Memory is close to linear in the batch, so each next try is
    where the line through two measured points meets the budget (a secant step), falling back to
    doubling, and to bisection when a step does not halve the bracket; a linear peak is found in about
    four measurements. Stops after ``max_probes`` with the largest batch known to fit.

    ``known``: peaks already measured (``batch -> bytes``), which the search starts from instead of measuring
    ``min_batch`` and doubling; they are listed first among the probes. Where a slow probe costs minutes, two
    small batches measured beforehand let the first try land near the limit.

    Raises :class:`ConfigError` when not even ``min_batch`` fits.
    """
    if not 1 <= min_batch <= max_batch:
        raise ConfigError(f"the batch search needs 1 <= min batch <= max batch, got {min_batch} and {max_batch}")
    result = BatchSearchResult(max_batch=0, budget_bytes=budget_bytes)
    points: dict[int, float] = {}

    def fits(batch: int) -> bool:
        value = float(measure(batch))
        points[batch] = value
        result.probes.append((batch, value))
        return value <= budget_bytes

    for batch, value in sorted((known or {}).items()):
        points[batch] = float(value)
        result.probes.append((batch, float(value)))
    fitting = [b for b, v in points.items() if min_batch <= b <= max_batch and v <= budget_bytes]
    if not fitting and not fits(min_batch):
        needed = points[min_batch]
        what = "does not run (out of memory)" if math.isinf(needed) else f"needs {needed / GIB:.2f} GiB"
        raise ConfigError(f"a batch of {min_batch} {what}, over the memory budget of {budget_bytes / GIB:.2f} GiB")
    # lo: largest batch known to fit; hi: smallest batch known not to
    lo = max(fitting, default=min_batch)
    hi = min((b for b, v in points.items() if b > lo and v > budget_bytes), default=None)
    bisect = False
    measured_before = len(known or {})
    while len(result.probes) - measured_before < max_probes:
        upper = max_batch if hi is None else hi - 1
        if lo >= upper:
            break
        if bisect and hi is not None:
            batch = (lo + hi) // 2
        else:
            guess = _secant_guess(points, lo, hi, budget_bytes) if len(points) >= 2 else None
            batch = 2 * lo if guess is None else guess
            batch = min(max(batch, lo + 1), upper)
        width = math.inf if hi is None else hi - lo
        if fits(batch):
            lo = batch
        else:
            hi = batch
        new_width = math.inf if hi is None else hi - lo
        # Secant steps can creep up on the limit from one side; then halve the bracket instead.
        bisect = not bisect and hi is not None and new_width > width / 2
    result.max_batch = lo
    return result


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error (CUDA's, or the CPU allocator's RuntimeError)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def free_device_memory(device: torch.device) -> None:
    """Collect garbage and return cached blocks to the device, so the next try starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def cuda_peak_measure(make_step: Callable[[int], Callable[[], None]], device: torch.device,
                      steps: int = 2) -> Callable[[int], float]:
    """``batch -> peak bytes allocated`` over ``steps`` calls of ``make_step(batch)`` on ``device``,
    ``math.inf`` on out-of-memory (the memory is freed before returning)."""

    def measure(batch: int) -> float:
        free_device_memory(device)
        torch.cuda.reset_peak_memory_stats(device)
        oom = False
        step: Callable[[], None] | None = None
        try:
            step = make_step(batch)
            for _ in range(steps):
                step()
            torch.cuda.synchronize(device)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            oom = True
        step = None  # noqa: F841 - drop the inputs and optimizer state before freeing
        peak = torch.cuda.max_memory_allocated(device)
        free_device_memory(device)
        return math.inf if oom else float(peak)

    return measure


def probe_peak_rss(label: str, batch_size: int, *, modes: tuple[str, ...] = ("train",), img_size: int,
                   precision: str = "fp32", channels_last: bool = False, threads: int | None = None,
                   steps: int = 2, first_step_images: int | None = FIRST_STEP_IMAGES, timeout_s: float = 900.0) -> dict:
    """Peak resident memory of a fresh CPU process that builds ``label`` and runs, at ``batch_size``,
    one inference batch and/or ``steps`` training steps (per ``modes``; inference first). The first training
    step, which only creates the optimizer's state, runs on ``first_step_images`` images of the batch (None:
    all of them; see :mod:`tresnet.bench.probe`).

    Returns ``{"baseline_rss_bytes", "infer_peak_rss_bytes"?, "train_peak_rss_bytes"?}``: the first is
    the process after importing torch and this package; each peak is of the whole process so far.
    A process killed for memory gives ``math.inf`` peaks. Raises :class:`TResNetError` when the probe
    fails otherwise or runs past ``timeout_s``.
    """
    request = dict(model=label, batch_size=batch_size, modes=list(modes), img_size=img_size,
                   precision=precision, channels_last=channels_last, threads=threads, steps=steps,
                   first_step_images=first_step_images)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        done = subprocess.run([sys.executable, "-m", "tresnet.bench.probe", json.dumps(request)],
                              capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise TResNetError(f"peak-memory probe of {label} at batch {batch_size} took over {timeout_s:.0f} s") \
            from None
    if done.returncode in (-9, 137):  # killed, almost surely by the kernel's out-of-memory killer
        return {"baseline_rss_bytes": math.nan, **{f"{m}_peak_rss_bytes": math.inf for m in modes}}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    reply = json.loads(lines[-1]) if lines else {}
    if done.returncode != 0 or "error" in reply:
        tail = reply.get("error") or (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TResNetError(f"peak-memory probe of {label} at batch {batch_size} failed: {tail}")
    return reply


def cpu_peak_measure(label: str, *, mode: str, img_size: int, precision: str = "fp32",
                     channels_last: bool = False, threads: int | None = None,
                     timeout_s: float = 900.0) -> Callable[[int], float]:
    """``batch -> peak resident bytes`` of a fresh process running ``mode`` (see :func:`probe_peak_rss`)."""

    def measure(batch: int) -> float:
        reply = probe_peak_rss(label, batch, modes=(mode,), img_size=img_size, precision=precision,
                               channels_last=channels_last, threads=threads, timeout_s=timeout_s)
        return float(reply[f"{mode}_peak_rss_bytes"])

    return measure

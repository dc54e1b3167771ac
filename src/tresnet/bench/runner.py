"""Run a benchmark: build every model, find its batch, then time all of them in turns.

Order of work: check every argument and model name before anything is built; build each model and
measure what does not depend on the clock (parameters, GMACs, bytes kept for backward, the largest
batch, peak memory, a form's difference from the plain model); then, one mode after the other
(inference, then training), warm up and time the models round-robin, one turn each per repetition, so
that a shared machine's drift hits every model alike, in a new (seeded) order each repetition, so that
no model always follows the same one (a turn right after a large step runs slower). On CUDA, models not in their turn wait in host memory, so each runs with the device to
itself, as when its largest batch was searched. Inference-only forms (``NAME:fused``,
``NAME:onnx``) are timed in inference only when both modes are asked for. Without ``img_size``, a timm
model that is the same network as one of ours in the run (``timm:gernet_s`` beside ``genet_light``) is
measured at our model's side (the row's ``img_size_from`` says so), so that the pair compares. A CPU
run with a deployment form (or any run given ``peak_gflops``) also measures the compute ceiling of the
number formats its rows run in (:mod:`tresnet.bench.ceiling`), before and after timing (the better of the two),
and records each row's achieved GFLOP/s and its fraction of that ceiling.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import cast

import torch

from tresnet.bench.batch_search import (
    GIB,
    BatchSearchResult,
    cpu_peak_measure,
    cuda_peak_measure,
    free_device_memory,
    is_out_of_memory,
    largest_batch,
    probe_peak_rss,
)
from tresnet.bench.ceiling import (
    PEAK_GIVEN,
    PEAK_MEASURED,
    estimate_peaks,
    parse_peak_gflops,
    precision_format,
    record_compute,
)
from tresnet.bench.forms import DEPLOYMENT_FORMS, NUMBER_FORMATS, get_form
from tresnet.bench.machine import busy_machine_message, cpu_flags, describe_device, load_average, versions
from tresnet.bench.memory import MIB, saved_memory
from tresnet.bench.published import published_top1
from tresnet.bench.rows import BenchRow, ModeResult
from tresnet.bench.specs import MODES, BuildOptions, ModelSpec, parse_model_list, same_network_sizes
from tresnet.bench.targets import BenchTarget, build_target, check_spec, count_gmacs, count_params_m
from tresnet.bench.timing import (
    check_timer,
    logits_of,
    make_step,
    summarize,
    synthetic_images,
    time_iterations,
)
from tresnet.deploy.inference import refuse_number_format_as_precision
from tresnet.errors import ConfigError, TResNetError
from tresnet.runtime import autocast, check_precision, resolve_device

RUN_MODES = {"infer": ("infer",), "train": ("train",), "both": ("infer", "train")}
DEFAULT_BATCH = {"cpu": 8, "cuda": 128}
DEFAULT_ITERS = {"cpu": 1, "cuda": 10}
AUTO = "auto"
DIFF_CHUNK = 32  # images per forward when comparing a form with its plain model
CPU_PEAK_METHOD = "peak resident memory of a process running the model (CPU)"
CUDA_PEAK_METHOD = "torch.cuda.max_memory_allocated during the timed steps"

# (target, mode, batch) -> peak bytes; replaces the real measurement (tests use a fake allocator).
PeakMeasure = Callable[[BenchTarget, str, int], float]

__all__ = ["BenchConfig", "BenchRow", "BusyMachineWarning", "describe_device", "plan_config", "run_benchmark"]


class BusyMachineWarning(UserWarning):
    """A wall-clock CPU run started while other work held the cores its threads need
    (:func:`~tresnet.bench.machine.busy_machine_message`)."""


@dataclass
class BenchConfig:
    """Everything a benchmark run depends on; the fields mirror ``tresnet benchmark``'s options.

    ``batch_size``: an int, ``"auto"`` (90% of the largest batch that fits; on the CPU within
    ``memory_budget_gib``) or None (8 on the CPU, 128 on CUDA). ``img_size`` None: each model's own, except
    that a timm model that is the same network as one of ours in the run takes ours.
    ``iters`` None: 1 on the CPU, 10 on CUDA (timed iterations per turn). ``device`` may be ``"auto"``.
    ``precision``: fp32, amp, bf16 or fp16 (:mod:`tresnet.runtime`). ``timer``: ``"wall"`` (elapsed
    time) or, on the CPU, ``"cpu"`` (CPU time of the process: robust to other work on a shared
    machine; use it with ``threads=1``). ``peak_gflops``: the compute ceiling per number format, as
    ``--peak-gflops`` takes it (``"auto"``, one number, ``"fp32=X,bf16=Y,int8=Z"`` or a mapping); when given,
    every row records its GFLOP/s against it (formats not given are measured); None: measured for a CPU
    run with a deployment form only.
    """

    models: str | Sequence[str] = "tresnet_m,timm:tresnet_m,resnet50"
    mode: str = "both"
    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    batch_size: int | str | None = None
    memory_budget_gib: float | None = None
    max_batch: int = 4096
    auto_fraction: float = 0.9
    img_size: int | None = None
    warmup: int = 2
    repeats: int = 10
    iters: int | None = None
    threads: int | None = None
    timer: str = "wall"
    peak_memory: bool = True
    seed: int = 0
    peak_gflops: str | float | Mapping[str, float] | None = None


@dataclass(frozen=True)
class _Plan:
    device: torch.device
    modes: tuple[str, ...]
    batch_size: int | None  # None: auto
    iters: int
    budget_bytes: float | None
    peaks: dict[str, float] | None  # the ceilings given per format ({} for auto); None when not asked


def _positive_int(value, what: str, minimum: int = 1) -> int:
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{what} must be at least {minimum}, got {number}")
    return number


def _plan_batch(config: BenchConfig, device: torch.device) -> int | None:
    """The fixed batch of ``config`` on ``device``, or None for ``auto``."""
    batch = config.batch_size
    if batch is None:
        return DEFAULT_BATCH[device.type]
    if isinstance(batch, str) and batch.strip().lower() == AUTO:
        return None
    try:
        batch = int(batch)
    except (TypeError, ValueError):
        raise ConfigError(f"bad --batch-size {config.batch_size!r}: a positive integer or 'auto'") from None
    if batch < 1:
        raise ConfigError(f"bad --batch-size {batch}: a positive integer or 'auto'")
    return batch


def _plan_budget(config: BenchConfig) -> float | None:
    """``--memory-budget`` in bytes (None when not given)."""
    if config.memory_budget_gib is None:
        return None
    if not config.memory_budget_gib > 0:
        raise ConfigError(f"bad --memory-budget {config.memory_budget_gib}: a positive number of GiB")
    return float(config.memory_budget_gib) * GIB


def _check_precision(precision: str, device: torch.device) -> None:
    """The run's autocast; a number format given as a precision (int8) names the forms that run in it."""
    forms = ", ".join(f"NAME:{form}" for form, own in NUMBER_FORMATS.items() if own == precision)
    refuse_number_format_as_precision(precision, f"benchmark {forms} (with --precision fp32)")
    check_precision(precision, device)


def plan_config(config: BenchConfig) -> _Plan:
    """Check every option of ``config``; raise :class:`ConfigError` naming the first bad one."""
    if config.mode not in RUN_MODES:
        raise ConfigError(f"bad --mode {config.mode!r}: choose infer, train or both")
    device = resolve_device(config.device)
    _check_precision(config.precision, device)
    check_timer(config.timer, device)
    batch = _plan_batch(config, device)
    budget = _plan_budget(config)
    if batch is None and budget is None and device.type == "cpu":
        raise ConfigError("--batch-size auto on the CPU needs --memory-budget GiB: the memory a training "
                          "process may use (e.g. --memory-budget 8)")
    if not 0 < config.auto_fraction <= 1:
        raise ConfigError(f"the auto batch fraction must be in (0, 1], got {config.auto_fraction}")
    _positive_int(config.max_batch, "--max-batch")
    if config.img_size is not None:
        _positive_int(config.img_size, "--img-size", 8)
    _positive_int(config.warmup, "--warmup", 0)
    _positive_int(config.repeats, "--repeats")
    iters = _positive_int(config.iters, "--iters") if config.iters is not None else DEFAULT_ITERS[device.type]
    if config.threads is not None:
        _positive_int(config.threads, "--threads")
    return _Plan(device=device, modes=RUN_MODES[config.mode], batch_size=batch, iters=iters, budget_bytes=budget,
                 peaks=parse_peak_gflops(config.peak_gflops))


def _mib(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value / MIB


class _Progress:
    """A tqdm bar on stderr when asked, otherwise nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="benchmark", unit="step", dynamic_ncols=True, leave=False)

    def stage(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(text, refresh=True)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _move_target(target: BenchTarget, steps: list, device: torch.device) -> None:
    if target.module is not None:
        target.module.to(device)
    for step in steps:
        step.move(device)


# --- before anything is built -------------------------------------------------------------------------

def _modes_of(spec: ModelSpec, plan: _Plan) -> tuple[str, ...]:
    """The asked modes ``spec`` can run: an inference-only form is timed in inference only."""
    able = MODES if spec.form is None else tuple(get_form(spec.form).modes)
    modes = tuple(m for m in plan.modes if m in able)
    if not modes:
        raise ConfigError(f"{spec.label} cannot run {'/'.join(plan.modes)} (an inference-only form); "
                          f"use --mode infer or both")
    return modes


def _checked_specs(config: BenchConfig, plan: _Plan, options: BuildOptions) -> list[tuple[ModelSpec, tuple]]:
    """Every model of ``config`` with the modes it will be timed in; raises before anything is built."""
    specs = parse_model_list(config.models)
    for spec in specs:
        check_spec(spec, options)
    return [(spec, _modes_of(spec, plan)) for spec in specs]


@contextlib.contextmanager
def _torch_settings(config: BenchConfig, device: torch.device) -> Iterator[None]:
    """Threads, seed and cuDNN autotuning for the run; the thread count and cuDNN flag restored after."""
    threads_before, cudnn_benchmark_before = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if config.threads:
        torch.set_num_threads(int(config.threads))
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.backends.cudnn.benchmark = cudnn_benchmark_before


# --- what does not depend on the clock ----------------------------------------------------------------

def _new_row(target: BenchTarget, config: BenchConfig, plan: _Plan) -> BenchRow:
    """The row of ``target``: identity, settings, versions and published top-1; nothing measured yet."""
    spec = target.spec
    # a run of ours, or a detector on the backbone: not the paper's classifier
    published = published_top1(spec.name) if spec.checkpoint is None and target.task is None else None
    return BenchRow(
        model=spec.label, name=spec.name, impl=spec.impl, form=spec.form, device=str(plan.device),
        device_name=describe_device(plan.device), precision=config.precision,
        channels_last=bool(config.channels_last), compiled=target.compiled, img_size=target.img_size,
        top1=published.top1 if published else None, top1_img_size=published.img_size if published else None,
        top1_source=published.source if published else None, **versions(), warmup=config.warmup,
        repeats=config.repeats, iters=plan.iters, threads=torch.get_num_threads(), timer=config.timer,
        cpu_flags=cpu_flags() if plan.device.type == "cpu" else None)


def _count_costs(target: BenchTarget, row: BenchRow, config: BenchConfig, plan: _Plan) -> None:
    """Parameters, GMACs and (for trainable models) bytes kept for backward, per image and per step.

    A derived form's GMACs are its plain model's: it computes the same function, and fused kernels
    escape the counter.
    """
    module = target.module
    if target.reference is not None:  # on the host until compared with
        row.gmacs = count_gmacs(target.reference, target.img_size)
    elif module is not None:
        row.gmacs = count_gmacs(module, target.img_size, device=plan.device, channels_last=config.channels_last)
    if module is None:
        return
    row.params_m = count_params_m(module)
    if "train" in target.modes and target.task is None:  # a detector trains on targets: no bare forward to probe
        saved = saved_memory(module, target.img_size, precision=config.precision, device=plan.device,
                             channels_last=config.channels_last)
        row.saved_mib_per_img = saved.bytes_per_image / MIB
        row.saved_constant_mib = saved.constant_bytes / MIB


def _peak_measure_for(target: BenchTarget, mode: str, config: BenchConfig, plan: _Plan,
                      peak_measure: PeakMeasure | None) -> Callable[[int], float]:
    """``batch -> peak bytes`` of ``target`` in ``mode``: the test's fake, CUDA's allocator or a CPU process."""
    if peak_measure is not None:
        return lambda batch: peak_measure(target, mode, batch)
    if plan.device.type == "cuda":
        return cuda_peak_measure(
            lambda batch: make_step(target, mode, batch, device=plan.device, precision=config.precision,
                                    channels_last=config.channels_last, seed=config.seed), plan.device)
    if target.peak_memory_note is not None:
        raise ConfigError(f"--batch-size auto needs the peak memory of {target.label}, which is "
                          f"{target.peak_memory_note}; give --batch-size N")
    return cpu_peak_measure(target.label, mode=mode, img_size=target.img_size, precision=config.precision,
                            channels_last=config.channels_last, threads=config.threads)


def _search_batch(target: BenchTarget, modes: tuple[str, ...], config: BenchConfig, plan: _Plan,
                  peak_measure: PeakMeasure | None) -> tuple[str, BatchSearchResult]:
    """The largest batch of ``target`` within the budget, in training when it is timed, else in inference."""
    mode = "train" if "train" in modes else "infer"
    measure = _peak_measure_for(target, mode, config, plan, peak_measure)
    budget = plan.budget_bytes
    if budget is None:  # CUDA without a budget: the whole device, out-of-memory is the real limit
        budget = float(torch.cuda.get_device_properties(plan.device).total_memory)
    try:
        # Training starts at 2: BatchNorm needs more than one value per channel (e.g. after pooling).
        min_batch = min(2 if mode == "train" else 1, config.max_batch)
        result = largest_batch(measure, budget, max_batch=config.max_batch, min_batch=min_batch)
    except ConfigError as error:
        raise ConfigError(f"{target.label} ({mode}, {target.img_size}px): {error}") from None
    return mode, result


def _choose_batch(target: BenchTarget, row: BenchRow, modes: tuple[str, ...], config: BenchConfig, plan: _Plan,
                  peak_measure: PeakMeasure | None) -> int:
    """The batch every mode of ``target`` is timed at (searched with ``auto``); recorded in ``row``."""
    if plan.batch_size is None:
        search_mode, result = _search_batch(target, modes, config, plan, peak_measure)
        batch = max(1, int(result.max_batch * config.auto_fraction))
        row.mode(search_mode).max_batch = result.max_batch
        row.memory_budget_gib = result.budget_bytes / GIB
        row.batch_search_probes = [[b, _mib(v)] for b, v in result.probes]
    else:
        batch = plan.batch_size
        row.memory_budget_gib = None if plan.budget_bytes is None else plan.budget_bytes / GIB
    for mode in modes:
        row.mode(mode).batch_size = batch
    return batch


def _cpu_peaks(target: BenchTarget, modes: tuple[str, ...], config: BenchConfig, batch: int,
               peak_measure: PeakMeasure | None) -> dict[str, float | None]:
    """Peak bytes per mode, and under ``"runtime"`` the process's resident size before the model."""
    if peak_measure is not None:
        return {mode: peak_measure(target, mode, batch) for mode in modes}
    try:
        reply = probe_peak_rss(target.label, batch, modes=modes, img_size=target.img_size,
                               precision=config.precision, channels_last=config.channels_last,
                               threads=config.threads)
    except TResNetError as error:
        warnings.warn(f"peak memory of {target.label} not measured: {error}", stacklevel=4)
        return {mode: None for mode in modes}
    peaks = {mode: reply.get(f"{mode}_peak_rss_bytes") for mode in modes}
    return {**peaks, "runtime": reply.get("baseline_rss_bytes")}


def _record_cpu_peaks(target: BenchTarget, row: BenchRow, modes: tuple[str, ...], batch: int, config: BenchConfig,
                      plan: _Plan, peak_measure: PeakMeasure | None) -> None:
    """Peak memory per mode on the CPU; :class:`ConfigError` when a fixed batch needs more than the budget."""
    if target.peak_memory_note is not None and peak_measure is None:
        row.peak_mem_method = target.peak_memory_note
        return
    peaks = _cpu_peaks(target, modes, config, batch, peak_measure)
    row.peak_mem_runtime_mib = _mib(peaks.pop("runtime", None))
    row.peak_mem_method = CPU_PEAK_METHOD
    for mode, value in peaks.items():
        row.mode(mode).peak_mem_mib = _mib(value)
    over = [(m, v) for m, v in peaks.items() if v is not None and plan.budget_bytes is not None
            and plan.batch_size is not None and v > plan.budget_bytes]
    if over:
        (mode, needed), *_ = over
        raise ConfigError(f"{target.label}: batch {batch} needs {needed / GIB:.2f} GiB for {mode}, "
                          f"over --memory-budget {config.memory_budget_gib} GiB; use a smaller --batch-size or "
                          f"--batch-size auto")


def _record_max_rel_diff(target: BenchTarget, row: BenchRow, batch: int, config: BenchConfig,
                         device: torch.device) -> None:
    """A derived form's largest logit difference from its plain eval model on the timed inference batch
    (the form as timed, in the run's precision; the plain model in fp32), relative to the plain
    logits' largest magnitude. The plain model is dropped afterwards."""
    if target.reference is None:
        return
    reference = target.reference.to(device)
    images = synthetic_images(batch, target.img_size, device, channels_last=config.channels_last, seed=config.seed)
    largest_diff = largest_logit = 0.0
    with torch.inference_mode():
        for chunk in images.split(DIFF_CHUNK):
            want = logits_of(reference(chunk)).double()
            with autocast(config.precision, device):
                got = logits_of(target.forward(chunk)).double().to(device)
            largest_diff = max(largest_diff, (got - want).abs().max().item())
            largest_logit = max(largest_logit, want.abs().max().item())
    row.max_rel_diff = largest_diff / largest_logit if largest_logit > 0 else largest_diff
    target.reference = None


def _prepare(spec: ModelSpec, modes: tuple[str, ...], options: BuildOptions, config: BenchConfig, plan: _Plan,
             peak_measure: PeakMeasure | None) -> tuple[BenchTarget, BenchRow]:
    """Build ``spec`` and measure what does not depend on the clock; return the target and its row."""
    target = build_target(spec, options, compile=config.compile)
    row = _new_row(target, config, plan)
    _count_costs(target, row, config, plan)
    batch = _choose_batch(target, row, modes, config, plan, peak_measure)
    _record_max_rel_diff(target, row, batch, config, plan.device)
    if plan.device.type == "cpu" and (config.peak_memory or peak_measure is not None):
        _record_cpu_peaks(target, row, modes, batch, config, plan, peak_measure)
    elif plan.device.type == "cuda":
        row.peak_mem_method = CUDA_PEAK_METHOD
    return target, row


def warn_if_busy(config: BenchConfig, plan: _Plan, load: float | None) -> None:
    """A :class:`BusyMachineWarning` before a wall-clock CPU run when the 1-minute ``load`` average exceeds the
    cores its threads leave free."""
    if plan.device.type != "cpu" or config.timer != "wall":
        return
    message = busy_machine_message(load, os.cpu_count(), int(config.threads or torch.get_num_threads()))
    if message is not None:
        warnings.warn(message, BusyMachineWarning, stacklevel=3)


def run_benchmark(config: BenchConfig, *, progress: bool = False, peak_measure: PeakMeasure | None = None,
                  load: Callable[[], float | None] = load_average) -> list[BenchRow]:
    """Measure every model of ``config`` and return one :class:`~tresnet.bench.rows.BenchRow` per model,
    in the order given.

    A row holds identity and settings, per mode the batch size and median images per second with their
    spread, the largest batch when searched and the peak memory; parameters, GMACs, bytes kept for
    backward per image, published top-1, and for a deployment form its difference from the plain
    model; in a CPU run with a deployment form, or with ``peak_gflops``, each row's GFLOP/s and its
    fraction of the compute ceiling of its number format. ``peak_measure`` replaces the peak-memory
    measurement (tests). A wall-clock CPU run first reads the machine's ``load`` (the 1-minute load average) and
    warns (:class:`BusyMachineWarning`) when it exceeds the cores the run's threads leave free.

    Raises :class:`ConfigError` for a bad option or a batch that does not fit,
    :class:`~tresnet.errors.ModelNotFoundError` for an unknown model and
    :class:`~tresnet.errors.MissingDependencyError` for a timm model without timm (or an ONNX form
    without ONNX Runtime); all before any timing starts where they can be known in advance.
    """
    plan = plan_config(config)
    options = BuildOptions(device=plan.device, img_size=config.img_size, precision=config.precision,
                           channels_last=config.channels_last)
    specs = _checked_specs(config, plan, options)
    warn_if_busy(config, plan, load())
    # A timm model that is one of ours runs at our model's side when no side is given for all.
    followed = {} if config.img_size else same_network_sizes([spec for spec, _ in specs])
    park = plan.device.type == "cuda" and len(specs) > 1
    n_turns = sum(len(modes) for _, modes in specs) * (config.warmup + config.repeats)
    bar = _Progress(progress, len(specs) + n_turns)
    targets: list[BenchTarget] = []
    rows: list[BenchRow] = []
    with _torch_settings(config, plan.device), contextlib.closing(bar):
        for spec, modes in specs:
            bar.stage(f"preparing {spec.label}")
            ours, size = followed.get(spec.label, (None, None))
            target, row = _prepare(spec, modes, replace(options, img_size=size or options.img_size), config,
                                   plan, peak_measure)
            row.img_size_from = ours
            if park:
                _move_target(target, [], torch.device("cpu"))
                free_device_memory(plan.device)
            targets.append(target)
            rows.append(row)
            bar.update()
        ceilings = None
        if _wants_ceiling([spec for spec, _ in specs], plan):
            bar.stage("measuring the compute ceiling")
            ceilings = _ceilings(rows, config, plan)
        _time_round_robin(targets, rows, config, plan, bar, park)
        if ceilings is not None:
            bar.stage("measuring the compute ceiling again")
            ceilings = _ceilings(rows, config, plan, before=ceilings)
    if ceilings is not None:
        record_compute(rows, ceilings)
    return rows


# --- the compute ceiling -------------------------------------------------------------------------------

def _wants_ceiling(specs: Sequence[ModelSpec], plan: _Plan) -> bool:
    """Whether the run compares speeds with the compute ceiling: asked for, or a CPU deployment form."""
    return plan.peaks is not None or (plan.device.type == "cpu" and any(s.form in DEPLOYMENT_FORMS
                                                                         for s in specs))


def _number_format(row: BenchRow, config: BenchConfig, plan: _Plan) -> str | None:
    """The number format of ``row``'s matrix products: its form's own, else that of the run's precision."""
    return NUMBER_FORMATS.get(row.form or "") or precision_format(config.precision, plan.device.type)


def _ceilings(rows: list[BenchRow], config: BenchConfig, plan: _Plan,
              before: dict[str, tuple[float | None, str]] | None = None) -> dict[str, tuple[float | None, str]]:
    """Set each row's number format; return ``format -> (GFLOP/s, source)`` for the formats the rows use,
    given ones as they are, the others measured on the run's threads (the better of this and ``before``, a
    measurement at another moment of the run: other work on the machine comes and goes)."""
    for row in rows:
        row.number_format = _number_format(row, config, plan)
    given = plan.peaks or {}
    used = sorted({fmt for row in rows if (fmt := row.number_format) is not None})
    ceilings: dict[str, tuple[float | None, str]] = {fmt: (given[fmt], PEAK_GIVEN) for fmt in used if fmt in given}
    measured = estimate_peaks([fmt for fmt in used if fmt not in given], device=plan.device, timer=config.timer)
    for fmt, gflops in measured.items():
        earlier = (before or {}).get(fmt, (None, None))[0]
        found = [g for g in (gflops, earlier) if g is not None]
        ceilings[fmt] = (max(found) if found else None, PEAK_MEASURED)
    return ceilings


# --- the clock -------------------------------------------------------------------------------------------

_Pair = tuple[int, str]  # (index of the target, mode)


def _make_steps(targets: list[BenchTarget], rows: list[BenchRow], pairs: list[_Pair], config: BenchConfig,
                plan: _Plan, park: bool) -> dict:
    """The step of each (target, mode) pair, its inputs made on the device (then parked on the host)."""
    device, host = plan.device, torch.device("cpu")
    steps = {}
    for index, mode in pairs:
        target = targets[index]
        if park:
            _move_target(target, [], device)
        batch = cast(int, rows[index].mode(mode).batch_size)  # chosen before the steps are made
        steps[index, mode] = _guarded(
            lambda t=target, m=mode, b=batch: make_step(t, m, b, device=device, precision=config.precision,
                                                        channels_last=config.channels_last, seed=config.seed),
            target, mode, batch, device)
        if park:
            _move_target(target, [steps[index, mode]], host)
    return steps


def _take_turn(target: BenchTarget, step, mode: str, batch: int, timed: bool, plan: _Plan, timer: str,
               park: bool) -> tuple[float | None, int]:
    """One turn of ``step``: seconds per batch when ``timed`` (else a warm-up), and the CUDA peak bytes."""
    device = plan.device
    if park:
        _move_target(target, [step], device)
    step.prepare()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = None
    if timed:
        seconds = _guarded(lambda: time_iterations(step, plan.iters, device, timer), target, mode, batch, device)
    else:
        _guarded(step, target, mode, batch, device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    if park:
        _move_target(target, [step], torch.device("cpu"))
    return seconds, peak


def _record_timings(row: BenchRow, mode: str, seconds: list[float], peak_bytes: int, device: torch.device) -> None:
    """The median images/s of ``seconds`` and its spread (and the CUDA peak) into ``row``'s ``mode``."""
    result: ModeResult = row.mode(mode)
    stats = summarize(seconds, cast(int, result.batch_size))
    result.img_per_s = stats["img_per_s"]
    result.img_per_s_spread_pct = stats["spread_pct"]
    result.ms_per_batch = stats["ms_per_batch"]
    result.seconds_per_batch = seconds
    if device.type == "cuda":
        result.peak_mem_mib = peak_bytes / MIB


def _time_turns(pairs: list[_Pair], targets: list[BenchTarget], rows: list[BenchRow], steps: dict,
                config: BenchConfig, plan: _Plan, bar: _Progress, park: bool,
                shuffler: random.Random) -> tuple[dict[_Pair, list[float]], dict[_Pair, int]]:
    """Warm up, then time ``pairs`` one turn each per repetition, in a new order each repetition (so that
    no pair always follows the same one); return each pair's seconds per batch and CUDA peak bytes."""
    samples: dict[_Pair, list[float]] = {pair: [] for pair in pairs}
    peaks: dict[_Pair, int] = {pair: 0 for pair in pairs}
    rounds = [("warm-up", r) for r in range(config.warmup)] + [("timing", r) for r in range(config.repeats)]
    for phase, repetition in rounds:
        for index, mode in shuffler.sample(pairs, len(pairs)):
            target = targets[index]
            bar.stage(f"{phase} {repetition + 1} {target.label} {mode}")
            seconds, peak = _take_turn(target, steps[index, mode], mode, cast(int, rows[index].mode(mode).batch_size),
                                       phase == "timing", plan, config.timer, park)
            if seconds is not None:
                samples[index, mode].append(seconds)
            peaks[index, mode] = max(peaks[index, mode], peak)
            bar.update()
    return samples, peaks


def _time_round_robin(targets: list[BenchTarget], rows: list[BenchRow], config: BenchConfig, plan: _Plan,
                      bar: _Progress, park: bool) -> None:
    """Time every (model, mode) pair, one mode after the other (inference first), the models of a mode in
    turns; record the results. Modes apart: a turn right after a large training step runs slower (caches,
    memory mapped afresh), which would fall on whichever inference turn came next."""
    pairs = [(index, mode) for mode in plan.modes for index, row in enumerate(rows)
             if row.mode(mode).batch_size is not None]
    steps = _make_steps(targets, rows, pairs, config, plan, park)
    shuffler = random.Random(config.seed)
    for mode in plan.modes:
        mode_pairs = [pair for pair in pairs if pair[1] == mode]
        samples, peaks = _time_turns(mode_pairs, targets, rows, steps, config, plan, bar, park, shuffler)
        for (index, _), seconds in samples.items():
            _record_timings(rows[index], mode, seconds, peaks[index, mode], plan.device)


def _guarded(fn: Callable, target: BenchTarget, mode: str, batch: int, device: torch.device):
    """Call ``fn``; turn a device out-of-memory error into a one-line :class:`ConfigError`."""
    oom = False
    try:
        return fn()
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        oom = True
    if oom:
        free_device_memory(device)
        raise ConfigError(f"{target.label}: batch {batch} does not fit in {device} memory for {mode} at "
                          f"{target.img_size}px; use a smaller --batch-size or --batch-size auto")

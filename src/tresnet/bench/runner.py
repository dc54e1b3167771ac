"""Run a benchmark: build every model, find its batch, then time all of them in turns.

Order of work: check every argument and model name before anything is built; build each model and
measure what does not depend on the clock (parameters, GMACs, bytes kept for backward, the largest
batch, peak memory); then warm up and time the (model, mode) pairs round-robin, one turn each per
repetition, so that a shared machine's drift hits every model alike. On CUDA, models not in their turn
wait in host memory, so each runs with the device to itself, as when its largest batch was searched.
"""

from __future__ import annotations

import math
import platform
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
from tresnet.bench.memory import saved_bytes_per_image
from tresnet.bench.published import published_top1
from tresnet.bench.targets import (
    BenchTarget,
    BuildOptions,
    build_target,
    check_spec,
    count_gmacs,
    count_params_m,
    parse_model_list,
)
from tresnet.bench.timing import (
    autocast,
    check_device,
    check_precision,
    check_timer,
    make_step,
    summarize,
    time_iterations,
)
from tresnet.errors import ConfigError, TResNetError

MIB = 1024 ** 2
RUN_MODES = {"infer": ("infer",), "train": ("train",), "both": ("infer", "train")}
DEFAULT_BATCH = {"cpu": 8, "cuda": 128}
DEFAULT_ITERS = {"cpu": 1, "cuda": 10}
AUTO = "auto"

# (target, mode, batch) -> peak bytes; replaces the real measurement (tests use a fake allocator).
PeakMeasure = Callable[[BenchTarget, str, int], float]


@dataclass
class BenchConfig:
    """Everything a benchmark run depends on; the fields mirror ``tresnet benchmark``'s options.

    ``batch_size``: an int, ``"auto"`` (90% of the largest batch that fits; on the CPU within
    ``memory_budget_gib``) or None (8 on the CPU, 128 on CUDA). ``img_size`` None: each model's own.
    ``iters`` None: 1 on the CPU, 10 on CUDA (timed iterations per turn). ``device`` may be ``"auto"``.
    ``timer``: ``"wall"`` (elapsed time) or, on the CPU, ``"cpu"`` (CPU time of the process: robust to
    other work on a shared machine; use it with ``threads=1``).
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


@dataclass(frozen=True)
class _Plan:
    device: torch.device
    modes: tuple[str, ...]
    batch_size: int | None  # None: auto
    iters: int
    budget_bytes: float | None


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


def plan_config(config: BenchConfig) -> _Plan:
    """Check every option of ``config``; raise :class:`ConfigError` naming the first bad one."""
    if config.mode not in RUN_MODES:
        raise ConfigError(f"bad --mode {config.mode!r}: choose infer, train or both")
    device_name = config.device
    if device_name == AUTO:
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = check_device(device_name)
    check_precision(config.precision, device)
    check_timer(config.timer, device)
    batch = config.batch_size
    if batch is None:
        batch = DEFAULT_BATCH[device.type]
    if isinstance(batch, str) and batch.strip().lower() == AUTO:
        batch = None
    else:
        try:
            batch = int(batch)
        except (TypeError, ValueError):
            raise ConfigError(f"bad --batch-size {config.batch_size!r}: a positive integer or 'auto'") from None
        if batch < 1:
            raise ConfigError(f"bad --batch-size {batch}: a positive integer or 'auto'")
    budget = None
    if config.memory_budget_gib is not None:
        if not config.memory_budget_gib > 0:
            raise ConfigError(f"bad --memory-budget {config.memory_budget_gib}: a positive number of GiB")
        budget = float(config.memory_budget_gib) * GIB
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
    return _Plan(device=device, modes=RUN_MODES[config.mode], batch_size=batch, iters=iters, budget_bytes=budget)


def describe_device(device: torch.device) -> str:
    """A human name of ``device``: the GPU's name, or the CPU model and the number of threads used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{name} ({threads} thread{'s' if threads > 1 else ''})"


def _versions() -> dict:
    from tresnet import __version__

    versions = {"tresnet_version": __version__, "torch_version": torch.__version__, "timm_version": None}
    try:
        import timm

        versions["timm_version"] = timm.__version__
    except ImportError:
        pass
    return versions


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


def _static_row(target: BenchTarget, config: BenchConfig, plan: _Plan) -> dict:
    spec = target.spec
    published = published_top1(spec.name)
    row = {
        "model": spec.label, "name": spec.name, "impl": spec.impl, "variant": spec.variant,
        "device": str(plan.device), "device_name": describe_device(plan.device),
        "precision": config.precision, "channels_last": bool(config.channels_last), "compiled": target.compiled,
        "img_size": target.img_size,
        "params_m": None, "gmacs": None, "saved_mib_per_img": None,
        "top1": published.top1 if published else None,
        "top1_img_size": published.img_size if published else None,
        "top1_source": published.source if published else None,
    }
    if target.module is not None:
        module = target.module
        row["params_m"] = count_params_m(module)
        row["gmacs"] = count_gmacs(module, target.img_size, device=plan.device, channels_last=config.channels_last)
        if "train" in target.modes:
            with autocast(config.precision, plan.device):
                saved = saved_bytes_per_image(module, target.img_size, batch_size=2, device=plan.device,
                                              channels_last=config.channels_last)
            row["saved_mib_per_img"] = saved / MIB
    return row


def _search_batch(target: BenchTarget, config: BenchConfig, plan: _Plan,
                  peak_measure: PeakMeasure | None) -> tuple[str, BatchSearchResult]:
    mode = "train" if "train" in plan.modes else "infer"
    if peak_measure is not None:
        def measure(batch: int) -> float:
            return peak_measure(target, mode, batch)
    elif plan.device.type == "cuda":
        measure = cuda_peak_measure(
            lambda batch: make_step(target, mode, batch, device=plan.device, precision=config.precision,
                                    channels_last=config.channels_last, seed=config.seed), plan.device)
    else:
        measure = cpu_peak_measure(target.label, mode=mode, img_size=target.img_size, precision=config.precision,
                                   channels_last=config.channels_last, threads=config.threads)
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


def _cpu_peaks(target: BenchTarget, config: BenchConfig, plan: _Plan, batch: int,
               peak_measure: PeakMeasure | None) -> dict[str, float | None]:
    """Peak bytes per mode, and under ``"runtime"`` the process's resident size before the model."""
    if peak_measure is not None:
        return {mode: peak_measure(target, mode, batch) for mode in plan.modes}
    try:
        reply = probe_peak_rss(target.label, batch, modes=plan.modes, img_size=target.img_size,
                               precision=config.precision, channels_last=config.channels_last,
                               threads=config.threads)
    except TResNetError as error:
        warnings.warn(f"peak memory of {target.label} not measured: {error}", stacklevel=3)
        return {mode: None for mode in plan.modes}
    peaks = {mode: reply.get(f"{mode}_peak_rss_bytes") for mode in plan.modes}
    return {**peaks, "runtime": reply.get("baseline_rss_bytes")}


def run_benchmark(config: BenchConfig, *, progress: bool = False,
                  peak_measure: PeakMeasure | None = None) -> list[dict]:
    """Measure every model of ``config`` and return one row (a dict) per model, in the order given.

    Each row holds the fields listed in ``docs/sections/benchmark.md``: identity and settings, batch
    sizes and median images per second per mode with their spread, the largest batch when searched,
    parameters, GMACs, bytes kept for backward per image, peak memory and published top-1.
    ``peak_measure`` replaces the peak-memory measurement (tests).

    Raises :class:`ConfigError` for a bad option or a batch that does not fit,
    :class:`~tresnet.errors.ModelNotFoundError` for an unknown model and
    :class:`~tresnet.errors.MissingDependencyError` for a timm model without timm; all before any
    timing starts where they can be known in advance.
    """
    plan = plan_config(config)
    specs = parse_model_list(config.models)
    for spec in specs:
        check_spec(spec)
    threads_before, cudnn_benchmark_before = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if config.threads:
        torch.set_num_threads(int(config.threads))
    torch.manual_seed(config.seed)
    device = plan.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    park = device.type == "cuda" and len(specs) > 1
    host = torch.device("cpu")
    n_turns = len(specs) * len(plan.modes) * (config.warmup + config.repeats)
    bar = _Progress(progress, len(specs) + n_turns)
    versions = _versions()
    options = BuildOptions(device=device, img_size=config.img_size, precision=config.precision,
                           channels_last=config.channels_last)
    targets: list[BenchTarget] = []
    rows: list[dict] = []
    try:
        for spec in specs:
            bar.stage(f"preparing {spec.label}")
            target = build_target(spec, options, compile=config.compile)
            missing = [m for m in plan.modes if m not in target.modes]
            if missing:
                raise ConfigError(f"{spec.label} cannot run {'/'.join(missing)} (an inference-only variant); "
                                  f"use --mode infer")
            row = _static_row(target, config, plan)
            row.update({"infer_batch_size": None, "infer_img_per_s": None, "train_batch_size": None,
                        "train_img_per_s": None, "max_train_batch": None, "max_infer_batch": None,
                        "infer_peak_mem_mib": None, "train_peak_mem_mib": None, "peak_mem_method": None})
            if plan.batch_size is None:
                search_mode, result = _search_batch(target, config, plan, peak_measure)
                batch = max(1, int(result.max_batch * config.auto_fraction))
                row[f"max_{search_mode}_batch"] = result.max_batch
                row["memory_budget_gib"] = result.budget_bytes / GIB
                row["batch_search_probes"] = [[b, _mib(v)] for b, v in result.probes]
            else:
                batch = plan.batch_size
                row["memory_budget_gib"] = None if plan.budget_bytes is None else plan.budget_bytes / GIB
            for mode in plan.modes:
                row[f"{mode}_batch_size"] = batch
            if device.type == "cpu" and (config.peak_memory or peak_measure is not None):
                peaks = _cpu_peaks(target, config, plan, batch, peak_measure)
                row["peak_mem_runtime_mib"] = _mib(peaks.pop("runtime", None))
                row["peak_mem_method"] = "peak resident memory of a process running the model (CPU)"
                for mode, value in peaks.items():
                    row[f"{mode}_peak_mem_mib"] = _mib(value)
                over = [m for m, v in peaks.items() if v is not None and plan.budget_bytes is not None
                        and plan.batch_size is not None and v > plan.budget_bytes]
                if over:
                    raise ConfigError(f"{spec.label}: batch {batch} needs {peaks[over[0]] / GIB:.2f} GiB for "
                                      f"{over[0]}, over --memory-budget {config.memory_budget_gib} GiB; use a "
                                      f"smaller --batch-size or --batch-size auto")
            elif device.type == "cuda":
                row["peak_mem_method"] = "torch.cuda.max_memory_allocated during the timed steps"
            row.update(versions)
            row.update(warmup=config.warmup, repeats=config.repeats, iters=plan.iters,
                       threads=torch.get_num_threads(), timer=config.timer)
            if park:
                _move_target(target, [], host)
                free_device_memory(device)
            targets.append(target)
            rows.append(row)
            bar.update()
        _time_round_robin(targets, rows, config, plan, bar, park)
    finally:
        bar.close()
        torch.set_num_threads(threads_before)
        torch.backends.cudnn.benchmark = cudnn_benchmark_before
    return rows


def _time_round_robin(targets: list[BenchTarget], rows: list[dict], config: BenchConfig, plan: _Plan,
                      bar: _Progress, park: bool) -> None:
    device, host = plan.device, torch.device("cpu")
    pairs = [(index, mode) for mode in plan.modes for index in range(len(targets))]
    steps = {}
    for index, mode in pairs:
        target = targets[index]
        if park:
            _move_target(target, [], device)
        batch = rows[index][f"{mode}_batch_size"]
        steps[index, mode] = _guarded(
            lambda t=target, m=mode, b=batch: make_step(t, m, b, device=device, precision=config.precision,
                                                        channels_last=config.channels_last, seed=config.seed),
            target, mode, rows[index], device)
        if park:
            _move_target(target, [steps[index, mode]], host)
    samples: dict[tuple[int, str], list[float]] = {pair: [] for pair in pairs}
    peaks: dict[tuple[int, str], int] = {pair: 0 for pair in pairs}
    rounds = [("warm-up", r) for r in range(config.warmup)] + [("timing", r) for r in range(config.repeats)]
    for phase, repetition in rounds:
        for index, mode in pairs:
            target, step = targets[index], steps[index, mode]
            bar.stage(f"{phase} {repetition + 1} {target.label} {mode}")
            if park:
                _move_target(target, [step], device)
            step.prepare()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if phase == "warm-up":
                _guarded(step, target, mode, rows[index], device)
            else:
                seconds = _guarded(lambda s=step: time_iterations(s, plan.iters, device, config.timer), target,
                                   mode, rows[index], device)
                samples[index, mode].append(seconds)
            if device.type == "cuda":
                peaks[index, mode] = max(peaks[index, mode], torch.cuda.max_memory_allocated(device))
            if park:
                _move_target(target, [step], host)
            bar.update()
    for (index, mode), seconds in samples.items():
        row = rows[index]
        stats = summarize(seconds, row[f"{mode}_batch_size"])
        row[f"{mode}_img_per_s"] = stats["img_per_s"]
        row[f"{mode}_img_per_s_spread_pct"] = stats["spread_pct"]
        row[f"{mode}_ms_per_batch"] = stats["ms_per_batch"]
        row[f"{mode}_seconds_per_batch"] = seconds
        if device.type == "cuda":
            row[f"{mode}_peak_mem_mib"] = peaks[index, mode] / MIB


def _guarded(fn: Callable, target: BenchTarget, mode: str, row: dict, device: torch.device):
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
        raise ConfigError(f"{target.label}: batch {row[f'{mode}_batch_size']} does not fit in {device} memory "
                          f"for {mode} at {target.img_size}px; use a smaller --batch-size or --batch-size auto")

"""What a measurement ran on: the device's name, the CPU's model and speed-relevant ISA flags, its load, the
versions."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import torch

from tresnet.version import __version__

CPUINFO = "/proc/cpuinfo"
# ISA extensions that change CPU inference speed: wide vectors, int8/bf16 dot products, AMX tiles.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
# Load the 1-minute average may carry beyond the free cores without a warning: the benchmark's own start, daemons.
LOAD_TOLERANCE = 0.5


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name : value`` line of ``/proc/cpuinfo`` (None where there is none)."""
    try:
        with open(CPUINFO) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` knows)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flag_set() -> set[str] | None:
    """Every flag of the CPU (``/proc/cpuinfo``; None where it is absent)."""
    field = _cpuinfo_field("flags")
    return None if field is None else set(field.split())


def cpu_flags() -> list[str]:
    """Which of :data:`SPEED_FLAGS` the CPU has, in that order (empty where ``/proc/cpuinfo`` is absent)."""
    present = cpu_flag_set() or set()
    return [flag for flag in SPEED_FLAGS if flag in present]


def cpu_line(flags: Sequence[str] | None = None) -> str:
    """``CPU: <model> (<n> cores); speed-relevant ISA flags: ...``, the head of a benchmark's table; ``flags`` as a
    run recorded them (None: this machine's, :func:`cpu_flags`)."""
    flags = cpu_flags() if flags is None else flags
    return f"CPU: {cpu_name()} ({os.cpu_count()} cores); speed-relevant ISA flags: {', '.join(flags) or 'none'}"


def load_average() -> float | None:
    """The 1-minute load average of the machine (None where the system does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_machine_message(load: float | None, cpu_count: int | None, threads: int) -> str | None:
    """What to say before a wall-clock run of ``threads`` threads when the 1-minute ``load`` average exceeds
    the cores those threads leave free (``cpu_count - threads``) by more than :data:`LOAD_TOLERANCE`; None
    when it does not, or when either figure is unknown."""
    if load is None or not cpu_count:
        return None
    free = max(cpu_count - threads, 0)
    if load <= free + LOAD_TOLERANCE:
        return None
    return (f"the load average is {load:.1f} on {cpu_count} cores, more than the {free} that {threads} "
            f"thread{'s leave' if threads != 1 else ' leaves'} free: other work will skew the wall-clock speeds and their "
            f"ratios; run on a quiet machine, or time with --threads 1 --timer cpu")


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """``python <script> <arguments>``: how a benchmark script was run (``argv`` None: this process's)."""
    return " ".join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def machine_record(benchmark: str, command: str, **fields) -> dict:
    """The head of a benchmark's JSON record: its name, the CPU (model, speed flags, core count), the
    date (UTC) and the command that reproduces it, followed by ``fields``."""
    return dict(benchmark=benchmark, cpu=cpu_name(), cpu_flags=cpu_flags(), cpu_count=os.cpu_count(),
                date=datetime.now(UTC).isoformat(timespec="seconds"), command=command, **fields)


def describe_device(device: torch.device) -> str:
    """A human name of ``device``: the GPU's name, or the CPU model and the number of threads used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{cpu_name()} ({threads} thread{'s' if threads > 1 else ''})"


def versions() -> dict[str, Any]:
    """``tresnet_version``, ``torch_version`` and ``timm_version`` (None without timm)."""
    found = {"tresnet_version": __version__, "torch_version": torch.__version__, "timm_version": None}
    try:
        import timm

        found["timm_version"] = timm.__version__
    except ImportError:
        pass
    return found

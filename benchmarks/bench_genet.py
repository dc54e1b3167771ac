"""GENet on the CPU: ours against timm's gernet (the same networks), the fused model, and TResNet-M.

One run of :func:`tresnet.bench.run_benchmark` per thread count, inference and training, the models timed
in turns (warm-up, then one turn each per repetition; median images/s), the same as

    python3 -m tresnet benchmark --models genet_light,timm:gernet_s,genet_light:fused,genet_normal,\
timm:gernet_m,genet_normal:fused,genet_large,timm:gernet_l,genet_large:fused,tresnet_m --device cpu \
        --batch-size 8 --threads 1 --warmup 2 --repeats 10 --timer cpu --no-peak-memory \
        --json benchmarks/results/genet_cpu_1t.json --markdown

(at 2 threads: ``--threads 2`` and the wall clock). At one thread the clock is the process's CPU time, which
counts the work done and not the time spent waiting for a core that another process holds.

Each timm gernet runs at its GENet's size (192 px for light and normal, 256 for large: the official
evaluation sizes), so that every pair compares at one size; TResNet-M at its own 224. Checks the issue's
targets: ours within 0.97-1.03x of timm's (inference and training), the fused GENet at least 1.15x the
plain one (inference). Writes, under ``--out``, ``genet_cpu_<N>t.json`` (each run's rows, as ``--json``
writes them), ``genet_cpu.json`` (all runs, the ratios, the machine and the load) and ``genet_cpu.md``
(the tables for the docs):

    python benchmarks/bench_genet.py                       # batch 8, threads 1 and 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tresnet.bench import (
    BenchConfig,
    BenchRow,
    command_line,
    cpu_line,
    machine_record,
    run_benchmark,
    write_json,
)
from tresnet.bench.report import format_speed, format_table, speed_ratio
from tresnet.bench.specs import timm_name_of
from tresnet.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"
GENETS = ("genet_light", "genet_normal", "genet_large")
BASELINE = "tresnet_m"
# The targets: (low, high) bounds of a ratio; None = unbounded.
SAME_NETWORK = (0.97, 1.03)
FUSED = (1.15, None)


def models_for(genets: tuple[str, ...]) -> str:
    """Per GENet: ours, timm's, ours fused; then TResNet-M."""
    names = []
    for name in genets:
        names += [name, f"timm:{timm_name_of(name)}", f"{name}:fused"]
    return ",".join([*names, BASELINE])


def timer_for(timer: str, threads: int) -> str:
    """``auto``: the process's CPU time at one thread (robust to other work on a shared machine), else the wall clock."""
    if timer != "auto":
        return timer
    return "cpu" if threads == 1 else "wall"


def config_for(args: argparse.Namespace, threads: int) -> BenchConfig:
    """The benchmark of every model at ``threads`` threads."""
    return BenchConfig(models=models_for(tuple(args.models.split(","))), mode="both", device="cpu",
                       batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats, threads=threads,
                       timer=timer_for(args.timer, threads), peak_memory=False)


def command_for(config: BenchConfig, json_path: Path) -> str:
    """The ``tresnet benchmark`` command line that measures ``config``."""
    timer = f" --timer {config.timer}" if config.timer != "wall" else ""
    return (f"python3 -m tresnet benchmark --models {config.models} --device cpu --batch-size {config.batch_size} "
            f"--threads {config.threads} --warmup {config.warmup} --repeats {config.repeats}{timer} "
            f"--no-peak-memory --json {json_path} --markdown")


def _within(ratio: float | None, bounds: tuple[float | None, float | None]) -> bool | None:
    if ratio is None:
        return None
    low, high = bounds
    return (low is None or ratio >= low) and (high is None or ratio <= high)


def _bounds_text(bounds: tuple[float | None, float | None]) -> str:
    low, high = bounds
    return f">= {low:.2f}x" if high is None else f"{low:.2f}-{high:.2f}x"


def target_checks(rows: list[BenchRow]) -> list[dict]:
    """Each target of the issue: the pair, the mode, the measured ratio, the bounds and whether it is met."""
    labels = {r.model for r in rows}
    checks = []
    for name in (r.name for r in rows if r.impl == "tresnet" and r.form is None and r.name != BASELINE):
        pairs = [(name, f"timm:{timm_name_of(name)}", mode, SAME_NETWORK) for mode in ("infer", "train")]
        pairs.append((f"{name}:fused", name, "infer", FUSED))
        for numerator, denominator, mode, bounds in pairs:
            if numerator in labels and denominator in labels:
                ratio = speed_ratio(rows, numerator, denominator, mode)
                checks.append(dict(numerator=numerator, denominator=denominator, mode=mode, ratio=ratio,
                                   target=_bounds_text(bounds), met=_within(ratio, bounds)))
    return checks


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _clock(row: BenchRow) -> str:
    return "process CPU time" if row.timer == "cpu" else "wall-clock time"


def speed_table(runs: list[dict], rows_by_threads: dict[int, list[BenchRow]]) -> list[str]:
    """Markdown lines: every model's speed per thread count, with its size, cost and published top-1."""
    lines = ["| threads | model | impl | px | infer img/s | train img/s | params (M) | GMACs | published top-1 (px) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for row in rows_by_threads[run["threads"]]:
            top1 = "-" if row.top1 is None else f"{row.top1:.2f} ({row.top1_img_size})"
            lines.append(f"| {run['threads']} | {row.model} | {row.impl} | {row.img_size} | "
                         f"{format_speed(row, 'infer', digits=2)} | {format_speed(row, 'train', digits=2)} | "
                         f"{_fmt(row.params_m)} | {_fmt(row.gmacs)} | {top1} |")
    return lines


def target_table(runs: list[dict]) -> list[str]:
    """Markdown lines: each target's measured ratio and whether it is met."""
    lines = ["| threads | ratio | mode | measured | target | met |", "|---|---|---|---|---|---|"]
    for run in runs:
        for check in run["targets"]:
            met = "-" if check["met"] is None else ("yes" if check["met"] else "**no**")
            lines.append(f"| {run['threads']} | {check['numerator']} / {check['denominator']} | {check['mode']} | "
                         f"{_fmt(check['ratio'], suffix='x')} | {check['target']} | {met} |")
    return lines


def markdown(runs: list[dict], rows_by_threads: dict[int, list[BenchRow]], versions: str, command: str) -> str:
    """The docs page's tables: speeds, then the targets; the machine and how to reproduce."""
    first = rows_by_threads[runs[0]["threads"]][0]
    clock = ", ".join(f"{r['threads']} thread(s): {_clock(rows_by_threads[r['threads']][0])}" for r in runs)
    lines = [f"{cpu_line(first.cpu_flags or [])}; {versions}.",
             f"CPU figures, fp32, batch {first.infer.batch_size}, fresh weights: images/s on this CPU, not the "
             f"V100 GPU latency the GENet paper compares. One run per thread count ({clock}), median of "
             f"{first.repeats} timed turns after {first.warmup} warm-up turns, all models measured in turns; "
             f"±% = interquartile range. Each timm gernet runs at its GENet's size (the official evaluation "
             f"size); the published top-1 is at the size in brackets (ours: the GENet paper; timm's: its "
             f"evaluation of the same weights).", "", *speed_table(runs, rows_by_threads), "",
             "Targets: ours against timm's implementation of the same network, and the fused model against the "
             "plain one.", "", *target_table(runs), "",
             "Load average (1 min) before/after each run: " + "; ".join(
                 f"{r['threads']} thread(s) {_fmt(r['load_avg_1min_before'])}/{_fmt(r['load_avg_1min_after'])}"
                 for r in runs) + ".", "", f"Reproduce: `{command}`, which runs", ""]
    lines += [f"    {r['command']}" for r in runs]
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, threads: int) -> tuple[dict, list[BenchRow]]:
    """One run at ``threads`` threads: its rows (also written as JSON) and its record for the summary."""
    config = config_for(args, threads)
    json_path = args.out / f"genet_cpu_{threads}t.json"
    before = _load()
    rows = run_benchmark(config)
    run = dict(threads=threads, load_avg_1min_before=before, load_avg_1min_after=_load(),
               command=command_for(config, Path(os.path.relpath(json_path))), targets=target_checks(rows),
               rows=[row.to_dict() for row in rows])
    print(format_table(rows))
    print(f"wrote {write_json(rows, json_path)}", file=sys.stderr)
    return run, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(GENETS), help="GENets to measure (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--timer", default="auto",
                        help="wall, cpu (process CPU time) or auto: cpu at 1 thread, wall otherwise (default)")
    parser.add_argument("--threads", default="1,2", help="thread counts, one run each (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    args = parser.parse_args(argv)
    runs, rows_by_threads = [], {}
    for threads in (int(t) for t in args.threads.split(",")):
        run, rows_by_threads[threads] = measure(args, threads)
        runs.append(run)
    first = rows_by_threads[runs[0]["threads"]][0]
    versions = f"torch {first.torch_version}, timm {first.timm_version}"
    summary = machine_record("genet_cpu", command_line("benchmarks/bench_genet.py", argv), versions=versions,
                             runs=runs)
    print(f"wrote {write_text(args.out / 'genet_cpu.json', json.dumps(summary, indent=2) + chr(10))}", file=sys.stderr)
    table = markdown(runs, rows_by_threads, versions, summary["command"])
    print(table)
    print(f"wrote {write_text(args.out / 'genet_cpu.md', table)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

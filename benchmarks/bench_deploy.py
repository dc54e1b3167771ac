"""CPU inference speed of the deployment paths against the plain eval model and the compute ceiling, at 1 and
2 threads.

The paths are benchmark forms of the same model: the plain eval model, ``:fused``
(:func:`tresnet.deploy.fuse`), ``:bf16`` (``fuse(dtype=torch.bfloat16)``), ``:int8``
(:func:`tresnet.deploy.quantize`, PT2E compiled by ``torch.compile``), ``:onnx`` (the fused model in ONNX
Runtime) and ``:onnx_int8`` (that file quantized to int8 by ONNX Runtime). For each thread count, one run of
:func:`tresnet.bench.run_benchmark` times every path of every model in turns (``tresnet_m`` at 224 px and
``genet_normal`` at its 192 px by default), the same as

    python3 -m tresnet benchmark --models tresnet_m,tresnet_m:fused,tresnet_m:bf16,tresnet_m:int8,... \
        --device cpu --mode infer --batch-size 8 --threads 1 --warmup 2 --repeats 15 --no-peak-memory \
        --json benchmarks/results/deploy_cpu_1t.json --markdown

The run also measures the compute ceiling of each number format on its threads (the best rate of a large
matrix product or convolution in fp32, bf16 and int8, or the fastest path's where that is higher,
:mod:`tresnet.bench.ceiling`; ``--peak-gflops`` gives it instead),
and each row records its GFLOP/s (the plain model's MACs x 2 x images/s) and its share of the ceiling of
its format. The int8 paths are calibrated on random images: their speed does not depend on them, their
accuracy does (``benchmarks/deploy_accuracy.py`` measures it on real images). The issue's targets are
printed as met or not per model and thread count: fused >= 1.15x, bf16 >= 2x and int8 >= 2.5x the plain
model's images/s.

Writes, under ``--out``, ``deploy_cpu_<N>t.json`` (each run's rows, as ``--json`` writes them),
``deploy_cpu.json`` (all runs, the ceilings, the targets, the machine and the load) and ``deploy_cpu.md``
(the table for the docs):

    python benchmarks/bench_deploy.py            # the table: 2 models x 6 paths, threads 1 and 2 (quiet machine)
    python benchmarks/bench_deploy.py --models genet_light --img-size 64 --repeats 2 --threads 1 --out /tmp/smoke
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
    cpu_name,
    machine_record,
    run_benchmark,
    write_json,
)
from tresnet.bench.machine import load_average
from tresnet.bench.report import ceilings_of, format_ceilings, format_speed, format_table, speed_ratio
from tresnet.errors import TResNetError
from tresnet.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"
PATHS = ("fused", "bf16", "int8", "onnx", "onnx_int8")
# The targets: images/s of a path over the plain model's, per model and thread count.
TARGETS = {"fused": 1.15, "bf16": 2.0, "int8": 2.5}


def config_for(args: argparse.Namespace, threads: int) -> BenchConfig:
    """The benchmark of every path of every model at ``threads`` threads."""
    models = [f"{model}{':' + path if path else ''}" for model in args.models.split(",")
              for path in ("", *args.paths.split(","))]
    return BenchConfig(models=",".join(models), mode="infer", device="cpu", batch_size=args.batch_size,
                       img_size=args.img_size, warmup=args.warmup, repeats=args.repeats, threads=threads,
                       timer=args.timer, peak_memory=False, peak_gflops=args.peak_gflops)


def command_for(config: BenchConfig, json_path: Path) -> str:
    """The ``tresnet benchmark`` command line that measures ``config``."""
    size = f" --img-size {config.img_size}" if config.img_size else ""
    peaks = f" --peak-gflops {config.peak_gflops}" if config.peak_gflops else ""
    return (f"python3 -m tresnet benchmark --models {config.models} --device cpu --mode infer "
            f"--batch-size {config.batch_size}{size} --threads {config.threads} --timer {config.timer} "
            f"--warmup {config.warmup} --repeats {config.repeats} --no-peak-memory{peaks} --json {json_path} "
            f"--markdown")


def targets_of(rows: list[BenchRow], threads: int) -> list[dict]:
    """Each target of :data:`TARGETS` whose path was measured: model, path, ratio to plain, target, met."""
    found = []
    for row in rows:
        target = TARGETS.get(row.form)
        if target is None:
            continue
        ratio = speed_ratio(rows, row.model, row.name, "infer")
        found.append(dict(threads=threads, model=row.name, path=row.form, ratio=ratio, target=target,
                          met=ratio is not None and ratio >= target))
    return found


def format_targets(targets: list[dict]) -> list[str]:
    """One line per model and thread count: ``1 thread, tresnet_m: fused 1.19x >= 1.15x met; ...``."""
    lines = []
    for threads, model in dict.fromkeys((t["threads"], t["model"]) for t in targets):
        parts = [f"{t['path']} {t['ratio']:.2f}x >= {t['target']:.2f}x {'met' if t['met'] else 'NOT met'}"
                 for t in targets if (t["threads"], t["model"]) == (threads, model)]
        lines.append(f"{threads} thread{'s' if threads != 1 else ''}, {model}: {'; '.join(parts)}")
    return lines


def _fmt_load(load: float | None) -> str:
    return "-" if load is None else f"{load:.2f}"


def _row_line(threads: int, row: BenchRow, rows: list[BenchRow]) -> str:
    ratio = speed_ratio(rows, row.model, row.name, "infer")
    diff = "-" if row.max_rel_diff is None else f"{row.max_rel_diff:.1e}"
    gflops = "-" if row.infer_gflop_per_s is None else f"{row.infer_gflop_per_s:,.0f}"
    share = "-" if row.infer_peak_fraction is None else f"{100 * row.infer_peak_fraction:.1f}% {row.number_format}"
    return (f"| {threads} | {row.model} | {row.img_size} | {row.infer.ms_per_batch:.1f} | "
            f"{format_speed(row, 'infer')} | {ratio:.2f}x | {diff} | {gflops} | {share} |")


def markdown(runs: list[dict], rows_by_threads: dict[int, list[BenchRow]], targets: list[dict], versions: str,
             command: str) -> str:
    """The docs table: per path and thread count img/s, the ratio to the plain model, the largest difference
    from it, GFLOP/s and the share of the ceiling; the ceilings; the targets met or not."""
    first = rows_by_threads[runs[0]["threads"]][0]
    clock = "CPU time of the process" if first.timer == "cpu" else "wall-clock time"
    sizes = ", ".join(dict.fromkeys(f"`{r.name}` at {r.img_size} px" for r in rows_by_threads[runs[0]["threads"]]))
    lines = [f"CPU: {cpu_name()}; speed-relevant ISA flags: {', '.join(first.cpu_flags or []) or 'none'}; {versions}.",
             f"{sizes}; batch {first.infer.batch_size}, fp32 images, fresh weights, int8 calibrated on random "
             f"images (speed only); one run per thread count: {clock}, median of {first.repeats} timed "
             f"turns after {first.warmup} warm-up turns, all paths measured in turns; ±% = interquartile range. "
             f"\"max rel diff\": the largest difference from the plain model's logits on the timed batch, relative "
             f"to their largest magnitude. GFLOP/s: the plain model's MACs x 2 x img/s; \"of ceiling\": its share "
             f"of the compute ceiling of the path's number format: the best rate of a large matrix product or "
             f"convolution in that format on the run's threads, or the fastest path's rate where that is higher "
             f"(measured, not the datasheet's).",
             ""]
    lines += [f"- {format_ceilings(rows_by_threads[run['threads']])}" for run in runs]
    lines += ["", "| threads | path | px | ms / batch | img/s | vs plain | max rel diff | GFLOP/s | of ceiling |",
              "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        lines += [_row_line(run["threads"], row, rows_by_threads[run["threads"]])
                  for row in rows_by_threads[run["threads"]]]
    lines += ["", "Targets (img/s over the plain model's): fused >= 1.15x, bf16 >= 2x, int8 >= 2.5x.", ""]
    lines += [f"- {line}" for line in format_targets(targets)]
    lines += ["", "Load average (1 min) before/after each run: " + "; ".join(
        f"{r['threads']} thread(s) {_fmt_load(r['load_avg_1min_before'])}/{_fmt_load(r['load_avg_1min_after'])}"
        for r in runs) + ".", "", f"Reproduce: `{command}`, which runs", ""]
    lines += [f"    {r['command']}" for r in runs]
    return "\n".join(lines) + "\n"


def _versions() -> str:
    import torch

    found = [f"torch {torch.__version__}"]
    for package, name in (("onnxruntime", "ONNX Runtime"), ("torchao", "torchao")):
        try:
            found.append(f"{name} {__import__(package).__version__}")
        except ImportError:
            pass
    return ", ".join(found)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tresnet_m,genet_normal", help="our models (default: %(default)s)")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="deployment forms timed beside each plain model (default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=None, help="default: each model's own (224, 192)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", default="1,2", help="thread counts, one run each (default: %(default)s)")
    parser.add_argument("--timer", default="wall",
                        help="wall (default) or cpu: CPU time of the process, for a shared machine (with --threads 1)")
    parser.add_argument("--peak-gflops", default=None, metavar="GFLOPS",
                        help="the compute ceiling, as tresnet benchmark takes it (default: measured per run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, argv: list[str] | None) -> None:
    """One run per thread count; print the tables and targets; write the JSON and Markdown files."""
    runs, rows_by_threads, targets = [], {}, []
    for threads in (int(t) for t in args.threads.split(",")):
        config = config_for(args, threads)
        json_path = args.out / f"deploy_cpu_{threads}t.json"
        before = load_average()
        rows = run_benchmark(config, progress=sys.stderr.isatty())
        ceilings = {fmt: gflops for fmt, (gflops, _) in ceilings_of(rows).items()}
        runs.append(dict(threads=threads, load_avg_1min_before=before, load_avg_1min_after=load_average(),
                         command=command_for(config, Path(os.path.relpath(json_path))), peak_gflop_per_s=ceilings,
                         rows=[row.to_dict() for row in rows]))
        rows_by_threads[threads] = rows
        targets += targets_of(rows, threads)
        print(format_table(rows))
        print(format_ceilings(rows))
        print(f"wrote {write_json(rows, json_path)}", file=sys.stderr)
    versions = _versions()
    summary = machine_record("deploy_cpu", command_line("benchmarks/bench_deploy.py", argv), versions=versions,
                             targets=targets, runs=runs)
    print(f"wrote {write_text(args.out / 'deploy_cpu.json', json.dumps(summary, indent=2) + chr(10))}",
          file=sys.stderr)
    table = markdown(runs, rows_by_threads, targets, versions, summary["command"])
    print(table)
    print(f"wrote {write_text(args.out / 'deploy_cpu.md', table)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        measure(args, argv)
    except TResNetError as error:  # a bad option or a missing package: one line, as the command line prints it
        print(f"bench_deploy: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

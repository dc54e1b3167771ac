"""CPU inference speed of the deployment paths against the plain eval model, at 1 and 2 threads.

The three paths are benchmark variants of the same model: ``tresnet_m`` (the plain eval model),
``tresnet_m:fused`` (:func:`tresnet.deploy.fuse`) and ``tresnet_m:onnx`` (the fused model exported to
ONNX, run by ONNX Runtime with as many intra-op threads as PyTorch). Each thread count is one run of
:func:`tresnet.bench.run_benchmark`, the same as

    python3 -m tresnet benchmark --models tresnet_m,tresnet_m:fused,tresnet_m:onnx --device cpu \
        --mode infer --batch-size 8 --threads 1 --warmup 2 --repeats 15 --no-peak-memory \
        --json benchmarks/results/deploy_cpu_1t.json --markdown

(warm-up, then the three paths timed in turns; median images/s). Writes, under ``--out``,
``deploy_cpu_<N>t.json`` (each run's rows, as ``--json`` writes them), ``deploy_cpu.json`` (all runs,
the machine and the load) and ``deploy_cpu.md`` (the table for the docs):

    python benchmarks/bench_deploy.py                      # tresnet_m, 224 px, batch 8, threads 1 and 2
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
from tresnet.bench.report import format_speed, format_table, speed_ratio
from tresnet.deploy.export import require_onnx
from tresnet.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"


def config_for(args: argparse.Namespace, threads: int) -> BenchConfig:
    """The benchmark of the three paths at ``threads`` threads."""
    models = ",".join([args.model, f"{args.model}:fused", f"{args.model}:onnx"])
    return BenchConfig(models=models, mode="infer", device="cpu", batch_size=args.batch_size, img_size=args.img_size,
                       warmup=args.warmup, repeats=args.repeats, threads=threads, peak_memory=False)


def command_for(config: BenchConfig, json_path: Path) -> str:
    """The ``tresnet benchmark`` command line that measures ``config``."""
    size = f" --img-size {config.img_size}" if config.img_size else ""
    return (f"python3 -m tresnet benchmark --models {config.models} --device cpu --mode infer "
            f"--batch-size {config.batch_size}{size} --threads {config.threads} --warmup {config.warmup} "
            f"--repeats {config.repeats} --no-peak-memory --json {json_path} --markdown")


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _fmt_load(load: float | None) -> str:
    return "-" if load is None else f"{load:.2f}"


def markdown(runs: list[dict], rows_by_threads: dict[int, list[BenchRow]], versions: str, command: str) -> str:
    """The docs table: img/s per path and thread count, the ratio to the plain model, the largest difference."""
    first = rows_by_threads[runs[0]["threads"]][0]
    lines = [f"CPU: {cpu_name()}; speed-relevant ISA flags: {', '.join(first.cpu_flags or []) or 'none'}; {versions}.",
             f"`{first.name}` at {first.img_size} px, batch {first.infer.batch_size}, fp32, fresh weights; one run per "
             f"thread count: wall-clock time, median of {first.repeats} timed turns after {first.warmup} warm-up "
             f"turns, the three paths measured in turns; ±% = interquartile range. \"max rel diff\": the largest "
             f"difference from the plain model's logits on the timed batch, relative to their largest magnitude.",
             "",
             "| threads | path | ms / batch | img/s | vs plain | max rel diff |", "|---|---|---|---|---|---|"]
    for run in runs:
        rows = rows_by_threads[run["threads"]]
        for row in rows:
            ratio = speed_ratio(rows, row.model, first.name, "infer")
            diff = "-" if row.max_rel_diff is None else f"{row.max_rel_diff:.1e}"
            lines.append(f"| {run['threads']} | {row.model} | {row.infer.ms_per_batch:.1f} | "
                         f"{format_speed(row, 'infer')} | {ratio:.2f}x | {diff} |")
    lines += ["", "Load average (1 min) before/after each run: " + "; ".join(
        f"{r['threads']} thread(s) {_fmt_load(r['load_avg_1min_before'])}/{_fmt_load(r['load_avg_1min_after'])}"
        for r in runs) + ".", "", f"Reproduce: `{command}`, which runs", ""]
    lines += [f"    {r['command']}" for r in runs]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tresnet_m")
    parser.add_argument("--img-size", type=int, default=None, help="default: the model's (224)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", default="1,2", help="thread counts, one run each (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    args = parser.parse_args(argv)
    _, onnxruntime = require_onnx()
    runs, rows_by_threads = [], {}
    for threads in (int(t) for t in args.threads.split(",")):
        config = config_for(args, threads)
        json_path = args.out / f"deploy_cpu_{threads}t.json"
        before = _load()
        rows = run_benchmark(config)
        runs.append(dict(threads=threads, load_avg_1min_before=before, load_avg_1min_after=_load(),
                         command=command_for(config, Path(os.path.relpath(json_path))),
                         rows=[row.to_dict() for row in rows]))
        rows_by_threads[threads] = rows
        print(format_table(rows))
        print(f"wrote {write_json(rows, json_path)}", file=sys.stderr)
    versions = f"torch {rows[0].torch_version}, ONNX Runtime {onnxruntime.__version__}"
    summary = machine_record("deploy_cpu", command_line("benchmarks/bench_deploy.py", argv), versions=versions,
                             runs=runs)
    path = write_text(args.out / "deploy_cpu.json", json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    table = markdown(runs, rows_by_threads, versions, summary["command"])
    print(table)
    print(f"wrote {write_text(args.out / 'deploy_cpu.md', table)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

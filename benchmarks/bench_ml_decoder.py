"""The cost of the ML-Decoder head: each model with its usual head (pooling + linear) and with ML-Decoder,
inference and training, in one run of :func:`tresnet.bench.run_benchmark` (models timed in turns), the same as

    python3 -m tresnet benchmark --models tresnet_l_448,tresnet_l_448:ml_decoder,tresnet_m,tresnet_m:ml_decoder \
        --device cpu --batch-size 2 --threads 1 --warmup 1 --repeats 5 --timer cpu --no-peak-memory --markdown

Both heads classify ImageNet's 1000 classes (ML-Decoder: 100 queries, each decoding 10 classes; with COCO's 80
classes it would have 80 queries of one class each, and a group projection 8x smaller).
Prints and writes (under ``--out``) ``ml_decoder_cpu.json`` (the rows, the machine, the ratios) and
``ml_decoder_cpu.md`` (the table for the docs): parameters, GMACs at the model's size, images/s, and the
ML-Decoder model's speed as a fraction of the plain one's.

    python benchmarks/bench_ml_decoder.py                  # batch 2, 1 thread, process CPU time
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tresnet.bench import BenchConfig, BenchRow, command_line, cpu_line, machine_record, run_benchmark
from tresnet.bench.report import format_speed, format_table, speed_ratio
from tresnet.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"


def config_for(args: argparse.Namespace) -> BenchConfig:
    names = []
    for name in args.models.split(","):
        names += [name, f"{name}:ml_decoder"]
    return BenchConfig(models=",".join(names), mode="both", device="cpu", batch_size=args.batch_size,
                       warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                       timer="cpu" if args.threads == 1 else "wall", peak_memory=False)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def head_costs(rows: list[BenchRow]) -> list[dict]:
    """Per model: the ML-Decoder model's parameters, GMACs and speeds against the plain model's."""
    by_label = {row.model: row for row in rows}
    costs = []
    for row in rows:
        decoder = by_label.get(f"{row.model}:ml_decoder")
        if row.form is not None or decoder is None:
            continue
        costs.append(dict(model=row.model, extra_params_m=decoder.params_m - row.params_m,
                          extra_gmacs=decoder.gmacs - row.gmacs,
                          infer_ratio=speed_ratio(rows, decoder.model, row.model, "infer"),
                          train_ratio=speed_ratio(rows, decoder.model, row.model, "train")))
    return costs


def markdown(rows: list[BenchRow], costs: list[dict], command: str) -> str:
    first = rows[0]
    clock = "process CPU time" if first.timer == "cpu" else "wall-clock time"
    lines = [f"{cpu_line(first.cpu_flags or [])}; torch {first.torch_version}.",
             f"fp32, batch {first.infer.batch_size}, {first.threads} thread(s), {clock}, median of {first.repeats} "
             f"turns after {first.warmup} warm-up turn(s), models timed in turns; 1000 classes; "
             f"±% = interquartile range.", "",
             "| model | px | params (M) | GMACs | infer img/s | train img/s |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.model} | {row.img_size} | {_fmt(row.params_m)} | {_fmt(row.gmacs)} | "
                     f"{format_speed(row, 'infer', digits=2)} | {format_speed(row, 'train', digits=2)} |")
    lines += ["", "| model | + params (M) | + GMACs | infer speed with ML-Decoder | train speed with ML-Decoder |",
              "|---|---|---|---|---|"]
    for cost in costs:
        lines.append(f"| {cost['model']} | {_fmt(cost['extra_params_m'])} | {_fmt(cost['extra_gmacs'])} | "
                     f"{_fmt(cost['infer_ratio'])}x | {_fmt(cost['train_ratio'])}x |")
    return "\n".join(lines + ["", f"Reproduce: `{command}`"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tresnet_l_448,tresnet_m", help="models (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    args = parser.parse_args(argv)
    before = os.getloadavg()[0]
    rows = run_benchmark(config_for(args))
    print(format_table(rows))
    costs = head_costs(rows)
    command = command_line("benchmarks/bench_ml_decoder.py", argv)
    summary = machine_record("ml_decoder_cpu", command, load_avg_1min_before=before,
                             load_avg_1min_after=os.getloadavg()[0], head_costs=costs,
                             rows=[row.to_dict() for row in rows])
    print(f"wrote {write_text(args.out / 'ml_decoder_cpu.json', json.dumps(summary, indent=2) + chr(10))}",
          file=sys.stderr)
    table = markdown(rows, costs, command)
    print(table)
    print(f"wrote {write_text(args.out / 'ml_decoder_cpu.md', table)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""In-place ABN against plain BatchNorm and timm's TResNet: memory kept for backward, peak memory, training speed.

One training-mode run of :func:`tresnet.bench.run_benchmark` over four models, timed in turns:
``tresnet_m`` (In-Place ABN, our default), ``tresnet_m:memory_efficient`` (the memory-lean Bottleneck
tails), ``tresnet_m:bn`` (plain BatchNorm) and ``timm:tresnet_m``. Per model:

- kept for backward per image: every tensor autograd saves in a training forward, each storage once,
  parameters excluded, as the slope between two batches (``saved_mib_per_img``), and what is kept once per
  step whatever the batch (``saved_constant_mib``: under autocast, the low-precision copy of the weights);
- peak memory of training above the runtime: on the CPU the peak resident memory of a fresh process
  running two training steps (forward, loss, backward, SGD with momentum) less its size once torch and
  the model's library are imported, i.e. the weights, gradients, momentum and activations; on CUDA
  ``torch.cuda.max_memory_allocated`` during the timed steps;
- training images/s: the median of the timed turns, with the interquartile range.

``--precision bf16`` (or ``fp16``, ``amp``) measures all of it under autocast. Writes the rows as JSON (``--json``,
as ``tresnet benchmark --json`` does) and the Markdown table next to it:

    python benchmarks/inplace_abn_memory.py --batch-size 8 --repeats 5 --threads 1 --timer cpu \
        --json benchmarks/results/inplace_abn_cpu.json
    python benchmarks/inplace_abn_memory.py --precision bf16 --batch-size 8 --warmup 1 --repeats 2 \
        --json benchmarks/results/inplace_abn_cpu_bf16.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tresnet.bench import BenchConfig, BenchRow, format_table, run_benchmark, write_json
from tresnet.bench.report import format_speed, settings_line, speed_ratio
from tresnet.files import write_text

LABELS = {
    "tresnet_m": "ours, in-place ABN (default)",
    "tresnet_m:memory_efficient": "ours, in-place ABN, `memory_efficient=True`",
    "tresnet_m:bn": 'ours, plain BN (`norm="bn"`)',
    "timm:tresnet_m": "timm `tresnet_m`",
}
TIMM = "timm:tresnet_m"


def peak_above_runtime_mib(row: BenchRow) -> float | None:
    """Peak memory of training less the runtime's (on CUDA there is no runtime figure: the peak itself)."""
    peak = row.train.peak_mem_mib
    if peak is None:
        return None
    return peak - (row.peak_mem_runtime_mib or 0.0)


def markdown(rows: list[BenchRow], command: str) -> str:
    """The docs table, with each figure's ratio to timm's TResNet-M."""
    timm = next(r for r in rows if r.model == TIMM)
    lines = [f"TResNet-M at {rows[0].img_size} px, training batch {rows[0].train.batch_size}; "
             f"{settings_line(rows[0])}.", "",
             "| variant | kept for backward per image | vs timm | + per step | peak memory of training above the "
             "runtime | training img/s | vs timm |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        peak = peak_above_runtime_mib(row)
        lines.append(f"| {LABELS[row.model]} | {row.saved_mib_per_img:.1f} MiB | "
                     f"{row.saved_mib_per_img / timm.saved_mib_per_img:.2f}x | {row.saved_constant_mib:.1f} MiB | "
                     f"{'-' if peak is None else f'{peak:.0f} MiB'} | {format_speed(row, 'train', digits=2)} | "
                     f"{speed_ratio(rows, row.model, TIMM, 'train'):.2f}x |")
    runtimes = [f"{r.model} {r.peak_mem_runtime_mib:.0f} MiB" for r in rows if r.peak_mem_runtime_mib is not None]
    if runtimes:
        lines += ["", "The runtime subtracted (the probe process with torch and the model's library imported, before "
                      "the model is built): " + ", ".join(runtimes) + "."]
    lines += ["", f"Reproduce: `{command}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16, help="training batch (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed turns per model (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed turns per model (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", help="fp32, amp, bf16 or fp16 autocast (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                        help="wall time, or the process's CPU time (steadier on a shared CPU, with --threads 1)")
    parser.add_argument("--json", type=Path, help="write the rows here, and the Markdown table beside (.md)")
    args = parser.parse_args(argv)
    config = BenchConfig(models=",".join(LABELS), mode="train", device=args.device, precision=args.precision,
                         batch_size=args.batch_size,
                         img_size=args.img_size, warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                         timer=args.timer, peak_memory=True)
    rows = run_benchmark(config, progress=True)
    command = "python benchmarks/inplace_abn_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = markdown(rows, command.strip())
    print(format_table(rows))
    print()
    print(table)
    if args.json:
        print(f"wrote {write_json(rows, args.json)}", file=sys.stderr)
        print(f"wrote {write_text(args.json.with_suffix('.md'), table)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

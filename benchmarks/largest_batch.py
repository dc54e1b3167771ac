"""The largest CPU training batch within a memory budget, in fp32 and under bf16 autocast, for our memory-lean
TResNet-M against ResNet50 (the paper's Table 1 measure, on a CPU).

Each figure is the peak resident memory of a fresh process that builds the model and runs two training steps
(forward, loss, backward, SGD with momentum) under the precision's autocast, the PyTorch runtime included: the
measurement of ``tresnet benchmark --batch-size auto --memory-budget GIB``. The first step, which only creates the
optimizer's momentum, runs on two images of the batch.

- **Projected**: the line through the peaks at two small batches (8 and 16), where it meets the budget.
- **Searched**: the benchmark's search (:func:`tresnet.bench.batch_search.largest_batch`), which ends on the exact
  largest batch that fits. It starts from the two small batches' peaks, so its first try is the projection.

Where the CPU has no bfloat16 arithmetic (no AVX-512 BF16, no AMX) a bf16 training step is emulated (PyTorch's
``slow_conv2d``: im2col and a bf16 matrix product) and runs 10-20x slower than fp32: a probe near the largest batch
then takes about ten minutes, and the bf16 search about an hour. The emulated kernels also allocate their im2col
buffers, which native kernels do not, so the bf16 figures of such a CPU belong to it. ``--search never`` gives the
projection alone.

Writes ``largest_batch_cpu.json`` and ``.md`` under ``--out``:

    python benchmarks/largest_batch.py                                   # 3 GiB, 224 px, fp32 and bf16
    python benchmarks/largest_batch.py --search never                    # projections only (minutes)
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch

from tresnet.bench import command_line, cpu_line, machine_record
from tresnet.bench.batch_search import GIB, cpu_peak_measure, largest_batch, projected_batch
from tresnet.bench.memory import MIB
from tresnet.files import write_text
from tresnet.runtime import bf16_is_emulated

RESULTS = Path(__file__).resolve().parent / "results"


def measure_model(label: str, precision: str, args: argparse.Namespace) -> dict:
    """The peaks at the two small batches, the projection, and (when searched) the searched batch."""
    probe = cpu_peak_measure(label, mode="train", img_size=args.img_size, precision=precision, threads=args.threads,
                             timeout_s=args.probe_timeout)

    @functools.cache
    def measure(batch: int) -> float:
        start = time.perf_counter()
        peak = probe(batch)
        print(f"  {label} {precision} batch {batch}: {peak / MIB:.0f} MiB ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
        return peak

    small, large = args.batches
    budget = args.budget * GIB
    points = {batch: measure(batch) for batch in (small, large)}
    result = dict(model=label, precision=precision, img_size=args.img_size, budget_gib=args.budget,
                  peak_mib={str(b): v / MIB for b, v in points.items()},
                  projected=projected_batch((small, points[small]), (large, points[large]), budget))
    if args.search == "always":
        found = largest_batch(measure, budget, min_batch=2, max_batch=args.max_batch, known=points)
        result.update(searched=found.max_batch, probes=[[b, v / MIB] for b, v in found.probes])
    print(f"{label} {precision}: projected {result['projected']}, searched {result.get('searched', '-')}",
          file=sys.stderr, flush=True)
    return result


def best(result: dict) -> tuple[int, str]:
    """The searched batch where there is one, else the projected one, and which it is."""
    return (result["searched"], "searched") if "searched" in result else (result["projected"], "projected")


def markdown(results: list[dict], models: list[str], args: argparse.Namespace, command: str) -> str:
    small, large = args.batches
    lines = [f"{cpu_line()}; torch {torch.__version__}; bf16 {'emulated' if bf16_is_emulated('cpu') else 'native'} here. "
             f"{args.img_size} px, training, within {args.budget:g} GiB of process memory (the PyTorch runtime "
             "included).", "",
             f"| model | precision | peak at batch {small} | at {large} | projected | searched |",
             "|---|---|---|---|---|---|"]
    for r in results:
        peaks = r["peak_mib"]
        lines.append(f"| {r['model']} | {r['precision']} | {peaks[str(small)]:.0f} MiB | {peaks[str(large)]:.0f} MiB "
                     f"| {r['projected']} | {r.get('searched', '-')} |")
    if len(models) == 2:
        lines += ["", f"| precision | {models[0]} / {models[1]} |", "|---|---|"]
        for precision in args.precisions:
            (a, how_a), (b, how_b) = (best(next(r for r in results if r["model"] == m and r["precision"] == precision))
                                      for m in models)
            how = how_a if how_a == how_b else f"{how_a} / {how_b}"
            lines.append(f"| {precision} | {a / b:.2f}x ({how}) |")
    return "\n".join(lines + ["", f"Reproduce: `{command}`"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tresnet_m:memory_efficient,resnet50")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--budget", type=float, default=3.0, metavar="GIB", help="memory budget (default: 3)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batches", default="8,16", help="the two batches of the projection (default: 8,16)")
    parser.add_argument("--search", choices=("always", "never"), default="always",
                        help="search the largest batch (always, the default) or only project it (never)")
    parser.add_argument("--probe-timeout", type=float, default=3600.0, metavar="S",
                        help="seconds one probe may take (default: %(default)g)")
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    args = parser.parse_args(argv)
    args.batches = tuple(int(b) for b in args.batches.split(","))
    args.precisions = args.precisions.split(",")
    models = args.models.split(",")
    results = [measure_model(m, p, args) for p in args.precisions for m in models]
    command = command_line("benchmarks/largest_batch.py", argv)
    table = markdown(results, models, args, command)
    print(table)
    record = machine_record("largest_batch_cpu", command, bf16_emulated=bf16_is_emulated("cpu"), results=results)
    print(f"wrote {write_text(args.out / 'largest_batch_cpu.json', json.dumps(record, indent=2) + chr(10))}",
          file=sys.stderr)
    print(f"wrote {write_text(args.out / 'largest_batch_cpu.md', table)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

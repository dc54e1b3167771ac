"""The peak-memory probe's cheap first step: two full training steps against a first step on two images of the
batch followed by one full step, side by side, in the same fresh-process probe the batch search uses.

Training peaks from the second step on, once SGD's momentum sits beside the gradients; the first step only
creates that state. Running it on two images instead of the whole batch halves a probe's time, which matters
where a probe takes minutes (bf16 emulated on a CPU without AVX-512 BF16 or AMX). This script measures what it
costs in accuracy: the relative difference of the two ways' median peaks over ``--repeats`` probes each, which
must stay within ``--tolerance``, beside each way's own spread (the peak resident size of the same probe varies
by a few percent from one process to the next).

Prints a table and writes ``probe_first_step_cpu.json`` and ``.md`` under ``--out``:

    python benchmarks/probe_first_step.py                         # TResNet-M lean and ResNet50, batches 16 and 48
    python benchmarks/probe_first_step.py --models genet_light --batches 4 --img-size 64 --out /tmp   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from tresnet.bench import command_line, cpu_line, machine_record
from tresnet.bench.batch_search import FIRST_STEP_IMAGES, probe_peak_rss
from tresnet.bench.memory import MIB
from tresnet.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"
WAYS = {"two full steps": None, f"first step on {FIRST_STEP_IMAGES} images": FIRST_STEP_IMAGES}


def measure(label: str, batch: int, args: argparse.Namespace) -> dict:
    """Each way's peaks (MiB, one per repeat, the ways in turns), their median and spread (max - min, in percent of
    the median) and the median seconds for ``label`` at ``batch``; and the relative difference of the medians."""
    row: dict = dict(model=label, batch=batch, precision=args.precision)
    runs: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way, first in WAYS.items():
            start = time.perf_counter()
            reply = probe_peak_rss(label, batch, img_size=args.img_size, precision=args.precision,
                                   threads=args.threads, first_step_images=first, timeout_s=args.probe_timeout)
            runs[way].append((reply["train_peak_rss_bytes"] / MIB, time.perf_counter() - start))
    for way, got in runs.items():
        peaks = [peak for peak, _ in got]
        median = statistics.median(peaks)
        row[way] = dict(peaks_mib=peaks, peak_mib=median, spread_pct=100 * (max(peaks) - min(peaks)) / median,
                        seconds=statistics.median(s for _, s in got))
    full, cheap = (row[way]["peak_mib"] for way in WAYS)
    row["relative_difference"] = cheap / full - 1
    print(f"{label} batch {batch}: {full:.0f} against {cheap:.0f} MiB ({row['relative_difference']:+.1%})",
          file=sys.stderr, flush=True)
    return row


def markdown(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    full, cheap = WAYS
    lines = [f"{cpu_line()}; torch {torch.__version__}. Peak resident memory of a fresh process, training at "
             f"{args.img_size} px under {args.precision}, the PyTorch runtime included: the median of {args.repeats} "
             "probes each (the ways in turns), the spread (max - min) of those probes, and the median seconds.", "",
             f"| model | batch | {full} | spread | s | {cheap} | spread | s | difference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [f"{row[way]['peak_mib']:.0f} MiB | {row[way]['spread_pct']:.1f}% | {row[way]['seconds']:.0f}"
                 for way in WAYS]
        lines.append(f"| {row['model']} | {row['batch']} | {' | '.join(cells)} | {row['relative_difference']:+.1%} |")
    return "\n".join(lines + ["", f"Reproduce: `{command}`"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tresnet_m:memory_efficient,resnet50")
    parser.add_argument("--batches", default="16,48")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="probes of each way (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=0.03,
                        help="largest relative difference of the medians (default: %(default)s)")
    parser.add_argument("--probe-timeout", type=float, default=3600.0, metavar="S")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    args = parser.parse_args(argv)
    rows = [measure(m, int(b), args) for m in args.models.split(",") for b in args.batches.split(",")]
    command = command_line("benchmarks/probe_first_step.py", argv)
    table = markdown(rows, args, command)
    worst = max(abs(row["relative_difference"]) for row in rows)
    ok = worst <= args.tolerance
    print(table + f"\n{'PASS' if ok else 'FAIL'}  largest difference {worst:.1%} (at most {args.tolerance:.0%})")
    record = machine_record("probe_first_step_cpu", command, tolerance=args.tolerance, largest_difference=worst,
                            rows=rows)
    print(f"wrote {write_text(args.out / 'probe_first_step_cpu.json', json.dumps(record, indent=2) + chr(10))}",
          file=sys.stderr)
    print(f"wrote {write_text(args.out / 'probe_first_step_cpu.md', table)}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

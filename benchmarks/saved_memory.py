"""Activation memory per image in fp32 and under bf16 / fp16 autocast: ours (default and memory_efficient), timm's
TResNet-M and ResNet50, measured as a slope between two batches with the per-step constant set apart.

For each model, precision and input side, :func:`tresnet.bench.memory.saved_memory` runs a training-mode forward
at two batches (4 and 12 by default) and counts every tensor autograd keeps for backward, each storage once,
parameters excluded. The slope between the two is what each further image costs; what is left at batch 0 is the
per-step constant (under autocast, mainly the low-precision copy of the weights that every step makes).

Then one ``tresnet benchmark`` run per side under ``--precision bf16`` (inference only, it is the static column
that is compared) gives the benchmark's own ``saved MiB/img`` (its slope between batches 2 and 4), which must
agree with the slope here; the figure the benchmark reported before the slope (one batch of 2, divided by 2,
the constant included) is shown beside it.

Prints the tables, the checks the numbers must pass, and writes ``saved_memory_<device>.json`` and ``.md``:

    python benchmarks/saved_memory.py                       # 128 and 224 px, batches 4 and 12 (~15 min here)
    python benchmarks/saved_memory.py --sizes 64 --batches 2,4 --out /tmp   # a quick look
    python benchmarks/saved_memory.py --device cuda                         # on a GPU: saved_memory_cuda.*
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tresnet.bench import (
    BenchConfig,
    BenchRow,
    command_line,
    cpu_line,
    machine_record,
    run_benchmark,
)
from tresnet.bench.memory import MIB, SavedMemory, saved_memory
from tresnet.bench.specs import BuildOptions, parse_model_spec
from tresnet.bench.targets import build_target
from tresnet.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {
    "tresnet_m": "ours, default (In-Place ABN)",
    "tresnet_m:memory_efficient": "ours, `memory_efficient=True`",
    "timm:tresnet_m": "timm `tresnet_m`",
    "resnet50": "ResNet50 (timm)",
}
LEAN, DEFAULT, TIMM = "tresnet_m:memory_efficient", "tresnet_m", "timm:tresnet_m"
PRECISIONS = ("fp32", "bf16", "fp16")
# What the numbers must show: the lean model's share of timm's, the default's autocast share of its own fp32,
# the benchmark's column against the slope.
LEAN_SHARE_MAX, AUTOCAST_SHARE_MAX, COLUMN_TOLERANCE = 0.55, 0.60, 0.10


def measure(sizes: list[int], batches: tuple[int, int], device: torch.device
            ) -> dict[int, dict[str, dict[str, SavedMemory]]]:
    """``{side: {model: {precision: SavedMemory}}}``."""
    table: dict[int, dict[str, dict[str, SavedMemory]]] = {}
    for side in sizes:
        table[side] = {}
        for label in MODELS:
            module = build_target(parse_model_spec(label), BuildOptions(device, img_size=side)).module
            table[side][label] = {p: saved_memory(module, side, batches, precision=p, device=device)
                                  for p in PRECISIONS}
            figures = ", ".join(f"{p} {s.bytes_per_image / MIB:.2f}" for p, s in table[side][label].items())
            print(f"{side} px {label}: MiB per image {figures}", file=sys.stderr, flush=True)
    return table


def benchmark_columns(sizes: list[int], threads: int | None, device: torch.device) -> dict[int, list[BenchRow]]:
    """The benchmark's own rows under bf16 at each side (inference timed once: the static columns are wanted)."""
    return {side: run_benchmark(BenchConfig(models=",".join(MODELS), mode="infer", device=str(device), precision="bf16",
                                            img_size=side, batch_size=2, warmup=0, repeats=1, threads=threads,
                                            timer="cpu" if threads == 1 else "wall", peak_memory=False))
            for side in sizes}


def checks(table: dict, columns: dict[int, list[BenchRow]]) -> list[tuple[str, bool]]:
    """Each claim with whether the measurement meets it."""
    found = []
    for side, per_model in table.items():
        for p in PRECISIONS:
            share = per_model[LEAN][p].bytes_per_image / per_model[TIMM][p].bytes_per_image
            found.append((f"{side} px {p}: memory_efficient {share:.3f}x timm's (at most {LEAN_SHARE_MAX})",
                          share <= LEAN_SHARE_MAX))
        for p in PRECISIONS[1:]:
            share = per_model[DEFAULT][p].bytes_per_image / per_model[DEFAULT]["fp32"].bytes_per_image
            found.append((f"{side} px {p}: the default {share:.3f}x its fp32 (at most {AUTOCAST_SHARE_MAX})",
                          share <= AUTOCAST_SHARE_MAX))
        for row in columns.get(side, []):
            slope = per_model[row.model]["bf16"].bytes_per_image / MIB
            off = abs(row.saved_mib_per_img / slope - 1)
            found.append((f"{side} px bf16: benchmark column of {row.model} {row.saved_mib_per_img:.2f} MiB, "
                          f"{off:.1%} from the slope {slope:.2f}", off <= COLUMN_TOLERANCE))
    return found


def old_column_mib(row: BenchRow) -> float:
    """What the benchmark reported before the slope: one batch of 2 (the constant included), divided by 2."""
    return (row.saved_constant_mib + 2 * row.saved_mib_per_img) / 2


def markdown(table: dict, columns: dict[int, list[BenchRow]], batches: tuple[int, int], command: str,
             device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_line()
    lines = [f"{where}; torch {torch.__version__}. Kept for backward per image, MiB: the slope between batches "
             f"{batches[0]} and {batches[1]}; \"+ per step\": what is kept once per step whatever the batch.", ""]
    for side, per_model in table.items():
        lines += [f"**{side} px**", "",
                  "| model | fp32 | bf16 | fp16 | bf16 / fp32 | vs timm: fp32 | bf16 | fp16 | + per step: fp32 "
                  "| bf16 | fp16 |", "|---|" + "---|" * 10]
        for label, name in MODELS.items():
            got = per_model[label]
            per = [got[p].bytes_per_image / MIB for p in PRECISIONS]
            vs = [got[p].bytes_per_image / per_model[TIMM][p].bytes_per_image for p in PRECISIONS]
            const = [got[p].constant_bytes / MIB for p in PRECISIONS]
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in per) + f" | {per[1] / per[0]:.3f}x | "
                         + " | ".join(f"{v:.3f}x" for v in vs) + " | " + " | ".join(f"{v:.1f}" for v in const) + " |")
        lines.append("")
    if columns:
        lines += ["`tresnet benchmark --precision bf16`, its `saved MiB/img` column (the slope between batches 2 "
                  "and 4) against the slope above, and the figure it gave before (one batch of 2, divided by 2):",
                  "", "| px | model | column | slope above | before |", "|---|---|---|---|---|"]
        for side, rows in columns.items():
            for row in rows:
                slope = table[side][row.model]["bf16"].bytes_per_image / MIB
                lines.append(f"| {side} | {MODELS[row.model]} | {row.saved_mib_per_img:.2f} | {slope:.2f} | "
                             f"{old_column_mib(row):.2f} |")
        lines.append("")
    return "\n".join(lines + [f"Reproduce: `{command}`"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128,224", help="input sides, comma-separated (default: %(default)s)")
    parser.add_argument("--batches", default="4,12", help="the two batches of the slope (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-benchmark-column", action="store_true", help="skip the tresnet benchmark runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    small, large = (int(b) for b in args.batches.split(","))
    device = torch.device(args.device)
    table = measure(sizes, (small, large), device)
    columns = {} if args.no_benchmark_column else benchmark_columns(sizes, args.threads, device)
    command = command_line("benchmarks/saved_memory.py", argv)
    report = markdown(table, columns, (small, large), command, device)
    found = checks(table, columns)
    print(report)
    for claim, ok in found:
        print(f"{'PASS' if ok else 'FAIL'}  {claim}")
    record = machine_record(
        f"saved_memory_{device.type}", command, device=str(device), batches=[small, large],
        checks=[dict(claim=c, ok=ok) for c, ok in found],
        saved={str(side): {label: {p: s.to_dict() for p, s in got.items()} for label, got in per_model.items()}
               for side, per_model in table.items()},
        benchmark_rows={str(side): [row.to_dict() for row in rows] for side, rows in columns.items()})
    stem = f"saved_memory_{device.type}"
    print(f"wrote {write_text(args.out / f'{stem}.json', json.dumps(record, indent=2) + chr(10))}", file=sys.stderr)
    print(f"wrote {write_text(args.out / f'{stem}.md', report)}", file=sys.stderr)
    return 0 if all(ok for _, ok in found) else 1


if __name__ == "__main__":
    raise SystemExit(main())

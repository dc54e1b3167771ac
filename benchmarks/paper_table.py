"""Measure the paper's speed table (TResNet-M, ours and timm's, against the paper's peers) and save it.

    python benchmarks/paper_table.py                           # CPU, fp32, batch 8, each model's own size
    python benchmarks/paper_table.py --device cuda --precision amp --batch-size auto
    python benchmarks/paper_table.py --device cuda --precision amp --batch-size auto --channels-last

Writes ``benchmarks/results/<device>_<precision>[_cl][_compiled][_<px>].{json,csv,png,md}``: the rows,
the plot of top-1 against images/s, and a Markdown table with the ratios of TResNet-M to timm's
TResNet-M and to ResNet50 (all from the same run, models measured in turns).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tresnet.bench import (
    BenchConfig,
    BenchRow,
    format_ratios,
    format_table,
    markdown_table,
    plot_results,
    ratio_rows,
    run_benchmark,
    write_csv,
    write_json,
)
from tresnet.bench.report import settings_line
from tresnet.bench.rows import as_rows
from tresnet.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"


def result_stem(config: BenchConfig, device_type: str) -> str:
    """``cpu_fp32``, ``cuda_amp_cl``, ...: the settings that change the numbers, as a file name."""
    parts = [device_type, config.precision]
    if config.channels_last:
        parts.append("cl")
    if config.compile:
        parts.append("compiled")
    if config.img_size:
        parts.append(str(config.img_size))
    if config.timer == "cpu":
        parts.append(f"cputime_{config.threads or 'all'}t")
    return "_".join(parts)


def markdown_report(rows: list[BenchRow], command: str, elapsed_s: float) -> str:
    """The docs block: settings, the table, the ratios and the command that made them."""
    lines = [
        f"Device: {settings_line(rows[0])}; {elapsed_s / 60:.1f} min in all.",
        "",
        markdown_table(rows),
        "",
        "| ratio | inference | training | max batch |",
        "|---|---|---|---|",
    ]
    for entry in ratio_rows(rows):
        cells = [f"{entry[k]:.2f}x" if entry[k] is not None else "-" for k in ("infer", "train", "max_batch")]
        lines.append(f"| {entry['numerator']} / {entry['denominator']} | {' | '.join(cells)} |")
    lines += ["", f"Reproduce: `{command}`", ""]
    return "\n".join(lines)


def redraw(json_path: Path) -> int:
    """Rewrite the CSV, PNG and Markdown next to a saved JSON run (the Markdown keeps its first and last lines)."""
    rows = as_rows(json.loads(json_path.read_text()))
    stem = json_path.with_suffix("")
    old = Path(f"{stem}.md").read_text().strip().splitlines() if Path(f"{stem}.md").exists() else []
    write_csv(rows, f"{stem}.csv")
    plot_results(rows, f"{stem}.png")
    body = markdown_report(rows, "", 0.0).strip().splitlines()
    if len(old) >= 2:
        body[0], body[-1] = old[0], old[-1]
    write_text(f"{stem}.md", "\n".join(body) + "\n")
    print(format_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batch-size", default="8", help="an int or 'auto' (default: 8)")
    parser.add_argument("--memory-budget", type=float, default=None, metavar="GIB")
    parser.add_argument("--img-size", type=int, default=None, help="default: each model's own (the paper's)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timer", default="wall", help="wall, or cpu (process CPU time) on a shared CPU")
    parser.add_argument("--extra", default="", help="more models to measure, comma-separated (e.g. tresnet_m:bn)")
    parser.add_argument("--no-peak-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    parser.add_argument("--from-json", type=Path, default=None, metavar="PATH",
                        help="measure nothing: redraw the table, plot and Markdown of a saved run")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        return redraw(args.from_json)

    models = "paper" + (f",{args.extra}" if args.extra else "")
    config = BenchConfig(models=models, mode="both", device=args.device, precision=args.precision,
                         channels_last=args.channels_last, compile=args.compile, batch_size=args.batch_size,
                         memory_budget_gib=args.memory_budget, img_size=args.img_size, warmup=args.warmup,
                         repeats=args.repeats, iters=args.iters, threads=args.threads, timer=args.timer,
                         peak_memory=not args.no_peak_memory)
    start = time.perf_counter()
    rows = run_benchmark(config, progress=True)
    elapsed = time.perf_counter() - start
    stem = args.out / result_stem(config, rows[0].device.split(":")[0])
    command = "python benchmarks/paper_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(format_table(rows))
    print()
    print(format_ratios(rows))
    for path in (write_json(rows, f"{stem}.json"), write_csv(rows, f"{stem}.csv"), plot_results(rows, f"{stem}.png")):
        print(f"wrote {path}", file=sys.stderr)
    report = markdown_report(rows, command.strip(), elapsed)
    print(f"wrote {write_text(f'{stem}.md', report)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""int8 on the CPU by both backends, PyTorch's PT2E (``NAME:int8``) and ONNX Runtime (``NAME:onnx_int8``), beside
the plain fp32 model, in one run; and the backend that ``--int8-backend auto`` takes on this CPU.

One run of :func:`tresnet.bench.run_benchmark` times every path of every model in turns (``tresnet_m`` at 224 px
and ``genet_normal`` at its 192 px by default), the same as

    python3 -m tresnet benchmark --models tresnet_m,tresnet_m:int8,tresnet_m:onnx_int8,genet_normal,... \
        --device cpu --mode infer --batch-size 8 --threads 1 --timer cpu --warmup 2 --repeats 10 --no-peak-memory

and prints, per model, each backend's img/s, its ratio to fp32 and to the other backend, which was faster
(neither when they differ by less than the larger interquartile range of the two) and which ``auto`` takes here (:func:`tresnet.deploy.inference.resolve_int8_backend`: PT2E on a CPU with AMX, ONNX
Runtime elsewhere). One thread timed by the process's CPU time by default, which a shared machine does not
skew. The int8 paths are calibrated on random images: speed does not depend on them.

Writes, under ``--out``, ``cpu_int8_backends_<isa>_<timer>_<N>t.json`` (the machine with its ISA flags, the
load, the rule's choice, the ratios and the rows) and ``.md`` (the table for ``docs/deploy.md``), where
``<isa>`` is the CPU's int8 class: ``amx``, ``avx512_vnni``, ``avx512`` or ``avx2``:

    python benchmarks/bench_int8_backends.py
    python benchmarks/bench_int8_backends.py --models genet_light --img-size 64 --repeats 2 --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tresnet.bench import BenchConfig, BenchRow, command_line, cpu_flags, machine_record, run_benchmark
from tresnet.bench.forms import INT8_BACKEND_FORMS
from tresnet.bench.machine import load_average
from tresnet.bench.report import format_speed, format_table, speed_ratio
from tresnet.deploy.inference import INT8_BACKENDS, resolve_int8_backend
from tresnet.errors import TResNetError
from tresnet.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"
BACKEND_NAMES = {"pt2e": "PT2E", "onnx": "ONNX Runtime"}


def isa_class(flags: list[str]) -> str:
    """The CPU's class for int8 kernels: ``amx``, ``avx512_vnni``, ``avx512``, ``avx2`` or ``generic``."""
    for flag, name in (("amx_int8", "amx"), ("avx512_vnni", "avx512_vnni"), ("avx512f", "avx512"), ("avx2", "avx2")):
        if flag in flags:
            return name
    return "generic"


def config_for(args: argparse.Namespace) -> BenchConfig:
    """The benchmark of fp32 and both int8 backends of every model."""
    models = [f"{model}{':' + form if form else ''}" for model in args.models.split(",")
              for form in ("", *INT8_BACKEND_FORMS.values())]
    return BenchConfig(models=",".join(models), mode="infer", device="cpu", batch_size=args.batch_size,
                       img_size=args.img_size, warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                       timer=args.timer, peak_memory=False)


def command_for(config: BenchConfig) -> str:
    """The ``tresnet benchmark`` command line that measures ``config``."""
    size = f" --img-size {config.img_size}" if config.img_size else ""
    return (f"python3 -m tresnet benchmark --models {config.models} --device cpu --mode infer "
            f"--batch-size {config.batch_size}{size} --threads {config.threads} --timer {config.timer} "
            f"--warmup {config.warmup} --repeats {config.repeats} --no-peak-memory")


def compare(rows: list[BenchRow], auto: str) -> list[dict]:
    """Per model: each backend's img/s and ratio to fp32, ONNX Runtime over PT2E, the faster and ``auto``'s."""
    found = []
    for plain in (row for row in rows if row.form is None):
        label = {backend: f"{plain.name}:{form}" for backend, form in INT8_BACKEND_FORMS.items()}
        speed = {backend: next(r.infer.img_per_s for r in rows if r.model == label[backend]) for backend in INT8_BACKEND_FORMS}
        vs_fp32 = {backend: speed_ratio(rows, label[backend], plain.model, "infer") for backend in INT8_BACKEND_FORMS}
        onnx_over_pt2e = speed_ratio(rows, label["onnx"], label["pt2e"], "infer")
        spread_pct = max(r.infer.img_per_s_spread_pct or 0.0 for r in rows if r.model in label.values())
        found.append(dict(model=plain.name, img_size=plain.img_size, fp32_img_per_s=plain.infer.img_per_s,
                          img_per_s=speed, vs_fp32=vs_fp32, onnx_over_pt2e=onnx_over_pt2e, spread_pct=spread_pct,
                          faster=faster(onnx_over_pt2e, spread_pct), auto=auto))
    return found


def faster(onnx_over_pt2e: float, spread_pct: float) -> str | None:
    """``onnx`` or ``pt2e``; None when the two differ by less than the larger of their spreads."""
    if abs(onnx_over_pt2e - 1.0) * 100 <= spread_pct:
        return None
    return "onnx" if onnx_over_pt2e > 1 else "pt2e"


def markdown(record: dict, rows: list[BenchRow]) -> str:
    """The docs table: fp32, PT2E and ONNX Runtime img/s per model, the ratios, the faster and ``auto``'s."""
    first = rows[0]
    clock = "CPU time of the process" if first.timer == "cpu" else "wall-clock time"
    lines = [f"CPU: {record['cpu']} ({record['cpu_count']} cores); speed-relevant ISA flags: "
             f"{', '.join(record['cpu_flags']) or 'none'}; {record['versions']}.",
             f"Batch {first.infer.batch_size}, fp32 images, fresh weights, int8 calibrated on random images (speed "
             f"only); {first.threads} thread(s), {clock}, median of {first.repeats} timed turns after "
             f"{first.warmup} warm-up turns, every path measured in turns in one run; ±% = interquartile range. "
             f"Load average (1 min) before/after: {_fmt_load(record['load_avg_1min_before'])}/"
             f"{_fmt_load(record['load_avg_1min_after'])}.",
             "", "| model | px | fp32 img/s | PT2E img/s | ONNX Runtime img/s | PT2E / fp32 | ONNX Runtime / fp32 "
                 "| ONNX Runtime / PT2E | faster | `auto` takes |", "|---|---|---|---|---|---|---|---|---|---|"]
    by_label = {row.model: row for row in rows}
    for c in record["comparisons"]:
        speeds = [format_speed(by_label[f"{c['model']}{':' + v if v else ''}"], "infer")
                  for v in ("", *INT8_BACKEND_FORMS.values())]
        lines.append(f"| {c['model']} | {c['img_size']} | {' | '.join(speeds)} | {c['vs_fp32']['pt2e']:.2f}x | "
                     f"{c['vs_fp32']['onnx']:.2f}x | {c['onnx_over_pt2e']:.2f}x | {_winner(c)} | {c['auto']} |")
    lines += ["", f"Reproduce: `{record['command']}`, which runs", "", f"    {record['benchmark_command']}"]
    return "\n".join(lines) + "\n"


def _fmt_load(load: float | None) -> str:
    return "-" if load is None else f"{load:.2f}"


def _winner(comparison: dict) -> str:
    if comparison["faster"] is None:
        return f"neither (within ±{comparison['spread_pct']:.0f}%)"
    return BACKEND_NAMES[comparison["faster"]]


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
    parser.add_argument("--img-size", type=int, default=None, help="default: each model's own (224, 192)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timer", default="cpu", help="cpu (default: robust to a shared machine) or wall")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, argv: list[str] | None) -> None:
    """One run; print the table and the comparison; write the JSON and Markdown files."""
    config = config_for(args)
    auto = resolve_int8_backend("auto")
    before = load_average()
    rows = run_benchmark(config, progress=sys.stderr.isatty())
    record = machine_record("int8_backends_cpu", command_line("benchmarks/bench_int8_backends.py", argv),
                            benchmark_command=command_for(config), versions=_versions(), threads=config.threads,
                            timer=config.timer, load_avg_1min_before=before, load_avg_1min_after=load_average(),
                            int8_backends=list(INT8_BACKENDS), auto_backend=auto,
                            comparisons=compare(rows, auto), rows=[row.to_dict() for row in rows])
    print(format_table(rows))
    name = f"cpu_int8_backends_{isa_class(cpu_flags())}_{'cputime' if config.timer == 'cpu' else 'wall'}_{config.threads}t"
    print(f"wrote {write_text(args.out / f'{name}.json', json.dumps(record, indent=2) + chr(10))}", file=sys.stderr)
    table = markdown(record, rows)
    print(table)
    print(f"wrote {write_text(args.out / f'{name}.md', table)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        measure(args, argv)
    except TResNetError as error:  # a bad option or a missing package: one line, as the command line prints it
        print(f"bench_int8_backends: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU inference speed of the deployment paths against the plain eval model, in one run.

Three ways to run the same network on the same images: the plain eval-mode model, the fused model
(:func:`tresnet.deploy.fuse`) and an ONNX Runtime session on the fused model's ONNX export. The
repetitions are interleaved (plain, fused, onnx, plain, ...) so that a busy machine slows all three
alike; each figure is the median. Before timing, the outputs are compared with the plain model's.
ONNX Runtime gets as many intra-op threads as PyTorch.

    python benchmarks/bench_deploy.py --model tresnet_m --img-size 224 --batch-size 8 --reps 15 \
        --threads 1,2 --json benchmarks/results/deploy_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import tresnet
from tresnet.deploy import fuse
from tresnet.deploy.export import DEFAULT_OPSET, onnx_session, prepare_for_export, require_onnx


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _export_onnx(model: torch.nn.Module, path: Path, img_size: int) -> None:
    """The fused model as ONNX with a dynamic batch (the unchecked core of `tresnet export`)."""
    import warnings

    prepared = prepare_for_export(model, fused=True)
    example = torch.rand(1, 3, img_size, img_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(prepared, (example,), str(path), dynamo=False, opset_version=DEFAULT_OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def time_paths(model: torch.nn.Module, fused: torch.nn.Module, onnx_path: Path | None, images: torch.Tensor,
               threads: int, reps: int, warmup: int) -> dict:
    """Median time of each path at ``threads`` intra-op threads, the repetitions interleaved."""
    torch.set_num_threads(threads)
    runners = {"plain eval": model, "fused": fused}
    if onnx_path is not None:
        session = onnx_session(onnx_path, threads=threads)
        input_name = session.get_inputs()[0].name
        runners["onnxruntime"] = lambda x: torch.from_numpy(session.run(None, {input_name: x.numpy()})[0])
    load_before = _load()
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        reference = model(images)
        max_diff = {name: ((fn(images) - reference).abs().max() / reference.abs().max()).item()
                    for name, fn in runners.items()}
        for _ in range(warmup):
            for fn in runners.values():
                fn(images)
        for _ in range(reps):
            for name, fn in runners.items():
                start = time.perf_counter()
                fn(images)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain eval"])
    rows = []
    for name, ts in times.items():
        median = statistics.median(ts)
        rows.append(dict(name=name, median_ms=median * 1e3, min_ms=min(ts) * 1e3,
                         img_per_s=images.shape[0] / median, speedup=base / median,
                         max_rel_diff_vs_plain=max_diff[name]))
    return dict(threads=threads, load_avg_1min_before=load_before, load_avg_1min_after=_load(), rows=rows)


def run(args: argparse.Namespace) -> dict:
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    torch.manual_seed(0)
    model = tresnet.create_model(args.model).eval()
    fused = fuse(model)
    images = torch.rand(args.batch_size, 3, args.img_size, args.img_size)
    ort_version = None
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = None
        if not args.no_onnx:
            _, ort = require_onnx()
            ort_version = ort.__version__
            onnx_path = Path(tmp) / f"{args.model}.onnx"
            _export_onnx(model, onnx_path, args.img_size)
        runs = [time_paths(model, fused, onnx_path, images, n, args.reps, args.warmup) for n in thread_counts]
    return dict(
        model=args.model, img_size=args.img_size, batch_size=args.batch_size, reps=args.reps,
        warmup=args.warmup, device="cpu", cpu=_cpu_name(), cpu_count=os.cpu_count(),
        torch=torch.__version__, onnxruntime=ort_version, numpy=np.__version__, python=platform.python_version(),
        tresnet=tresnet.__version__, date=datetime.now(UTC).isoformat(timespec="seconds"),
        command=" ".join(["python", *sys.argv]), runs=runs,
    )


def print_table(result: dict) -> None:
    print(f"{result['model']} on CPU ({result['cpu']}), {result['img_size']} px, batch {result['batch_size']}, "
          f"median of {result['reps']} interleaved runs")
    header = f"{'threads':>7}  {'path':<14}{'ms/batch':>10}{'img/s':>9}{'vs plain':>10}{'max rel diff':>14}"
    print(header)
    print("-" * len(header))
    for run_ in result["runs"]:
        for r in run_["rows"]:
            print(f"{run_['threads']:>7}  {r['name']:<14}{r['median_ms']:>10.1f}{r['img_per_s']:>9.2f}"
                  f"{r['speedup']:>9.2f}x{r['max_rel_diff_vs_plain']:>14.2e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tresnet_m")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions of each path (interleaved)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", default="",
                        help="intra-op thread counts, comma-separated, one timed run each (default: torch's)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime row")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

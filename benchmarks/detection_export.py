"""A detector exported: what the export check found and how fast each form runs on the CPU, side by side.

The detector (``--checkpoint``, a file of ``tresnet train --task detection``; else ``--model`` as FCOS with random
weights at ``--min-size``) is exported by :func:`tresnet.deploy.export_model` as TorchScript and as ONNX, each
checked as ``tresnet export`` checks it. Then eager PyTorch (the detector in eval mode, no autograd), the TorchScript
file (``torch.jit.load``), the ONNX file (ONNX Runtime), and the detector folded as the files are
(:func:`tresnet.deploy.fuse`, eager) detect on the same seeded random images at the detector's
own size, one image per call, timed in turns (median of ``--repeats`` turns after ``--warmup``), all on
``--threads`` threads. The speed of each file is stated as a ratio to eager PyTorch measured in the same run.

Prints and writes (under ``--out``) ``detection_export_cpu.json`` and ``detection_export_cpu.md``.

    python benchmarks/detection_export.py --checkpoint runs/det/best.safetensors   # the digits demo's detector
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision  # noqa: F401 - registers torchvision::nms, which the TorchScript detector calls

import tresnet
from tresnet.bench import command_line, machine_record
from tresnet.deploy import export_model, fuse, onnx_session
from tresnet.files import write_text

RESULTS = Path(__file__).resolve().parent / "results"
IMAGES = 8


def _detector(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint:
        return tresnet.load_network(checkpoint_path=args.checkpoint).eval()
    return tresnet.create_detector(args.model, num_classes=10, min_size=args.min_size, fpn_channels=64).eval()


def _runners(detector: torch.nn.Module, folder: Path, threads: int) -> tuple[dict[str, Callable], list[dict]]:
    """Each form as a function of one image, and the export reports."""
    folded = fuse(detector)
    reports, runners = [], {"eager PyTorch": lambda image: detector([image]),
                            "eager PyTorch, folded": lambda image: folded([image])}
    for format, name in (("torchscript", "det.pt"), ("onnx", "det.onnx")):
        start = time.perf_counter()
        report = export_model(detector, folder / name, format=format)
        reports.append(dict(format=format, export_s=time.perf_counter() - start,
                            file_mb=(folder / name).stat().st_size / 2**20, network_error=report.max_rel_diff,
                            fp32_error=report.fp32_error, limit=report.limit, boxes_compared=report.boxes_checked))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(folder / "det.pt")).eval()
    session = onnx_session(folder / "det.onnx", threads=threads)
    threshold = np.array(detector.score_thresh, dtype=np.float32)

    def run_scripted(image):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # scripted detectors return (losses, detections)
            return scripted([image])

    runners["TorchScript"] = run_scripted
    runners["ONNX Runtime"] = lambda image: session.run(None, {"image": image.numpy(), "score_threshold": threshold})
    return runners, reports


def _time(runners: dict[str, Callable], images: list[torch.Tensor], warmup: int, repeats: int) -> dict[str, float]:
    """Seconds per image of each runner: the median over turns, the runners taking turns."""
    seconds = {name: [] for name in runners}
    with torch.no_grad():
        for turn in range(warmup + repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                for image in images:
                    run(image)
                if turn >= warmup:
                    seconds[name].append((time.perf_counter() - start) / len(images))
    return {name: statistics.median(values) for name, values in seconds.items()}


def markdown(record: dict) -> str:
    lines = [f"CPU: {record['cpu']} ({record['cpu_count']} cores); speed-relevant ISA flags: "
             f"{', '.join(record['cpu_flags']) or 'none'}; torch {torch.__version__}, {record['threads']} thread(s).",
             f"Detector: {record['detector']}; {IMAGES} random images of {record['img_size']} px, one per call, "
             f"median of {record['repeats']} turns, the forms timed in turns.", "",
             "| form | img/s | speed against eager PyTorch |", "|---|---|---|"]
    eager = record["seconds_per_image"]["eager PyTorch"]
    for name, seconds in record["seconds_per_image"].items():
        lines.append(f"| {name} | {1 / seconds:.1f} | {eager / seconds:.2f}x |")
    lines += ["", "| file | export s | MB | network error (of the largest output) | PyTorch fp32's | limit | "
                  "boxes compared whole |", "|---|---|---|---|---|---|---|"]
    for r in record["exports"]:
        lines.append(f"| {r['format']} | {r['export_s']:.1f} | {r['file_mb']:.1f} | {r['network_error']:.2g} | "
                     f"{r['fp32_error']:.2g} | {r['limit']:.2g} | {r['boxes_compared']} |")
    return "\n".join(lines + ["", f"Reproduce: `{record['command']}`"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a detection checkpoint (default: --model with random weights)")
    parser.add_argument("--model", default="genet_light", help="the backbone without --checkpoint (%(default)s)")
    parser.add_argument("--min-size", type=int, default=128, help="its detector's size without --checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector = _detector(args)
    side = detector.transform.min_size[-1]
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, side, side, generator=gen) for _ in range(IMAGES)]
    with tempfile.TemporaryDirectory(prefix="tresnet-bench-") as folder:
        runners, reports = _runners(detector, Path(folder), args.threads)
        seconds = _time(runners, images, args.warmup, args.repeats)
    cfg = detector.pretrained_cfg
    record = machine_record("detection_export_cpu", command_line("benchmarks/detection_export.py", argv),
                            detector=f"{cfg['head']} on {cfg['model']}" + (f" ({args.checkpoint})" if args.checkpoint
                                                                           else ", random weights"),
                            img_size=side, threads=args.threads, repeats=args.repeats, torch_version=torch.__version__,
                            exports=reports, seconds_per_image=seconds)
    print(f"wrote {write_text(args.out / 'detection_export_cpu.json', json.dumps(record, indent=2) + chr(10))}",
          file=sys.stderr)
    table = markdown(record)
    print(table)
    print(f"wrote {write_text(args.out / 'detection_export_cpu.md', table)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Is validation limited by decoding or by the model? Images per second of each part alone, and together.

Measures, on the same settings as `tresnet validate`:
- the loader alone (decode + resize + crop + to tensor, and the copy to the device), for each --workers value;
- the model alone (forward passes on a batch already on the device);
- both together (the evaluation loop of `tresnet validate`), with the largest --workers value.
When the loader alone is slower than the model alone, more workers (or faster decoding) speed validation up.

    python benchmarks/validate_throughput.py --generate 512 --workers 0,2,4,8 --device cuda --precision amp \
        --json benchmarks/results/validate_throughput_cuda.json
    python benchmarks/validate_throughput.py --data ~/imagenet/val --workers 8,16 --batch-size 256 --precision amp

Without --data, a folder of JPEGs of ImageNet's typical size (500x375) with smooth, photo-like content is
generated in a temporary folder (nothing is downloaded); decoding real photos costs about as much.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tresnet
from tresnet.bench.machine import cpu_name
from tresnet.data import ImageFolderDataset, create_eval_transform, create_loader
from tresnet.files import write_text
from tresnet.inference.evaluate import evaluate
from tresnet.runtime import DEVICE_HELP, PRECISION_HELP, autocast, check_precision, resolve_device
from tresnet.tasks import get_task


def generate_folder(root: Path, images: int, classes: int = 10, size: tuple[int, int] = (500, 375)) -> Path:
    """``images`` JPEGs (quality 90) in ``classes`` folders: smooth colour fields plus mild noise."""
    rng = np.random.default_rng(0)
    width, height = size
    for index in range(images):
        folder = root / f"class{index % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        noise = rng.normal(0, 8, (height, width, 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_img_per_s(dataset, batch_size: int, workers: int, device: torch.device, batches: int,
                     warmup: int) -> float:
    """Images per second the loader delivers on ``device``, after ``warmup`` batches (workers starting)."""
    batches_needed = warmup + batches
    if len(dataset) < batches_needed * batch_size:
        raise SystemExit(f"{len(dataset)} images are too few for {warmup} + {batches} batches of {batch_size}: "
                         f"use --generate with more images, or fewer --batches")
    batches_iter = iter(create_loader(dataset, batch_size, workers, device))
    for _ in range(warmup):
        next(batches_iter)[0].to(device, non_blocking=True)
    _sync(device)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        inputs = next(batches_iter)[0].to(device, non_blocking=True)
        images += len(inputs)
    _sync(device)
    return images / (time.perf_counter() - start)


def model_img_per_s(model, batch_size: int, img_size: int, device: torch.device, precision: str,
                    channels_last: bool, batches: int, warmup: int) -> float:
    """Forward passes per second x batch size on a random batch already on ``device``."""
    inputs = torch.rand(batch_size, 3, img_size, img_size, device=device)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(precision, device):
        for _ in range(warmup):
            model(inputs)
        _sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            model(inputs)
        _sync(device)
    return batches * batch_size / (time.perf_counter() - start)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="an ImageNet-style folder (default: generate one)")
    parser.add_argument("--generate", type=int, default=256, metavar="N", help="images to generate (default 256)")
    parser.add_argument("--model", default="tresnet_m")
    parser.add_argument("--img-size", type=int, help="default: the model's")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts to try (default 0,2)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--precision", default="fp32", help=PRECISION_HELP)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per measurement (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first (default 1)")
    parser.add_argument("--json", metavar="PATH", help="write the measurements as JSON")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, device: torch.device, dataset, img_size: int) -> dict:
    """The loader alone per worker count, the model alone, and both together (the evaluation loop)."""
    workers_list = [int(w) for w in args.workers.split(",")]
    # A head for the folder's classes (1000 for ImageNet): its size barely changes the speed.
    model = tresnet.create_model(args.model, num_classes=len(dataset.classes)).to(device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    loader_rows = []
    for workers in workers_list:
        rate = loader_img_per_s(dataset, args.batch_size, workers, device, args.batches, args.warmup)
        loader_rows.append({"workers": workers, "img_per_s": rate})
        print(f"loader alone, {workers:2d} workers: {rate:9.1f} img/s", flush=True)
    model_rate = model_img_per_s(model, args.batch_size, img_size, device, args.precision, args.channels_last,
                                 args.batches, args.warmup)
    print(f"model alone:                {model_rate:9.1f} img/s", flush=True)
    workers = max(workers_list)
    limit = min(len(dataset), args.batch_size * (args.batches + args.warmup))
    both = evaluate(model, create_loader(dataset, args.batch_size, workers, device), get_task("multiclass").tally(device),
                    precision=args.precision, channels_last=args.channels_last, limit=limit, progress=False)
    print(f"both (validate), {workers:2d} workers: {both.img_per_s:9.1f} img/s "
          f"({both.images} images, start-up included)")
    return dict(loader=loader_rows, model_img_per_s=model_rate,
                validate={"workers": workers, "images": both.images, "img_per_s": both.img_per_s})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    check_precision(args.precision, device)
    cfg = tresnet.get_pretrained_cfg(args.model)
    img_size = args.img_size or int(cfg["input_size"][-1])
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            root = Path(args.data)
        else:
            start = time.perf_counter()
            root = generate_folder(Path(tmp), args.generate)
            print(f"generated {args.generate} JPEGs of 500x375 in {time.perf_counter() - start:.1f} s",
                  file=sys.stderr)
        dataset = ImageFolderDataset(root, create_eval_transform(cfg, img_size))
        measured = measure(args, device, dataset, img_size)
    best = max(measured["loader"], key=lambda row: row["img_per_s"])
    model_rate = measured["model_img_per_s"]
    bound = "the model" if best["img_per_s"] >= model_rate else "decoding"
    print(f"bottleneck: {bound} (best loader {best['img_per_s']:.0f} img/s with {best['workers']} workers, "
          f"model {model_rate:.0f} img/s)")
    if args.json:
        report = dict(
            model=args.model, img_size=img_size, batch_size=args.batch_size, precision=args.precision,
            amp=args.precision == "amp", channels_last=args.channels_last, device=str(device),
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
            data=args.data or f"generated: {args.generate} JPEGs 500x375 q90", images=len(dataset),
            batches=args.batches, warmup=args.warmup, **measured, bottleneck=bound,
        )
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

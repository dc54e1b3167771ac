"""`tresnet validate`: top-1 / top-5 of a model on an ImageNet-style folder (one sub-folder per class)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm import tqdm

from tresnet.engine.distributed import resolve_device
from tresnet.errors import ConfigError, DataError

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


# --- helpers shared with `tresnet predict` --------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --checkpoint, --pretrained, --img-size, --device (resolve with :func:`resolve_device`)."""
    parser.add_argument("--model", required=True, help="model name, e.g. tresnet_m (see `tresnet info`)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", metavar="PATH",
                         help="weights file: the official release (.pth), timm's, or one saved by tresnet")
    weights.add_argument("--pretrained", action="store_true",
                         help="load the model's weights from the cache ($TRESNET_HOME, else ~/.cache/tresnet)")
    parser.add_argument("--img-size", type=int, metavar="N",
                        help="square input side (default: the model's, 224 or 448)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if available; default)")


def build_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """The model of ``--model`` with its weights, and its checkpoint's metadata (empty without one).

    The number of classes comes from the checkpoint. Without weights, a warning says the model is
    randomly initialised.
    """
    from tresnet import create_model
    from tresnet.checkpoint import read_checkpoint_metadata

    model = create_model(args.model, checkpoint_path=args.checkpoint, pretrained=args.pretrained)
    path = model.pretrained_cfg.get("checkpoint")
    if path is None:
        print(f"warning: no --checkpoint or --pretrained: {args.model} has random weights, its answers "
              f"mean nothing", file=sys.stderr)
        return model, {}
    return model, read_checkpoint_metadata(path)


def weights_description(model: torch.nn.Module) -> str:
    cfg = model.pretrained_cfg
    if cfg.get("checkpoint") is None:
        return "random weights"
    return f"weights {cfg['checkpoint']} ({cfg.get('checkpoint_format', '?')} format)"


# --- validate -------------------------------------------------------------------------------------


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate", help="top-1 / top-5 accuracy on an ImageNet-style folder",
        description="Measure top-1 and top-5 accuracy of a model on a folder with one sub-folder per "
                    "class (sorted names = class indices, as torchvision's ImageFolder), with the "
                    "model's own preprocessing. Unreadable files are skipped with a warning and counted.",
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="folder of class sub-folders, e.g. imagenet/val")
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                        help=f"decoding processes, 0 = in this process (default {DEFAULT_WORKERS})")
    parser.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="evaluate only N images, taken evenly over the folder so every class is seen")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable file instead of skipping it")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON (top1/top5 in percent)")
    parser.set_defaults(func=run)


def _check_classes(dataset, model: torch.nn.Module, metadata: dict, data: str) -> None:
    """The folder must have one class per model output, named as the checkpoint's classes if it names them."""
    folder_classes, model_classes = len(dataset.classes), model.num_classes
    if folder_classes != model_classes:
        raise DataError(
            f"{data} has {folder_classes} class folders but the model has {model_classes} classes: "
            f"use a folder with one sub-folder per model class (ImageNet val: 1000 synset folders), "
            f"or the checkpoint trained on these classes"
        )
    names = metadata.get("class_names")
    if names and list(names) != list(dataset.classes):
        first = next((i for i, (a, b) in enumerate(zip(names, dataset.classes, strict=False)) if a != b), 0)
        raise DataError(
            f"the class folders of {data} are not the checkpoint's classes: index {first} is "
            f"{dataset.classes[first]!r} in the folder, {names[first]!r} in the checkpoint; "
            f"name the folders as the classes the model was trained on"
        )


def _evenly_spaced(dataset, limit: int):
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if limit >= len(dataset):
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, num=limit).round().astype(int).tolist())


@contextmanager
def _warnings_above_progress_bar(command: str):
    """Print unreadable-file warnings as one line each, without breaking the progress bar."""
    from tresnet.data.datasets import UnreadableImageWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UnreadableImageWarning):
            tqdm.write(f"tresnet {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UnreadableImageWarning)  # the dataset already warns once per file
        warnings.showwarning = show
        yield


def run(args: argparse.Namespace) -> int:
    from tresnet.checkpoint import atomic_write
    from tresnet.data import ImageFolderDataset, create_eval_transform, create_loader
    from tresnet.data.transforms import describe_eval_transform
    from tresnet.engine.evaluate import evaluate

    device = resolve_device(args.device)
    dataset = ImageFolderDataset(args.data, strict=args.strict)  # a bad folder fails before the model loads
    model, metadata = build_model(args)
    cfg = model.pretrained_cfg
    img_size = args.img_size or int(cfg["input_size"][-1])
    model.check_input_size(img_size, img_size)
    _check_classes(dataset, model, metadata, args.data)
    dataset.transform = create_eval_transform(cfg, img_size)
    subset = _evenly_spaced(dataset, args.limit) if args.limit is not None else dataset
    loader = create_loader(subset, args.batch_size, args.workers, device)

    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    options = ", ".join(o for o, on in (("amp", args.amp), ("channels-last", args.channels_last)) if on)
    print(f"{args.model}: {model.num_classes} classes, {weights_description(model)}")
    print(f"preprocessing: {describe_eval_transform(cfg, img_size)}")
    print(f"data: {args.data}, {len(subset)} of {len(dataset)} images in {len(dataset.classes)} classes; "
          f"device {device}, batch {args.batch_size}, {args.workers} workers" + (f", {options}" if options else ""))
    sys.stdout.flush()
    with _warnings_above_progress_bar("validate"):
        result = evaluate(model, loader, device, amp=args.amp, channels_last=args.channels_last,
                          desc="validate")
    top1, top5 = 100.0 * result["top1"], 100.0 * result["top5"]
    print(f"top-1 {top1:.3f}%  top-5 {top5:.3f}%  ({result['images']} images, {dataset.skipped} skipped, "
          f"{result['seconds']:.1f} s, {result['img_per_s']:.1f} img/s)")
    published = cfg.get("top1")
    if published is not None and cfg.get("checkpoint") and model.num_classes == 1000:
        print(f"published top-1 of {args.model}: {published}%")

    if args.json:
        report = dict(
            model=args.model,
            checkpoint=cfg.get("checkpoint"),
            checkpoint_format=cfg.get("checkpoint_format"),
            data=str(args.data),
            num_classes=model.num_classes,
            img_size=img_size,
            preprocessing=describe_eval_transform(cfg, img_size),
            top1=top1,
            top5=top5,
            accuracy_unit="percent",
            loss=result["loss"],
            images=result["images"],
            skipped=dataset.skipped,
            skipped_files=sorted(dataset.skipped_files),
            seconds=result["seconds"],
            img_per_s=result["img_per_s"],
            device=str(device),
            batch_size=args.batch_size,
            workers=args.workers,
            amp=args.amp,
            channels_last=args.channels_last,
            limit=args.limit,
        )
        text = json.dumps(report, indent=2) + "\n"
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    return 0

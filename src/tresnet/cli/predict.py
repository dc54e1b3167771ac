"""`tresnet predict`: the top-k classes of each image, with probabilities."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from tresnet.cli.validate import add_model_arguments, build_model, weights_description
from tresnet.engine.distributed import resolve_device
from tresnet.errors import ConfigError, DataError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="top-k classes of images",
        description="Classify images: the top-k classes with probabilities. Folders are expanded to the "
                    "image files inside them (recursively, sorted). A file that cannot be read is reported "
                    "on stderr and the others are still answered; the exit code is then 1.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    add_model_arguments(parser)
    parser.add_argument("--topk", type=int, default=5, metavar="K", help="classes shown per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)")
    parser.add_argument("--json", metavar="PATH",
                        help='also write [{"file", "topk": [{"index", "label", "prob"}]}] as JSON')
    parser.set_defaults(func=run)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named or found (recursively, sorted, hidden entries left out) in folders, and
    ``(input, error)`` for inputs that are missing or folders without images."""
    from tresnet.data.images import is_image_file

    files, errors = [], []
    for name in inputs:
        path = Path(name).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p.name)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                errors.append((name, f"no image files in folder {name}"))
            files += found
        elif path.exists():
            files.append(path)  # named explicitly: try it whatever its extension
        else:
            errors.append((name, f"cannot read image {name}: no such file or folder"))
    return files, errors


def _report_error(message: str) -> None:
    print(f"tresnet predict: error: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from tresnet.checkpoint import atomic_write
    from tresnet.data import class_labels, create_eval_transform, load_image

    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = resolve_device(args.device)
    files, errors = expand_inputs(args.inputs)
    for _, message in errors:
        _report_error(message)
    model, metadata = build_model(args)
    cfg = model.pretrained_cfg
    img_size = args.img_size or int(cfg["input_size"][-1])
    model.check_input_size(img_size, img_size)
    transform = create_eval_transform(cfg, img_size)
    labels = class_labels(model.num_classes, metadata.get("class_names"))
    topk = min(args.topk, model.num_classes)
    model.to(device).eval()
    print(f"{args.model}: {model.num_classes} classes, {weights_description(model)}", file=sys.stderr)

    results = [{"file": name, "topk": [], "error": message} for name, message in errors]
    for start in range(0, len(files), args.batch_size):
        names, tensors = [], []
        for path in files[start:start + args.batch_size]:
            try:
                # Upright as a viewer shows it: photos from phones carry their rotation in EXIF.
                tensors.append(transform(load_image(path, exif_transpose=True)))
                names.append(str(path))
            except DataError as e:
                _report_error(str(e))
                results.append({"file": str(path), "topk": [], "error": str(e)})
        if not tensors:
            continue
        with torch.no_grad():
            probs = model(torch.stack(tensors).to(device)).float().softmax(dim=1)
        top_probs, top_indices = probs.topk(topk, dim=1)
        for name, p_row, i_row in zip(names, top_probs.tolist(), top_indices.tolist(), strict=True):
            answers = [{"index": i, "label": labels[i], "prob": p} for p, i in zip(p_row, i_row, strict=True)]
            results.append({"file": name, "topk": answers})
            print(name)
            for answer in answers:
                print(f"  {100.0 * answer['prob']:6.2f}%  {answer['label']} ({answer['index']})")
        sys.stdout.flush()

    failed = sum(1 for r in results if "error" in r)
    if args.json:
        text = json.dumps(results, indent=2) + "\n"
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    if failed:
        print(f"tresnet predict: {failed} of {len(results)} inputs failed", file=sys.stderr)
        return 1
    return 0

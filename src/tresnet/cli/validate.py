"""`tresnet validate`: top-1 / top-5 of a model on an ImageNet-style folder (one sub-folder per class)."""

from __future__ import annotations

import argparse
import sys

from tresnet.cli import _common as common


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate", help="top-1 / top-5 accuracy on an ImageNet-style folder",
        description="Measure top-1 and top-5 accuracy of a model on a folder with one sub-folder per "
                    "class (sorted names = class indices, as torchvision's ImageFolder), with the "
                    "model's own preprocessing. Unreadable files are skipped with a warning and counted.",
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="folder of class sub-folders, e.g. imagenet/val")
    common.add_inference_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)")
    parser.add_argument("--workers", type=int, default=common.DEFAULT_WORKERS, metavar="N",
                        help=f"decoding processes, 0 = in this process (default {common.DEFAULT_WORKERS})")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="evaluate only N images, taken evenly over the folder so every class is seen")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable file instead of skipping it")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON (top1/top5 in percent)")
    parser.set_defaults(func=run)


def _published(cfg: dict) -> str | None:
    """``80.8%``; with timm's own evaluation on record (GENet), both figures with their image sizes."""
    top1, timm_eval = cfg.get("top1"), cfg.get("timm_eval")
    if top1 is None:
        return None
    if not timm_eval:
        return f"{top1}%"
    return (f"{top1}% at {cfg['input_size'][-1]} px (the paper's evaluation), {timm_eval['top1']}% at "
            f"{timm_eval['img_size']} px (timm's)")


def run(args: argparse.Namespace) -> int:
    from tresnet.data import ImageFolderDataset
    from tresnet.engine.validate import prepare_validation
    from tresnet.runtime import resolve_device

    precision = common.resolve_precision(args, "validate")
    device = resolve_device(args.device)
    dataset = ImageFolderDataset(args.data, strict=args.strict)  # a bad folder fails before the model loads
    model = common.load_model(args, "validate")
    validation = prepare_validation(model, dataset, img_size=args.img_size, batch_size=args.batch_size,
                                    workers=args.workers, device=device, precision=precision,
                                    channels_last=args.channels_last, limit=args.limit)
    options = ", ".join(o for o, on in ((precision, precision != "fp32"), ("channels-last", args.channels_last)) if on)
    print(f"{model.pretrained_cfg['model']}: {model.num_classes} classes, {common.weights_description(model)}")
    print(f"preprocessing: {validation.preprocessing}")
    print(f"data: {args.data}, {len(validation.subset)} of {len(dataset)} images in {len(dataset.classes)} classes; "
          f"device {device}, batch {args.batch_size}, {args.workers} workers" + (f", {options}" if options else ""))
    sys.stdout.flush()
    with common.warnings_above_progress_bar("validate"):
        report = validation.run()
    print(f"top-1 {report['top1']:.3f}%  top-5 {report['top5']:.3f}%  ({report['images']} images, "
          f"{report['skipped']} skipped, {report['seconds']:.1f} s, {report['img_per_s']:.1f} img/s)")
    published = _published(model.pretrained_cfg)
    if published is not None and model.checkpoint_info is not None and model.num_classes == 1000:
        print(f"published top-1 of {model.pretrained_cfg['model']}: {published}")
    if args.json:
        common.write_json(args.json, report)
    return 0

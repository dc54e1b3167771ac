"""`tresnet export`: write a model as ONNX or TorchScript, checked against PyTorch before it appears."""

from __future__ import annotations

import argparse

from tresnet.cli._common import add_model_arguments, add_precision_argument, say
from tresnet.deploy.export import DEFAULT_OPSET, FORMATS, MIN_OPSET

EXPORT_PRECISIONS = ("fp32", "fp16")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX or TorchScript, checked against PyTorch",
        description="Fold BatchNorm into the convs, export, load the file back (ONNX Runtime for ONNX), "
                    "compare it with the PyTorch model on random images and print the largest difference. "
                    "The output appears only if the difference is within tolerance (1e-4 of the largest "
                    "output; 1e-2 with --precision fp16).")
    add_model_arguments(p, pretrained=False)
    p.add_argument("--format", required=True, metavar="FORMAT", help=f"one of: {', '.join(FORMATS)}")
    p.add_argument("--output", required=True, help="file to write, e.g. tresnet_m.onnx or tresnet_m.pt")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch size free (checked at 1 and 3)")
    add_precision_argument(p, choices=EXPORT_PRECISIONS, legacy_amp=False)
    p.add_argument("--fp16", action="store_true", help=argparse.SUPPRESS)  # deprecated: --precision fp16
    p.add_argument("--no-fuse", action="store_true", help="export the model as it is, BatchNorm not folded")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET}; from {MIN_OPSET} to the newest torch writes)")
    p.set_defaults(func=run)


def _half(args: argparse.Namespace) -> bool:
    """Whether to export in fp16: ``--precision fp16``, or the deprecated ``--fp16``."""
    from tresnet.errors import ConfigError

    if args.fp16:
        say("export", "warning", "--fp16 is deprecated: use --precision fp16")
    precision = args.precision or ("fp16" if args.fp16 else "fp32")
    if precision not in EXPORT_PRECISIONS or (args.fp16 and precision != "fp16"):
        raise ConfigError(f"bad --precision {precision!r} for export: choose fp32 or fp16 (the weights and the "
                          f"computation of the exported file)")
    return precision == "fp16"


def run(args: argparse.Namespace) -> int:
    from tresnet.cli._common import load_model
    from tresnet.deploy.export import check_export_args, export_model

    fp16 = _half(args)
    check_export_args(args.format, args.output, args.opset)  # fail before building the model
    model = load_model(args, "export")
    report = export_model(model, args.output, format=args.format, img_size=args.img_size,
                          dynamic_batch=args.dynamic_batch, fp16=fp16, fused=not args.no_fuse,
                          opset=args.opset)
    print(report.summary())
    return 0

"""`tresnet export`: write a model as ONNX or TorchScript, checked against PyTorch before it appears."""

from __future__ import annotations

import argparse

from tresnet.deploy.export import DEFAULT_OPSET, FORMATS, MIN_OPSET


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX or TorchScript, checked against PyTorch",
        description="Fold BatchNorm into the convs, export, load the file back (ONNX Runtime for ONNX), "
                    "compare it with the PyTorch model on random images and print the largest difference. "
                    "The output appears only if the difference is within tolerance (1e-4 of the largest "
                    "output; 1e-2 with --fp16).")
    p.add_argument("--model", required=True, help="model name (see `tresnet info`)")
    p.add_argument("--checkpoint", help="weights file (official, timm or tresnet format); default: fresh weights")
    p.add_argument("--format", required=True, metavar="FORMAT", help=f"one of: {', '.join(FORMATS)}")
    p.add_argument("--output", required=True, help="file to write, e.g. tresnet_m.onnx or tresnet_m.pt")
    p.add_argument("--img-size", type=int, default=None,
                   help="input side in pixels (default: the model's, e.g. 224); a multiple of 4, at least 20")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch size free (checked at 1 and 3)")
    p.add_argument("--fp16", action="store_true", help="export in half precision")
    p.add_argument("--no-fuse", action="store_true", help="export the model as it is, BatchNorm not folded")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET}; from {MIN_OPSET} to the newest torch writes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tresnet
    from tresnet.deploy.export import check_export_args, export_model

    check_export_args(args.format, args.output, args.opset)  # fail before building the model
    model = tresnet.create_model(args.model, checkpoint_path=args.checkpoint)
    report = export_model(model, args.output, format=args.format, img_size=args.img_size,
                          dynamic_batch=args.dynamic_batch, fp16=args.fp16, fused=not args.no_fuse,
                          opset=args.opset)
    print(report.summary())
    return 0

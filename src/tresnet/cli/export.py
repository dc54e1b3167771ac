"""`tresnet export`: write a model as ONNX or TorchScript (fp32, fp16, bf16, int8), checked against the exact
(float64) result before it appears."""

from __future__ import annotations

import argparse

from tresnet.cli._common import add_calibration_arguments, add_model_arguments, add_precision_argument
from tresnet.deploy.exactness import BOUNDS
from tresnet.deploy.export import DEFAULT_OPSET, EXPORT_PRECISIONS, FORMATS, MIN_OPSET


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX or TorchScript, checked against the exact result",
        description="Fold BatchNorm into the convs, export, load the file back (ONNX Runtime for ONNX) and run "
                    "it on check images beside the PyTorch model in fp32 and in float64. The output appears only "
                    "if the file's largest difference from the float64 result is within the bound of its "
                    f"precision: {BOUNDS['fp32'].multiple:g} times PyTorch fp32's own error, and at least "
                    f"{BOUNDS['fp32'].floor:g} of the largest output (fp16 {BOUNDS['fp16'].floor:g}, bf16 "
                    f"{BOUNDS['bf16'].floor:g}, int8 {BOUNDS['int8'].floor:g}). --precision bf16 writes TorchScript (ONNX Runtime has no "
                    "bfloat16 convolution); --precision int8 writes ONNX quantized by ONNX Runtime (the onnx "
                    "int8 backend; pt2e has no file form), calibrated on --calibration images.")
    add_model_arguments(p, pretrained=False)
    p.add_argument("--format", required=True, metavar="FORMAT", help=f"one of: {', '.join(FORMATS)}")
    p.add_argument("--output", required=True, help="file to write, e.g. tresnet_m.onnx or tresnet_m.pt")
    p.add_argument("--dynamic-batch", action="store_true", help="leave the batch size free (checked at 1 and 3)")
    add_precision_argument(p, choices=EXPORT_PRECISIONS)
    add_calibration_arguments(p)
    p.add_argument("--no-fuse", action="store_true", help="export the model as it is, BatchNorm not folded")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET}; from {MIN_OPSET} to the newest torch writes)")
    p.set_defaults(func=run)


def _precision(args: argparse.Namespace) -> str:
    """``--precision`` (fp32 by default), with the calibration options checked against it."""
    from tresnet.deploy.inference import check_calibration_options
    from tresnet.errors import ConfigError

    precision = args.precision or "fp32"
    if precision not in EXPORT_PRECISIONS:
        raise ConfigError(f"bad --precision {precision!r} for export: choose one of {', '.join(EXPORT_PRECISIONS)} "
                          f"(the number format of the exported file)")
    check_calibration_options(precision, args.calibration, args.calibration_images)
    _check_int8_backend(precision, args.int8_backend)
    return precision


def _check_int8_backend(precision: str, backend: str | None) -> None:
    """An int8 file is ONNX quantized by ONNX Runtime: ``--int8-backend`` may be left out, auto or onnx."""
    from tresnet.deploy.inference import check_int8_backend
    from tresnet.errors import ConfigError

    if precision == "int8" and backend == "pt2e":
        raise ConfigError("--int8-backend pt2e has no file form: export writes int8 as ONNX quantized by ONNX "
                          "Runtime (--int8-backend onnx, the default here); from Python, tresnet.deploy.quantize "
                          "gives the PT2E model")
    check_int8_backend(precision, "onnx" if backend == "auto" else backend)


def run(args: argparse.Namespace) -> int:
    from tresnet.cli._common import load_model
    from tresnet.deploy.export import check_export_args, export_model
    from tresnet.deploy.int8 import Calibration

    precision = _precision(args)
    check_export_args(args.format, args.output, args.opset, precision)  # fail before building the model
    model = load_model(args, "export")
    report = export_model(model, args.output, format=args.format, img_size=args.img_size,
                          dynamic_batch=args.dynamic_batch, precision=precision, fused=not args.no_fuse,
                          opset=args.opset,
                          calibration=Calibration(args.calibration, args.calibration_images)
                          if args.calibration is not None else None)
    print(report.summary())
    if report.preprocessing is not None:
        where = ("its metadata_props 'tresnet_preprocessing'" if report.format == "onnx" else
                 "its extra file 'tresnet_preprocessing.json'")
        print(f"preprocessing: {report.preprocessing['description']}; the file records it in {where}")
    return 0
